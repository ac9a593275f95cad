"""``musicgen check-repro [RUN]``: a run's metrics against the committed reference, within the
cross-machine tolerance (README, Reproducibility).

RUN is a run directory (a checkout of this pipeline after ``dvc repro``: its ``metrics/*.json``;
default ``.``). The reference is, by default, the metrics committed at the project's HEAD (the
embedded default's, made on the machine ``reports/machine.json`` names); ``--reference`` takes
another run directory or a JSON file of metrics files (``tests/reference/small_metrics.json``).
Each metric's bound is :func:`musicgen.reproducibility.bound`: 4 standard deviations of its
spread over training seeds (``benchmarks/seed_spread.json``), at least 0.1 %. Exit status 1 when
a metric is out of its bound or missing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from musicgen.cli import HelpFormatter, UsageError

COLUMNS = ("metric", "run", "reference", "moved", "allowed")


def load_metrics(source: Path) -> dict[str, dict]:
    """The metrics of a run directory (``metrics/*.json``) or of a JSON file (file name ->
    metrics).

    Raises:
        UsageError: when there are none.
    """
    from musicgen.reproducibility import workspace_metrics

    if source.is_file():
        return json.loads(source.read_text())
    metrics = workspace_metrics(source) if source.is_dir() else {}
    if not metrics:
        raise UsageError(f"{source} holds no metrics/*.json: give a run directory after dvc repro")
    return metrics


def git_file(root: Path, name: str) -> str | None:
    """``name`` as committed at ``root``'s HEAD, or None."""
    out = subprocess.run(
        ["git", "show", f"HEAD:{name}"], cwd=root, capture_output=True, text=True, check=False
    )
    return out.stdout if out.returncode == 0 else None


def committed_reference(root: Path) -> dict[str, dict]:
    """The metrics committed at ``root``'s HEAD.

    Raises:
        UsageError: outside a git checkout, or when HEAD has no metrics.
    """
    from musicgen.reproducibility import committed_metrics

    try:
        metrics = committed_metrics(root)
    except (subprocess.CalledProcessError, FileNotFoundError) as err:
        raise UsageError(f"{root} is not a git checkout: give --reference") from err
    if not metrics:
        raise UsageError(f"{root}'s HEAD commits no metrics/*.json: give --reference")
    return metrics


def describe_machine(text: str | None) -> str:
    """One line from a ``reports/machine.json`` (:func:`musicgen.machine.machine`)."""
    if text is None:
        return "machine not recorded"
    m = json.loads(text)
    isa = ", ".join(flag for flag, has in m.get("isa", {}).items() if has) or "no listed ISA"
    torch = m.get("torch", {})
    return f"{m.get('cpu')} ({m.get('cpu_id')}; {isa}), torch {torch.get('version')}"


def params_differ(run: Path, root: Path) -> list[str]:
    """The params keys whose values in ``run/params.yaml`` differ from ``root``'s committed
    ``params.yaml`` ([] when either is missing)."""
    from ruamel.yaml import YAML

    from musicgen.reproducibility import flatten

    committed = git_file(root, "params.yaml")
    if committed is None or not (run / "params.yaml").is_file():
        return []
    yaml = YAML(typ="safe")
    a, b = flatten(yaml.load(run / "params.yaml")), flatten(yaml.load(committed))
    return sorted(k.replace("/", ".") for k in set(a) | set(b) if a.get(k) != b.get(k))


def table(rows: list[tuple[str, ...]]) -> str:
    """Left-aligned columns under :data:`COLUMNS`."""
    rows = [COLUMNS, *rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
    return "\n".join(line.rstrip() for line in lines)


def check_repro_command(args: argparse.Namespace) -> None:
    from musicgen.reproducibility import (
        PROJECT_ROOT,
        SIGMAS,
        compare_metrics,
        load_seed_spread,
    )

    run = args.run_dir
    measured = load_metrics(run)
    if args.reference is None:
        reference = committed_reference(PROJECT_ROOT)
        ref_name = f"the metrics committed at {PROJECT_ROOT}'s HEAD"
        ref_machine = git_file(PROJECT_ROOT, "reports/machine.json")
    else:
        reference = load_metrics(args.reference)
        ref_name = str(args.reference)
        ref_machine = next(
            (p.read_text() for p in [args.reference / "reports/machine.json"] if p.is_file()), None
        )
    spread, seeds = {}, 0
    if args.spread.is_file():
        try:
            spread = load_seed_spread(args.spread)
            seeds = len(json.loads(args.spread.read_text())["seeds"])
        except (KeyError, TypeError, ValueError) as err:
            raise UsageError(f"{args.spread} is not benchmarks/seed_spread.py's output") from err
    machine = run / "reports/machine.json"
    print(
        f"run:       {run} ({describe_machine(machine.read_text() if machine.is_file() else None)})"
    )
    print(f"reference: {ref_name} ({describe_machine(ref_machine)})")
    if seeds:
        print(
            f"bounds:    {SIGMAS:g} sigma of the spread over {seeds} training seeds ({args.spread})"
        )
    else:
        print(f"bounds:    reasoned, not measured ({args.spread} does not exist)")
    if args.reference is None and (moved := params_differ(run, PROJECT_ROOT)):
        print(
            f"note: params.yaml differs from the committed one ({', '.join(moved[:5])}"
            f"{', ...' if len(moved) > 5 else ''}): the reference is the committed params' run, "
            "so a difference can be the params', not the machine's"
        )
    results = compare_metrics(measured, reference, spread)
    bad = [c for c in results if not c.ok]
    shown = results if args.all else [c for c in results if c.value != c.reference]
    rows = []
    for c in shown:
        if c.missing or c.bound is None:
            verdict = "ok" if c.ok else f"not in {c.missing}" if c.missing else "DIFFERS"
            rows.append((f"{c.file} {c.key}", repr(c.value), repr(c.reference), "", verdict))
            continue
        verdict = "" if c.ok else "  OUT"
        rows.append(
            (
                f"{c.file} {c.key}",
                f"{c.value:.6g}",
                f"{c.reference:.6g}",
                f"{c.value - c.reference:+.3g}",
                c.bound.describe() + verdict,
            )
        )
    if rows:
        print()
        print(table(rows))
    same = sum(c.value == c.reference for c in results)
    print(
        f"\n{len(results)} metrics: {same} identical, {len(results) - same - len(bad)} moved "
        f"within their bound, {len(bad)} out of it or missing"
    )
    if bad:
        raise SystemExit(1)


def add_check_repro(commands) -> None:
    p = commands.add_parser(
        "check-repro",
        help="a run's metrics against the committed reference, within the cross-machine tolerance",
        description="Compares the metrics of RUN (metrics/*.json) with the reference and prints "
        "each metric that moved: by how much, and its bound (4 standard deviations of its spread "
        "over training seeds, benchmarks/seed_spread.json). Exit status 1 when one is out of its "
        "bound or missing.",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "run_dir", metavar="RUN", nargs="?", type=Path, default=Path("."), help="the run directory"
    )
    p.add_argument(
        "--reference",
        type=Path,
        help="a run directory or a JSON of metrics files (default: the metrics committed at the "
        "project's HEAD)",
    )
    p.add_argument("--all", action="store_true", help="every metric, not only those that moved")
    from musicgen.reproducibility import SEED_SPREAD

    p.add_argument("--spread", type=Path, default=SEED_SPREAD, help="the seed spread")
    p.set_defaults(run=check_repro_command)
