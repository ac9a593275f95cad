"""Stage download: clips, MusicCaps-style metadata and a status per clip."""

import argparse
from pathlib import Path

from musicgen import pipeline
from musicgen.params import load_params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    pipeline.download(load_params(args.params)["data"], args.out)


if __name__ == "__main__":
    main()
