"""Stage reference_stats: the test split's real audio embedded once per evaluation embedder, and
the codec round trip of the clips the gallery shows."""

import argparse
from pathlib import Path

from musicgen.params import load_params
from musicgen.pipeline import references, roundtrip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--raw", type=Path, required=True)
    ap.add_argument("--audio", type=Path, required=True)
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--models", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument(
        "--codec", type=Path, help="the codec_model stage's codec: the gallery's round trips"
    )
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
    if args.codec is not None:
        roundtrip.reference_round_trips(params, args.audio, args.split, args.codec, args.out)


if __name__ == "__main__":
    main()
