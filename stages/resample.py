"""Stage resample: mono audio at the codec's rate, padded or cropped to the clip length."""

import argparse
from pathlib import Path

from musicgen.params import load_params
from musicgen.pipeline import prepare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--raw", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    prepare.resample(load_params(args.params)["resample"], args.raw, args.out)


if __name__ == "__main__":
    main()
