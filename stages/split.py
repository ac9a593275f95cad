"""Stage split: train / valid / test id lists, stable under removal of other clips."""

import argparse
from pathlib import Path

from musicgen.params import load_params
from musicgen.pipeline import prepare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--raw", type=Path, required=True)
    ap.add_argument("--audio", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--metrics", type=Path, required=True)
    args = ap.parse_args()
    prepare.split(load_params(args.params)["split"], args.raw, args.audio, args.out, args.metrics)


if __name__ == "__main__":
    main()
