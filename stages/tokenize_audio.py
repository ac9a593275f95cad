"""Stage tokenize: EnCodec codes (N, K, T) int16 of every clip, code usage, the round trip."""

import argparse
from pathlib import Path

from musicgen.params import load_params
from musicgen.pipeline import codes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--audio", type=Path, required=True)
    ap.add_argument("--codec", type=Path, required=True)
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--metrics", type=Path, required=True)
    ap.add_argument("--codec-metrics", type=Path, default=None, help="the codec's round trip")
    args = ap.parse_args()
    params = load_params(args.params)
    codes.tokenize(
        params["tokenize"],
        params["resample"]["sample_rate"],
        params["codec"]["n_codebooks"],
        args.audio,
        args.codec,
        args.split,
        args.out,
        args.metrics,
        codec_metrics_path=args.codec_metrics,
    )


if __name__ == "__main__":
    main()
