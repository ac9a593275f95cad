"""``musicgen compare A B --out DIR``: an A/B listening page of two runs or DVC experiments.

A and B are each a run directory (a checkout of this pipeline with its outputs in place) or a
revision of the DVC repository ``--repo`` (default: the current folder): an experiment's name as
``dvc exp show`` lists it, a branch, tag or commit, or ``workspace``. See
:mod:`musicgen.report.compare` for the page and :mod:`musicgen.report.runs` for how runs are read.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from musicgen.cli import HelpFormatter, UsageError

PAGE_ENTRIES = {"index.html", "audio", "images"}  # what an earlier comparison's folder holds


def check_out_dir(out: Path) -> None:
    """``out`` may be new, empty or an earlier comparison (it is replaced as a whole).

    Raises:
        UsageError: ``out`` is a file, or a folder holding anything else.
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise UsageError(f"--out {out} is a file: give a folder for the page")
    others = sorted(p.name for p in out.iterdir() if p.name not in PAGE_ENTRIES)
    if others:
        raise UsageError(
            f"--out {out} holds other files ({', '.join(others[:3])}); the page replaces the "
            "folder as a whole: give a new or empty folder, or an earlier comparison's"
        )


def compare_command(args: argparse.Namespace) -> None:
    from musicgen.report.compare import write_compare
    from musicgen.report.runs import RunError, load_run

    if args.items < 0:
        raise UsageError(f"--items must be >= 0, got {args.items}")
    check_out_dir(args.out)
    try:
        a, b = (load_run(spec, args.repo) for spec in (args.a, args.b))
        index = write_compare(args.out, a, b, args.items)
    except RunError as err:
        raise UsageError(str(err)) from err
    print(f"{index}: A {a.files.source}, B {b.files.source}")


def add_compare(commands) -> None:
    p = commands.add_parser(
        "compare",
        help="an A/B listening page of two runs or DVC experiments",
        description="Writes a self-contained HTML page (open it from the file system): per test "
        "caption the reference and both runs' clips with spectrograms, both runs' per-clip scores "
        "and their difference (sortable), their metrics and the params that differ. Each run is a "
        "run directory or an experiment (any revision) of the DVC repository --repo.",
        formatter_class=HelpFormatter,
    )
    for name in ("a", "b"):
        p.add_argument(
            name,
            metavar=name.upper(),
            help=f"run {name.upper()}: a run directory, or an experiment's name (`dvc exp show`), "
            "a git revision or 'workspace' of --repo",
        )
    p.add_argument("--out", type=Path, required=True, help="the page's folder (replaced)")
    p.add_argument(
        "--repo", type=Path, default=Path("."), help="the DVC repository of the experiments"
    )
    p.add_argument(
        "--items",
        type=int,
        default=0,
        metavar="N",
        help="at most N test captions, in A's order (0: every caption both runs generated)",
    )
    p.set_defaults(run=compare_command)
