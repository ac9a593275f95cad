"""Stage codec_model: the EnCodec codec (a hub id or a tiny one with k-means-fitted codebooks)."""

import argparse
from pathlib import Path

from musicgen.params import load_params
from musicgen.pipeline import codes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--audio", type=Path, required=True)
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    params = load_params(args.params)
    codes.codec_model(
        params["codec"],
        params["resample"]["sample_rate"],
        args.audio,
        args.split,
        args.out,
    )


if __name__ == "__main__":
    main()
