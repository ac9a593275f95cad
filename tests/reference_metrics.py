"""What holds across machines: every metric of a run within a stated tolerance of the reference.

The tolerance (README, Reproducibility: each metric's bound is 4 standard deviations of its spread
over training seeds, ``benchmarks/seed_spread.json``, at least 0.1 %) and the comparison live in
:mod:`musicgen.reproducibility`, which ``scripts/gpu_check.py`` shares; the tests import them
from here. ``tests/reference/small_metrics.json`` holds the metrics of the small pipeline run
(``pipeline_repo.SMALL``); ``python3 scripts/update_reference_metrics.py`` rewrites it.
"""

from __future__ import annotations

from musicgen.reproducibility import (  # noqa: F401 - the tests' names for them
    DEFAULT,
    FLOOR,
    SEED_SPREAD,
    SIGMAS,
    SMALL_REFERENCE,
    TOLERANCES,
    UPDATE,
    Bound,
    bound,
    committed_metrics,
    compare_metrics,
    flatten,
    load_reference,
    load_seed_spread,
    out_of_tolerance,
    tolerance,
)

REFERENCE = SMALL_REFERENCE
