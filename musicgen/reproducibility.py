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
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from musicgen.machine import cpu_model  # noqa: F401 - scripts and benchmarks import it here

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

SEED_SPREAD = PROJECT_ROOT / "benchmarks" / "seed_spread.json"  # benchmarks/seed_spread.py
SIGMAS = 4.0  # a metric's bound: this many standard deviations of its seed spread
FLOOR = 1e-3  # relative: the least bound of a float metric, however little it varied

TOLERANCES = [  # metrics the seed spread does not hold: (key pattern, absolute, relative), the first
    # that matches applies. Reasoned, not measured (README, Reproducibility).
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


@dataclass(frozen=True)
class Bound:
    """How far a metric may move from the reference: ``math.isclose``'s abs_tol and rel_tol,
    and where that comes from."""

    absolute: float
    relative: float
    std: float | None  # the metric's standard deviation over training seeds; None: not measured
    source: str  # "4 sigma", "floor", "exact", or "not measured"

    def holds(self, value: float, reference: float) -> bool:
        return math.isclose(value, reference, abs_tol=self.absolute, rel_tol=self.relative)

    def describe(self) -> str:
        """``±0.0421 (4 sigma, sigma 0.0105)``, ``exact``, ``±3 % (not measured)``, ..."""
        if self.absolute == self.relative == 0:
            return "exact"
        parts = [f"±{self.absolute:.3g}"] if self.absolute else []
        parts += [f"±{self.relative:.3g} rel"] if self.relative else []
        sigma = f", sigma {self.std:.3g}" if self.std is not None else ""
        return f"{' or '.join(parts)} ({self.source}{sigma})"


def load_seed_spread(path: Path = SEED_SPREAD) -> dict[str, dict[str, dict]]:
    """benchmarks/seed_spread.json's metrics (file -> flattened key -> mean, std, values); {}
    when there is no such file."""
    path = Path(path)
    return json.loads(path.read_text())["metrics"] if path.is_file() else {}


def bound(
    key: str, value: float = 0.0, file: str | None = None, spread: dict | None = None
) -> Bound:
    """The tolerance of a metric (``key`` flattened, e.g. ``val_ce``; ``file`` its metrics file,
    e.g. ``train.json``; ``value`` the reference's value).

    A metric in the seed spread (``spread``, default :func:`load_seed_spread`; any file when
    ``file`` is None): an integer that no seed changed is exact; otherwise ``SIGMAS`` standard
    deviations of its values over training seeds, at least ``FLOOR`` of ``value``. Another
    metric: :data:`TOLERANCES` by its name (of a nested one, the last part), else exact for an
    integer (a count) and :data:`DEFAULT` for a float.
    """
    spread = load_seed_spread() if spread is None else spread
    files = [file] if file is not None else sorted(spread)
    measured = next((spread[f][key] for f in files if key in spread.get(f, {})), None)
    if measured is not None:
        std = float(measured["std"])
        if std == 0 and all(isinstance(v, int) for v in measured["values"]):
            return Bound(0.0, 0.0, 0.0, "exact")
        if SIGMAS * std >= FLOOR * abs(value):
            return Bound(SIGMAS * std, 0.0, std, f"{SIGMAS:g} sigma")
        return Bound(0.0, FLOOR, std, "floor")
    for pattern, absolute, relative in TOLERANCES:
        if re.search(pattern, key.rsplit("/", 1)[-1]):
            return Bound(absolute, relative, None, "not measured")
    if isinstance(value, int):
        return Bound(0.0, 0.0, None, "exact")
    return Bound(*DEFAULT, None, "not measured")


def tolerance(key: str, value: float = 0.0, file: str | None = None) -> tuple[float, float]:
    """(absolute, relative) tolerance of a metric: :func:`bound`'s."""
    b = bound(key, value, file)
    return b.absolute, b.relative


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


def out_of_tolerance(
    measured: dict[str, dict], reference: dict[str, dict], spread: dict | None = None
) -> list[str]:
    """What differs beyond :func:`bound`, one line each ([] when everything holds)."""
    return [c.line() for c in compare_metrics(measured, reference, spread) if not c.ok]


@dataclass(frozen=True)
class Comparison:
    """One metric of a run against the reference."""

    file: str
    key: str
    value: object
    reference: object
    bound: Bound | None  # None for a missing or non-numeric metric
    ok: bool
    missing: str | None = None  # "this run" or "the reference" when one side lacks it

    def line(self) -> str:
        """``train.json val_ce: 7.1006 vs reference 7.1384 (-0.0378; allowed ±0.04 (4 sigma,
        sigma 0.01))``, or what is missing."""
        where = f"{self.file} {self.key}"
        if self.missing:
            return f"{where}: not in {self.missing} (after a deliberate change: {UPDATE})"
        if self.bound is None:
            return f"{where}: {self.value!r} != {self.reference!r}"
        moved = self.value - self.reference
        return (
            f"{where}: {self.value:.6g} vs reference {self.reference:.6g} ({moved:+.3g}; "
            f"allowed: {self.bound.describe()})"
        )


def compare_metrics(
    measured: dict[str, dict], reference: dict[str, dict], spread: dict | None = None
) -> list[Comparison]:
    """Every metric of either side, file by file and key by key (sorted), against the other."""
    spread = load_seed_spread() if spread is None else spread
    out = []
    for file in sorted(set(measured) | set(reference)):
        got, want = flatten(measured.get(file, {})), flatten(reference.get(file, {}))
        for key in sorted(set(got) | set(want)):
            a, b = got.get(key), want.get(key)
            if key not in got or key not in want:
                side = "this run" if key not in got else "the reference"
                out.append(Comparison(file, key, a, b, None, False, side))
                continue
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b)):
                out.append(Comparison(file, key, a, b, None, a == b))
                continue
            limit = bound(key, b, file, spread)
            out.append(Comparison(file, key, a, b, limit, limit.holds(a, b)))
    return out


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
