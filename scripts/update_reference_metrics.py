"""Rewrites tests/reference/small_metrics.json: the metrics of the small pipeline run.

Runs ``dvc repro`` on a temporary copy of the working tree with the small params of
``tests/pipeline_repo.py`` (a few minutes on 2 cores) and writes every ``metrics/*.json`` it made
(the DVC metrics: the headline numbers; evaluate's diagnostics in ``reports/eval/details.json`` are
not compared) into the reference, which ``tests/test_pipeline.py`` compares each run with, within the tolerance
of README, Reproducibility (``tests/reference_metrics.py``). Run it after a change that moves the
metrics on purpose, and commit the result:

    python3 scripts/update_reference_metrics.py
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from pipeline_repo import SMALL, copy_project, run  # noqa: E402
from reference_metrics import REFERENCE, load_reference, out_of_tolerance  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REFERENCE)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="reference-") as tmp:
        repo = copy_project(Path(tmp), SMALL)
        run(["dvc", "repro"], repo)
        metrics = {p.name: json.loads(p.read_text()) for p in sorted(repo.glob("metrics/*.json"))}
    if args.out.is_file():
        moved = out_of_tolerance(metrics, load_reference())
        print("\n".join(["beyond the tolerance of the old reference:", *moved] if moved else []))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out.relative_to(ROOT)}: {sum(map(len, metrics.values()))} metrics")


if __name__ == "__main__":
    main()
