"""The DVC pipeline end to end on a scaled-down embedded default, in a temporary git repository.

Guards the project's contracts: every stage runs offline; changing a training knob reruns only
train, generate and evaluate; ``dvc repro --force`` gives byte-identical data artifacts and equal
training metrics.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
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


def digest(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if p.is_file():
            h.update(p.relative_to(path).as_posix().encode() if path.is_dir() else b"")
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A git + DVC copy of the project with the small params, after one full `dvc repro`."""
    dst = tmp_path_factory.mktemp("pipeline")
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in files:
        if (
            (ROOT / name).is_file()
            and not name.startswith(("metrics/", "plots/"))
            and name != "dvc.lock"
        ):
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dst / name)
    yaml = YAML()
    params = yaml.load(dst / "params.yaml")
    for keys, value in SMALL.items():
        node = params
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    yaml.dump(params, dst / "params.yaml")
    run(["git", "init", "-q"], dst)
    first = run(["dvc", "repro"], dst)
    assert ran_stages(first) == DATA_STAGES | {"train", "generate", "evaluate"}
    run(["git", "add", "-A"], dst)
    run(["git", "commit", "-qm", "baseline"], dst)
    return dst


def test_every_stage_writes_its_outputs(repo):
    train = json.loads((repo / "metrics/train.json").read_text())
    evaluation = json.loads((repo / "metrics/eval.json").read_text())
    codec = json.loads((repo / "metrics/codec.json").read_text())
    assert {"val_ce", "val_ce_init", "train_token_entropy"} <= set(train)
    assert evaluation["fd_mel"] > 0 and evaluation["fd_clips"] == 6
    assert {"valid_ce_cb0", "valid_ppl_cb3", "test_ce"} <= set(evaluation)
    assert codec["distinct_mean"] > 1  # the k-means fit made more than one code
    assert len(list((repo / "data/generated/audio").glob("*.wav"))) == 6
    assert "val_ce" in (repo / "plots/train/val_ce.csv").read_text()


def test_a_training_knob_reruns_only_train_generate_evaluate(repo):
    out = run(["dvc", "exp", "run", "-S", "train.lr=5.0e-3"], repo)
    assert ran_stages(out) == {"train", "generate", "evaluate"}
    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], repo))
    assert "val_ce" in diff.get("metrics/train.json", {})
    status = run(["dvc", "status"], repo)
    assert "up to date" in status


def test_repro_force_is_byte_identical(repo):
    run(["git", "checkout", "-q", "--", "params.yaml"], repo)
    run(["dvc", "repro"], repo)
    artifacts = [
        "data/raw",
        "data/audio",
        "data/split",
        "data/tokens",
        "data/text",
        "data/models/codec",
        "data/models/text",
    ]
    before = {a: digest(repo / a) for a in artifacts}
    train_before = json.loads((repo / "metrics/train.json").read_text())
    run(["dvc", "repro", "--force"], repo)
    after = {a: digest(repo / a) for a in artifacts}
    assert before == after
    assert json.loads((repo / "metrics/train.json").read_text()) == train_before
