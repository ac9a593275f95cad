"""The seed spread of the embedded default: its metrics trained with N training seeds.

The cross-machine tolerance (README, Reproducibility; :mod:`musicgen.reproducibility`) is derived
from it: another CPU trains the LM along another path of float32 sums, as another seed does, so
"within tolerance" means "within what a rerun with another seed gives". In a temporary clone of
the project's HEAD (not the working tree's uncommitted changes) with its ``params.yaml`` (the
full embedded default): one ``dvc repro`` with ``train.seed`` as committed, then
``dvc exp run -S train.seed=S`` for each further seed (the data stages are shared: only train,
generate and evaluate run again). Each DVC metric's mean, standard deviation (ddof 1) and values
go to ``benchmarks/seed_spread.json`` after each seed, with the machine and the commit that made
them.

    python3 benchmarks/seed_spread.py --seeds 5            # ~3 min + ~3 min a seed on 2 cores
    python3 benchmarks/seed_spread.py --seeds 2 --small --out /tmp/spread.json   # a trial
    python3 benchmarks/seed_spread.py --table     # README's table from benchmarks/seed_spread.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from musicgen.machine import machine  # noqa: E402
from musicgen.reproducibility import SMALL, copy_project, flatten, workspace_metrics  # noqa: E402

OUT = ROOT / "benchmarks" / "seed_spread.json"


def run(args: list[str], cwd: Path) -> None:
    """Runs a command in the copy (offline, with a git identity); raises with its output's tail."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        **{f"GIT_{who}_{what}": value for who in ("AUTHOR", "COMMITTER")
           for what, value in (("NAME", "seed_spread"), ("EMAIL", "seed@spread"))},
    }  # fmt: skip
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")


def train_seed(repo: Path) -> int:
    """``train.seed`` in the copy's params.yaml."""
    from musicgen.params import load_params

    return int(load_params(repo / "params.yaml")["train"]["seed"])


def spread(runs: list[dict[str, dict]]) -> dict[str, dict[str, dict]]:
    """Per metrics file and (flattened) key: mean, std (ddof 1; 0 for one run) and the values,
    of every number the runs share (booleans and strings are not numbers here)."""
    out: dict[str, dict[str, dict]] = {}
    for file in sorted(runs[0]):
        rows = [flatten(r.get(file, {})) for r in runs]
        for key in sorted(rows[0]):
            values = [row.get(key) for row in rows]
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
                continue
            out.setdefault(file, {})[key] = {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "values": values,
            }
    return out


def commit(repo: Path) -> str:
    """The commit checked out in ``repo``."""
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()


def markdown_table(path: Path) -> str:
    """README's table: per metric that varies with the seed, its mean, standard deviation and
    bound (:func:`musicgen.reproducibility.bound`); then the metrics no seed moved."""
    from musicgen.reproducibility import bound

    metrics = json.loads(path.read_text())["metrics"]
    rows = ["| metric | mean | std over seeds | bound |", "|---|---|---|---|"]
    fixed = []
    for file, keys in metrics.items():
        for key, m in keys.items():
            b = bound(key, m["mean"], file, metrics)
            if m["std"] == 0:
                fixed.append(f"`{key}`")
                continue
            limit = f"± {b.absolute:.3g}" if b.absolute else f"± {b.relative * 100:.3g} %"
            rows.append(
                f"| `{key}` ({file}) | {m['mean']:.4g} | {m['std']:.3g} | {limit} ({b.source}) |"
            )
    return (
        "\n".join(rows)
        + f"\n\nthe same for every seed (exact, or ± 0.1 % for a float): {', '.join(fixed)}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5, help="training seeds (the committed one first)")
    ap.add_argument("--small", action="store_true", help="the small test params (a trial)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--table", action="store_true", help="print README's table of --out; no run")
    args = ap.parse_args()
    if args.table:
        print(markdown_table(args.out))
        return
    if args.seeds < 2:
        ap.error("--seeds must be at least 2: a spread needs two runs")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="seed-spread-") as tmp:
        source = Path(tmp) / "source"  # HEAD, not the working tree's uncommitted changes
        subprocess.run(["git", "clone", "-q", str(ROOT), str(source)], check=True)
        repo = copy_project(Path(tmp) / "run", SMALL if args.small else {}, root=source)
        first = train_seed(repo)
        seeds = [first + i for i in range(args.seeds)]
        walls, runs = [], []
        for i, seed in enumerate(seeds):
            t = time.perf_counter()
            if i == 0:
                run(["dvc", "repro"], repo)
                run(["git", "add", "-A"], repo)
                run(["git", "commit", "-qm", "seed spread: the committed params"], repo)
            else:
                run(["dvc", "exp", "run", "-S", f"train.seed={seed}"], repo)
            walls.append(round(time.perf_counter() - t, 1))
            runs.append(workspace_metrics(repo))
            print(f"train.seed={seed}: {walls[-1]} s", flush=True)
            if len(runs) > 1:  # after each seed: an interrupted run keeps what it measured
                result = {
                    "what": "the embedded default's DVC metrics, trained with each of these "
                    "train.seed values"
                    + (
                        " (the SMALL test params: a trial, not the bounds' source)"
                        if args.small
                        else ""
                    ),
                    "params": "small" if args.small else "params.yaml as committed",
                    "seeds": seeds[: len(runs)],
                    "commit": commit(source),
                    "machine": machine(),
                    "wall_s": {"first (dvc repro)": walls[0], "each further seed": walls[1:]},
                    "total_s": round(time.perf_counter() - started, 1),
                    "metrics": spread(runs),
                }
                args.out.write_text(json.dumps(result, indent=2) + "\n")
    varying = sum(m["std"] > 0 for f in result["metrics"].values() for m in f.values())
    print(f"wrote {args.out}: {len(seeds)} seeds, {varying} metrics vary with the seed")


if __name__ == "__main__":
    main()
