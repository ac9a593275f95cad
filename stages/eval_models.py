"""Stage eval_models: the weights of the evaluation embedders (VGGish, CLAP) as a DVC output."""

import argparse
from pathlib import Path

from musicgen.params import load_params
from musicgen.pipeline import references


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    references.eval_models(load_params(args.params)["evaluate"], args.out)


if __name__ == "__main__":
    main()
