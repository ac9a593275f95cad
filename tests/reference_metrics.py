"""What holds across machines: every metric of a run within a stated tolerance of the reference.

The tolerance (README, Reproducibility) and the comparison live in
:mod:`musicgen.reproducibility`, which ``scripts/gpu_check.py`` shares; the tests import them
from here. ``tests/reference/small_metrics.json`` holds the metrics of the small pipeline run
(``pipeline_repo.SMALL``); ``python3 scripts/update_reference_metrics.py`` rewrites it.
"""

from __future__ import annotations

from musicgen.reproducibility import (  # noqa: F401 - the tests' names for them
    DEFAULT,
    SMALL_REFERENCE,
    TOLERANCES,
    UPDATE,
    committed_metrics,
    flatten,
    load_reference,
    out_of_tolerance,
    tolerance,
)

REFERENCE = SMALL_REFERENCE
