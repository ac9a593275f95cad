"""FAD and KAD of the embedded default after 0, its own (params.yaml: 600) and more training steps.

In a temporary git + DVC copy of this project with the full default params
(:func:`musicgen.reproducibility.copy_project`, nothing changed), ``dvc repro`` runs the embedded
default (train.steps as params.yaml has it, 600), then ``dvc exp run -S train.steps=N`` for each
other N (``--steps``): the same data, codec and text states, only train, generate and evaluate
rerun. Per run: the LM's validation CE, and per embedder in ``evaluate.embedders`` that the table
shows (``--embedders``, default ``mel vggish``) FAD, FAD∞ and KAD from ``metrics/eval.json``, and
the mel embedder's chroma and onset blocks' Fréchet distances (``reports/eval/details.json``).

Three anchors, computed here on the same test references with each embedder: white noise clips
at the generated clips' loudness (far: not music), the codec round trip of every test clip
(decode(encode(clip)): the best the LM can reach through this codec), and the references' first
half against their second half (near: what sampling alone gives; the halves hold half the clips,
so it overstates the distance of a full set).

Usage:
    python3 benchmarks/bench_default_training.py                       # steps 0 600 1500
    python3 benchmarks/bench_default_training.py --steps 0 600 --work /tmp/bench --json out.json

Prints a Markdown table (the README's) and, with ``--json``, writes every number.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from musicgen.params import load_params
from musicgen.reproducibility import copy_project, cpu_model

# params.yaml's train.steps: the run that dvc repro makes
DEFAULT_STEPS = load_params(Path(__file__).resolve().parents[1] / "params.yaml")["train"]["steps"]
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@localhost",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@localhost",
}


def sh(args: list[str], cwd: Path) -> float:
    """Runs a command in ``cwd``; returns its wall seconds (its output is shown on failure)."""
    start = time.perf_counter()
    out = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return time.perf_counter() - start


def run_numbers(repo: Path, embedders: list[str]) -> dict:
    """The workspace run's CE and, per embedder, FAD, FAD∞, KAD (and the mel blocks)."""
    metrics = json.loads((repo / "metrics/eval.json").read_text())
    details = json.loads((repo / "reports/eval/details.json").read_text())
    out = {"valid_ce": metrics["valid_ce"]}
    for name in embedders:
        out[name] = {k: metrics[f"{k}_{name}"] for k in ("fad", "fad_inf", "kad")}
        out[name] |= {k: v for k, v in details["embedders"][name].items() if k.startswith("fad_")}
    return out


def anchors(repo: Path, embedders: list[str]) -> dict[str, dict]:
    """Per embedder the scores of white noise, of the codec round trip of every test clip and of
    the references' first half, each against the references (the second half for the last)."""
    from musicgen.metrics import embedders as E
    from musicgen.metrics.frechet import gaussian
    from musicgen.metrics.kad import KadReference
    from musicgen.params import load_params
    from musicgen.pipeline.common import read_split
    from musicgen.pipeline.evaluation import loudness_normalised
    from musicgen.pipeline.references import load_npz
    from musicgen.pipeline.roundtrip import codec_round_trip

    params = load_params(repo / "params.yaml")
    ev, rate = params["evaluate"], params["resample"]["sample_rate"]
    ids = read_split(repo / "data/split", "test")
    models = repo / "data/models/eval"
    out: dict[str, dict] = {"white noise": {}, "codec round trip": {}, "references, half": {}}
    with tempfile.TemporaryDirectory() as tmp:
        trips = Path(tmp)
        codec_round_trip(
            repo / "data/models/codec",
            repo / "data/audio",
            ids,
            rate,
            params["codec"]["n_codebooks"],
            trips,
        )
        n_samples = round(params["resample"]["duration_s"] * rate)
        noise = np.random.default_rng(0).standard_normal((len(ids), n_samples)).astype(np.float32)
        noise = loudness_normalised(noise, ev["loudness_db"], ev["peak_db"])
        for name in embedders:
            embedder = E.build_embedder(name, models, "cpu", ev["embed_batch_size"])
            reference = load_npz(repo / f"data/reference/{name}.npz")
            tripped = E.embed_files(embedder, trips, ids, rate, ev["embed_batch_size"])
            scored = {
                "white noise": E.embed_read(embedder, noise, rate).embeddings,
                "codec round trip": tripped,
            }
            for label, emb in scored.items():
                out[label][name] = score(reference, emb, ev["fad_inf"], name)
            half = len(ids) // 2
            first, second = reference["embeddings"][:half], reference["embeddings"][half:]
            flat = first.reshape(-1, first.shape[-1])
            kad_ref = KadReference.fit(flat)
            mu, cov = gaussian(flat)
            half_ref = {
                "embeddings": first,
                "mu": mu,
                "cov": cov,
                "kad_bandwidth": kad_ref.bandwidth,
                "kad_self_kernel": kad_ref.self_kernel,
            }
            out["references, half"][name] = score(half_ref, second, ev["fad_inf"], name)
    return out


