"""Stage encode_text: frozen-T5 states of each caption and its word-dropout variants."""

import argparse
from pathlib import Path

from musicgen.params import load_params
from musicgen.pipeline import captions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--raw", type=Path, required=True)
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    captions.encode_text(
        load_params(args.params)["encode_text"], args.raw, args.split, args.model, args.out
    )


if __name__ == "__main__":
    main()
