"""A temporary git + DVC copy of the project, for tests that run the pipeline through DVC."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]
DATA_STAGES = {
    "download",
    "resample",
    "split",
    "codec_model",
    "text_model",
    "tokenize",
    "encode_text",
    "eval_models",
    "reference_stats",
}

SMALL = {  # a few clips, short, few steps: the same code paths in a minute or two
    ("data", "synthetic", "n_clips"): 36,
    ("data", "synthetic", "duration_s"): 2,
    ("resample", "duration_s"): 2,
    ("codec", "fit", "max_frames"): 3000,
    ("codec", "fit", "n_iter"): 4,
    ("text", "tiny", "vocab_size"): 200,
    ("train", "steps"): 12,
    ("train", "warmup_steps"): 2,
    ("train", "eval_every"): 6,
    ("train", "checkpoint_every"): 6,
    ("generate", "max_items"): 6,
}


def run(args, cwd, **kw):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, **kw)
    assert out.returncode == 0, f"{args} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout + out.stderr


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def copy_project(dst: Path, params: dict[tuple[str, ...], object], keep_lock: bool = False) -> Path:
    """A git repository at ``dst`` with the project's files (as in the working tree) and ``params``.

    Args:
        dst: An empty directory.
        params: Key path -> value, set in the copy's params.yaml.
        keep_lock: Copy dvc.lock too (else the copy starts without one, and without metrics).
    """
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    skipped = () if keep_lock else ("metrics/", "plots/", "dvc.lock")
    for name in files:
        if (ROOT / name).is_file() and not name.startswith(skipped):
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dst / name)
    yaml = YAML()
    tree = yaml.load(dst / "params.yaml")
    for keys, value in params.items():
        node = tree
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    yaml.dump(tree, dst / "params.yaml")
    subprocess.run(["git", "init", "-q"], cwd=dst, check=True)
    return dst
