"""Stage train: the LM, trained on tokens and text states; EMA weights, metrics and curves, and
the machine that trained it (``--machine``: :func:`musicgen.machine.machine`, the CPU, its
instruction sets and torch's build; the training data are the same bytes on every CPU, the LM is
not)."""

import argparse
import logging
import os
from pathlib import Path

from musicgen.machine import machine
from musicgen.params import load_params, write_json
from musicgen.pipeline import training


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--tokens", type=Path, required=True)
    ap.add_argument("--text", type=Path, required=True)
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--codec", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--metrics", type=Path, required=True)
    ap.add_argument("--plots", type=Path, required=True)
    ap.add_argument("--raw", type=Path, help="captions, for train.text_on_the_fly")
    ap.add_argument("--text-model", type=Path, help="the T5, for train.text_on_the_fly")
    ap.add_argument("--machine", type=Path, help="a JSON of the machine that trains")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_params(args.params)
    if args.machine is not None and "RANK" not in os.environ:  # once, not per torchrun rank
        args.machine.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.machine, machine())
    if training.relaunched_under_torchrun(params["train"]):
        return  # train.nproc_per_node / nnodes > 1: the ranks ran this script under torchrun
    training.train(
        params["lm"],
        params["train"],
        args.tokens,
        args.text,
        args.split,
        args.codec,
        args.out,
        args.checkpoint,
        args.metrics,
        args.plots,
        raw_dir=args.raw,
        text_model_dir=args.text_model,
        text_params=params["encode_text"],
    )


if __name__ == "__main__":
    main()
