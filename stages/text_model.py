"""Stage text_model: the T5 encoder and its tokenizer (a hub id or a tiny local one)."""

import argparse
from pathlib import Path

from musicgen.params import load_params
from musicgen.pipeline import captions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--raw", type=Path, required=True)
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    captions.text_model(load_params(args.params)["text"], args.raw, args.split, args.out)


if __name__ == "__main__":
    main()