def score(reference: dict, generated: np.ndarray, fad_inf_params: dict, name: str) -> dict:
    """FAD, FAD∞, KAD (and the mel blocks' distances) of embeddings against a reference."""
    from musicgen.metrics.embedders import block_distances
    from musicgen.pipeline.evaluation import score_embedder

    metrics, _ = score_embedder(reference, generated, fad_inf_params)
    out = {k: metrics[k] for k in ("fad", "fad_inf", "kad")}
    if name == "mel":
        out |= {
            f"fad_{k}": v for k, v in block_distances(reference["embeddings"], generated).items()
        }
    return out


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def table(runs: dict[int, dict], fixed: dict[str, dict], embedders: list[str]) -> str:
    """The Markdown table: one row per training run, then the anchors."""
    cols = []
    for name in embedders:
        cols += [(name, "fad"), (name, "fad_inf"), (name, "kad")]
        if name == "mel":
            cols += [(name, "fad_chroma"), (name, "fad_onset")]
    header = ["run", "valid CE", *(label(n, k) for n, k in cols)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for steps, r in runs.items():
        cells = [f"train.steps={steps}", f"{r['valid_ce']:.2f}"]
        lines.append("| " + " | ".join(cells + [fmt(r[n].get(k)) for n, k in cols]) + " |")
    for name, r in fixed.items():
        cells = [name, ""]
        lines.append("| " + " | ".join(cells + [fmt(r[n].get(k)) for n, k in cols]) + " |")
    return "\n".join(lines)


def label(embedder: str, key: str) -> str:
    """A column's name: ``fad_mel``, ``kad_vggish``, ``mel chroma``."""
    if key in ("fad_chroma", "fad_onset", "fad_logmel"):
        return f"{embedder} {key[4:]}"
    return f"{key}_{embedder}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[0, DEFAULT_STEPS, 1500])
    ap.add_argument("--embedders", nargs="+", default=["mel", "vggish"])
    ap.add_argument("--work", type=Path, help="an empty folder for the copy (default: a temp one)")
    ap.add_argument("--json", type=Path, help="write every number here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(args.work or tmp)
        repo.mkdir(parents=True, exist_ok=True)
        copy_project(repo, {})
        sh(["git", "add", "-A"], repo)
        sh(["git", "commit", "-qm", "baseline"], repo)
        walls = {DEFAULT_STEPS: sh(["dvc", "repro"], repo)}
        print(f"dvc repro (train.steps={DEFAULT_STEPS}): {walls[DEFAULT_STEPS]:.0f} s", flush=True)
        runs = {DEFAULT_STEPS: run_numbers(repo, args.embedders)}
        fixed = anchors(repo, args.embedders)
        for steps in args.steps:
            if steps == DEFAULT_STEPS:
                continue
            sh(["rm", "-rf", "data/checkpoint"], repo)  # else a finished run's state is reused
            walls[steps] = sh(["dvc", "exp", "run", "-S", f"train.steps={steps}"], repo)
            print(f"dvc exp run -S train.steps={steps}: {walls[steps]:.0f} s", flush=True)
            runs[steps] = run_numbers(repo, args.embedders)
        runs = {s: runs[s] for s in sorted(runs)}
        print(f"\n{cpu_model()}, {os.cpu_count()} CPUs\n")
        print(table(runs, fixed, args.embedders))
        if args.json:
            result = {"cpu": cpu_model(), "runs": runs, "anchors": fixed, "wall_s": walls}
            args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
