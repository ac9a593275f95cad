"""Stage generate: audio for each test caption, with classifier-free guidance and top-k."""

import argparse
from pathlib import Path

from musicgen.params import load_params
from musicgen.pipeline import generation


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--lm", type=Path, required=True)
    ap.add_argument("--codec", type=Path, required=True)
    ap.add_argument("--text", type=Path, required=True)
    ap.add_argument("--tokens", type=Path, required=True)
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    generation.generate(
        load_params(args.params)["generate"],
        args.lm,
        args.codec,
        args.text,
        args.tokens,
        args.split,
        args.out,
    )


if __name__ == "__main__":
    main()
