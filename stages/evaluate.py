"""Stage evaluate: Fréchet distance of generated vs. reference audio, per-codebook CE."""

import argparse
from pathlib import Path

from musicgen.params import load_params
from musicgen.pipeline import evaluation


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--lm", type=Path, required=True)
    ap.add_argument("--tokens", type=Path, required=True)
    ap.add_argument("--text", type=Path, required=True)
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--audio", type=Path, required=True)
    ap.add_argument("--generated", type=Path, required=True)
    ap.add_argument("--metrics", type=Path, required=True)
    args = ap.parse_args()
    params = load_params(args.params)
    evaluation.evaluate(
        params["evaluate"],
        params["resample"]["sample_rate"],
        args.lm,
        args.tokens,
        args.text,
        args.split,
        args.audio,
        args.generated,
        args.metrics,
    )


if __name__ == "__main__":
    main()
