"""What holds across machines, and the tools that check it on a copy of the project.

On one machine two clean runs give the same bytes (``tests/test_pipeline.py`` checks it with
``dvc repro --force``). Another CPU computes float32 convolutions and matrix products in another
order (other SIMD kernels), so from the codec fit on the artifacts differ in their last bits and
the metrics move a little; README, Reproducibility, states by how much, and :data:`TOLERANCES`
is that statement. ``tests/reference/small_metrics.json`` (:data:`SMALL_REFERENCE`) holds the
metrics of the small pipeline run (:data:`SMALL`); ``python3 scripts/update_reference_metrics.py``
rewrites it.

The tests and ``scripts/gpu_check.py`` share these: the tolerance (:func:`out_of_tolerance`), a
temporary git + DVC copy of the project with some params changed (:func:`copy_project`), and a
training command killed once it has written a checkpoint (:func:`kill_after_checkpoint`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SMALL_REFERENCE = PROJECT_ROOT / "tests" / "reference" / "small_metrics.json"
UPDATE = "python3 scripts/update_reference_metrics.py"

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

TOLERANCES = [  # (key pattern, absolute, relative): the first that matches applies
    (r"^(clips|filtered|fd_clips|fd_windows|frames|steps|tokens_seen|parameters)", 0.0, 0.0),
    (r"_distinct$|^distinct_mean$", 0.0, 0.05),  # codebook entries in use
    (r"entropy_bits", 0.05, 0.0),  # bits
    (r"^(fd|fad|kad|kl)_", 0.0, 0.25),  # distances of sampled audio: one token changes the rest
    (r"^clap_score$", 0.05, 0.0),  # cosine similarity of sampled audio and its caption
    (r"ppl", 0.0, 0.03),  # exp(CE): 0.02 nats are 2 %
    (r"train_loss", 0.05, 0.0),  # the loss of one batch
    (r"ce|entropy", 0.02, 0.0),  # nats
]
DEFAULT = (0.0, 0.02)  # any other float


def tolerance(key: str, value: float = 0.0) -> tuple[float, float]:
    """(absolute, relative) tolerance of a metric, by its name (of a nested one, the last part);
    one that no pattern names is exact if it is an integer (a count), else :data:`DEFAULT`."""
    for pattern, absolute, relative in TOLERANCES:
        if re.search(pattern, key.rsplit("/", 1)[-1]):
            return absolute, relative
    return (0.0, 0.0) if isinstance(value, int) else DEFAULT


def committed_metrics(repo: Path) -> dict[str, dict]:
    """Every ``metrics/*.json`` of ``repo``'s HEAD commit: file name -> metrics."""
    names = subprocess.run(
        ["git", "ls-tree", "--name-only", "HEAD", "metrics/"],
        cwd=repo, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return {
        Path(name).name: json.loads(
            subprocess.run(
                ["git", "show", f"HEAD:{name}"],
                cwd=repo,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        for name in names
        if name.endswith(".json")
    }


def workspace_metrics(repo: Path) -> dict[str, dict]:
    """Every ``metrics/*.json`` in ``repo``'s working tree: file name -> metrics."""
    return {p.name: json.loads(p.read_text()) for p in sorted(repo.glob("metrics/*.json"))}


def flatten(metrics: dict, prefix: str = "") -> dict:
    """Nested metrics as one level: ``{"a": {"b": 1}}`` -> ``{"a/b": 1}``."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def out_of_tolerance(measured: dict[str, dict], reference: dict[str, dict]) -> list[str]:
    """What differs beyond :func:`tolerance`, one line each ([] when everything holds)."""
    problems = []
    for file in sorted(set(measured) | set(reference)):
        got, want = flatten(measured.get(file, {})), flatten(reference.get(file, {}))
        for key in sorted(set(got) | set(want)):
            where = f"{file} {key}"
            if key not in want or key not in got:
                side = "the reference" if key not in want else "this run"
                problems.append(f"{where}: not in {side} (after a deliberate change: {UPDATE})")
                continue
            a, b = got[key], want[key]
            if isinstance(a, bool | str) or isinstance(b, bool | str) or a is None or b is None:
                if a != b:
                    problems.append(f"{where}: {a!r} != {b!r}")
                continue
            absolute, relative = tolerance(key, b)
            if not math.isclose(a, b, abs_tol=absolute, rel_tol=relative):
                problems.append(
                    f"{where}: {a:.6g} vs reference {b:.6g} (allowed: abs {absolute:g}, rel {relative:g})"
                )
    return problems


def load_reference(path: Path = SMALL_REFERENCE) -> dict[str, dict]:
    """The committed metrics of the small run (file name -> metrics)."""
    return json.loads(Path(path).read_text())


def copy_project(
    dst: Path,
    params: dict[tuple[str, ...], object],
    keep_lock: bool = False,
    root: Path = PROJECT_ROOT,
) -> Path:
    """A git repository at ``dst`` with the project's files (as in the working tree) and ``params``.

    Args:
        dst: An empty directory.
        params: Key path -> value, set in the copy's params.yaml.
        keep_lock: Copy dvc.lock too (else the copy starts without one, and without metrics).
        root: The project to copy (its tracked and untracked, not ignored, files).

    Returns:
        ``dst``.
    """
    from ruamel.yaml import YAML

    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    skipped = () if keep_lock else ("metrics/", "plots/", "dvc.lock")
    for name in files:
        if (root / name).is_file() and not name.startswith(skipped):
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, dst / name)
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


def kill_after_checkpoint(
    args: list[str],
    checkpoint_dir: Path,
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout_s: float = 600.0,
    poll_s: float = 0.02,
) -> int:
    """Runs a training command and SIGKILLs it, with every process it started (torchrun and its
    ranks), once ``checkpoint_dir/meta.json`` records a step of an unfinished run.

    The command runs in a session of its own, so the kill reaches the whole process group, as a
    lost node or an out-of-memory kill would.

    Args:
        args: The command (e.g. the train stage's), writing its checkpoints to ``checkpoint_dir``.
        checkpoint_dir: Its checkpoint folder (``musicgen.train``'s ``meta.json`` inside).
        cwd: Where it runs.
        env: Its environment (default: this process's).
        timeout_s: How long the first checkpoint may take.
        poll_s: Seconds between two looks at ``meta.json``.

    Returns:
        The step of the checkpoint it was killed after.

    Raises:
        RuntimeError: if the command exits, finishes or times out before a checkpoint is seen.
    """
    meta = Path(checkpoint_dir) / "meta.json"
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(
            args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                state = _read_meta(meta)
                if state.get("complete"):
                    raise RuntimeError("the run finished before a kill could land")
                if state.get("step", 0) > 0:
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    tail = log.read()[-3000:]
                    raise RuntimeError(f"no checkpoint written (exit {proc.returncode}):\n{tail}")
                time.sleep(poll_s)
        finally:
            with contextlib.suppress(ProcessLookupError):  # the group is gone already
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    state = _read_meta(meta)
    if state.get("complete"):
        raise RuntimeError("the run finished before the kill landed")
    return int(state["step"])


def _read_meta(path: Path) -> dict:
    """A checkpoint's ``meta.json`` ({} while there is none; it is written atomically)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; elsewhere what :mod:`platform` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"
