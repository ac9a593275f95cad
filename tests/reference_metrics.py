"""What holds across machines: every metric of a run within a stated tolerance of the reference.

On one machine two clean runs give the same bytes (``tests/test_pipeline.py`` checks it with
``dvc repro --force``). Another CPU computes float32 convolutions and matrix products in another
order (other SIMD kernels), so from the codec fit on the artifacts differ in their last bits and
the metrics move a little; README, Reproducibility, states by how much, and :data:`TOLERANCES`
is that statement. ``tests/reference/small_metrics.json`` holds the metrics of the small pipeline
run (``pipeline_repo.SMALL``); ``python3 scripts/update_reference_metrics.py`` rewrites it.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path

REFERENCE = Path(__file__).resolve().parent / "reference" / "small_metrics.json"
UPDATE = "python3 scripts/update_reference_metrics.py"

TOLERANCES = [  # (key pattern, absolute, relative): the first that matches applies
    (r"^(clips|filtered|fd_clips|fd_windows|frames|steps|tokens_seen|parameters)", 0.0, 0.0),
    (r"_distinct$|^distinct_mean$", 0.0, 0.05),  # codebook entries in use
    (r"entropy_bits", 0.05, 0.0),  # bits
    (r"^(fd|fad|kad)_", 0.0, 0.25),  # distances of sampled audio: one token changes the rest
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


def load_reference() -> dict[str, dict]:
    return json.loads(REFERENCE.read_text())
