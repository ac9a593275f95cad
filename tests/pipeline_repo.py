"""A temporary git + DVC copy of the project, for tests that run the pipeline through DVC."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from musicgen.reproducibility import SMALL, copy_project  # noqa: F401 - shared with scripts/

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


def restore_baseline(repo) -> None:
    """Puts a shared pipeline copy's workspace back to its last commit: params, dvc.lock and the
    outputs they name (from the DVC cache); a finished run's checkpoint is dropped."""
    import shutil

    run(["git", "checkout", "-q", "--", "."], repo)
    run(["dvc", "checkout", "-q", "--force"], repo)
    shutil.rmtree(Path(repo) / "data/checkpoint", ignore_errors=True)
