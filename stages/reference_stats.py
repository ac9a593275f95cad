"""Stage reference_stats: the test split's real audio embedded once per evaluation embedder."""

import argparse
from pathlib import Path

from musicgen.params import load_params
from musicgen.pipeline import references


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--raw", type=Path, required=True)
    ap.add_argument("--audio", type=Path, required=True)
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--models", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    params = load_params(args.params)
    references.reference_stats(
        params["evaluate"],
        params["resample"]["sample_rate"],
        args.raw,
        args.audio,
        args.split,
        args.models,
        args.out,
    )


if __name__ == "__main__":
    main()
