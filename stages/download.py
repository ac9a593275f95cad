"""Stage download: clips, MusicCaps-style metadata and a status per clip."""

import argparse
import logging
from pathlib import Path

from musicgen.params import load_params
from musicgen.pipeline import sources


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--store", type=Path, required=True, help="persistent store of downloads")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sources.download(load_params(args.params)["data"], args.out, args.store)


if __name__ == "__main__":
    main()
