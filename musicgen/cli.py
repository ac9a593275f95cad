"""The ``musicgen`` command.

``musicgen convert-hf SRC DST`` converts a Hugging Face MusicGen checkpoint (a directory or a hub id)
into this project's LM format (see ``musicgen.convert``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


def convert_hf_command(args: argparse.Namespace) -> None:
    from musicgen.convert import convert_hf

    cfg = convert_hf(args.src, args.dst)
    print(
        f"{args.dst}: d_model {cfg.d_model}, {cfg.n_heads} heads, {cfg.n_layers} layers, "
        f"ffn {cfg.ffn_dim}, {cfg.n_codebooks} codebooks x {cfg.card}, text_dim {cfg.text_dim}, "
        f"delays {cfg.delays}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="musicgen", description="musicgen-dvc tools")
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser(
        "convert-hf",
        help="convert a Hugging Face MusicGen checkpoint into this project's LM format",
    )
    convert.add_argument(
        "src",
        help="a MusicgenForConditionalGeneration or MusicgenForCausalLM directory, or a hub id "
        "such as facebook/musicgen-small",
    )
    convert.add_argument("dst", type=Path, help="output directory (model.safetensors, config.json)")
    convert.set_defaults(run=convert_hf_command)
    return parser


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
