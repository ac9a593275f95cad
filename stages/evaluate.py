"""Stage evaluate: FAD, FAD∞, KAD, KL, CLAP, CE (metrics, details), per-clip scores, gallery."""

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
    ap.add_argument("--models", type=Path, required=True)
    ap.add_argument("--reference", type=Path, required=True)
    ap.add_argument(
        "--metrics", type=Path, required=True, help="the DVC metrics (headline numbers)"
    )
    ap.add_argument(
        "--details", type=Path, required=True, help="the diagnostics (weights, sizes, fits)"
    )
    ap.add_argument("--per-clip", type=Path, required=True)
    ap.add_argument("--gallery", type=Path, required=True)
    ap.add_argument("--spectrograms", type=Path, required=True)
    ap.add_argument(
        "--curves", type=Path, help="the train stage's dvclive folder (the gallery's chart)"
    )
    args = ap.parse_args()
    evaluation.evaluate(
        load_params(args.params),
        args.lm,
        args.tokens,
        args.text,
        args.split,
        args.audio,
        args.generated,
        args.models,
        args.reference,
        args.metrics,
        args.details,
        args.per_clip,
        args.gallery,
        args.spectrograms,
        args.curves,
    )


if __name__ == "__main__":
    main()
