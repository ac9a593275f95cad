"""The ``musicgen`` command.

- ``musicgen generate "prompt" ... --out DIR|FILE.wav``: music from text prompts, with a trained run
  of this pipeline (``--model RUN_DIR``) or a published MusicGen checkpoint (``--hf ID_OR_DIR``),
  see :mod:`musicgen.inference`;
- ``musicgen info [RUN_DIR]``: what a run holds (clips, splits, codebooks, the LM and its training,
  the evaluation as a table; :mod:`musicgen.info`);
- ``musicgen convert-hf SRC DST``: a Hugging Face MusicGen checkpoint in this project's LM format
  (see :mod:`musicgen.convert`);
- ``musicgen compare A B --out DIR``: an A/B listening page of two runs or DVC experiments
  (:mod:`musicgen.cli_compare`);
- ``musicgen check-repro [RUN]``: a run's metrics against the committed reference, within the
  cross-machine tolerance (:mod:`musicgen.cli_repro`).
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import sys
import unicodedata
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path

log = logging.getLogger("musicgen")

DEFAULT_SECONDS = 10.0  # MusicGen's default length; a run's default is capped at its clip length
DEFAULT_BATCH = 4  # prompts per generate() call
SLUG_CHARS = 40  # longest prompt-derived part of an output name
OTHER_AUDIO = {".flac", ".mp3", ".ogg", ".opus", ".aiff", ".m4a"}  # --out names refused


# flag, metavar, type, lowest value, lowest allowed, highest, default, help: MusicGen's defaults
SAMPLING_OPTIONS = [
    (
        "--seconds",
        "S",
        float,
        0,
        False,
        None,
        None,
        f"seconds of new audio (default: {DEFAULT_SECONDS:g}; for a run at most the length of "
        "its training clips); past --window in sliding windows",
    ),
    (
        "--window",
        "S",
        float,
        0,
        False,
        None,
        None,
        "the LM's window in seconds (default: a run's clip length; 30 for --hf)",
    ),
    (
        "--extend-stride",
        "S",
        float,
        0,
        False,
        None,
        None,
        "seconds each later window moves on; it starts with the output's last window - stride "
        "seconds (default: 0.6 x window, audiocraft's 18 of 30)",
    ),
    ("--cfg", "C", float, 0, True, None, 3.0, "classifier-free guidance; 1 turns it off"),
    ("--top-k", "K", int, 0, True, None, 250, "sample among the K likeliest tokens; 0 disables"),
    ("--top-p", "P", float, 0, True, 1.0, 0.0, "nucleus sampling when > 0 (after top-k)"),
    ("--temperature", "T", float, 0, True, None, 1.0, "0 is greedy"),
]


class UsageError(ValueError):
    """A command line that cannot be run as given; the message says what to change."""


# ---------------------------------------------------------------------------------------------
# argument types


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none (None) or it is a flag (False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _number(kind, name: str, low: float, low_ok: bool, high: float | None):
    """An argparse type: a finite ``kind`` above ``low`` (or at it, if ``low_ok``), at most ``high``."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from err
        too_low = value < low or (value == low and not low_ok)
        if not math.isfinite(value) or too_low or (high is not None and value > high):
            bound = f"{'>=' if low_ok else '>'} {low}" + (f" and <= {high}" if high else "")
            raise argparse.ArgumentTypeError(f"{name} must be {bound}, got {text}")
        return value

    return parse


# ---------------------------------------------------------------------------------------------
# generate


def read_prompts(prompts: list[str], prompts_file: Path | None) -> list[str]:
    """The prompts of the command line, then those of ``prompts_file`` (one a line; blank lines
    and lines starting with ``#`` skipped).

    Raises:
        UsageError: if there is none, one is empty, or the file cannot be read.
    """
    out = []
    for i, text in enumerate(prompts, 1):
        if not text.strip():
            raise UsageError(f'prompt {i} is empty: give a description such as "calm piano"')
        out.append(text.strip())
    if prompts_file is not None:
        try:
            lines = Path(prompts_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise UsageError(f"cannot read --prompts {prompts_file}: {err}") from err
        out += [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not out:
        raise UsageError('no prompt: give one, e.g. musicgen generate "calm piano" --out x.wav')
    return out


def slug(text: str) -> str:
    """A file-name-safe form of a prompt: ASCII letters, digits and ``_``, at most SLUG_CHARS."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "_", ascii_text.lower()).strip("_")[:SLUG_CHARS].rstrip("_")


def output_paths(out: Path, prompts: list[str], overwrite: bool) -> list[Path]:
    """Where each prompt's WAV goes: ``out`` itself (a ``.wav``, one prompt) or, in a directory,
    ``NN_<slug>.wav`` numbered in prompt order. The JSON sidecar is beside it.

    Raises:
        UsageError: a ``.wav`` for several prompts, or a file that exists without ``overwrite``.
    """
    if out.suffix.lower() in OTHER_AUDIO:
        raise UsageError(f"--out {out}: only WAV is written; give FILE.wav or a directory")
    if out.suffix.lower() != ".wav" and out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a directory: give FILE.wav or a directory")
    if out.suffix.lower() == ".wav":
        if len(prompts) != 1:
            raise UsageError(
                f"--out {out} is one file but there are {len(prompts)} prompts: give a directory"
            )
        paths = [out]
    else:
        width = max(2, len(str(len(prompts))))
        paths = [
            out / "_".join(filter(None, [f"{i:0{width}d}", slug(p)]))
            for i, p in enumerate(prompts, 1)
        ]
        paths = [p.with_name(p.name + ".wav") for p in paths]
    if not overwrite:
        for path in paths:
            for f in (path, path.with_suffix(".json")):
                if f.exists():
                    raise UsageError(
                        f"{f} exists: pass --overwrite to replace it, or choose another --out"
                    )
    return paths


def run_seconds(asked: float | None, trained: float | None) -> float:
    """The length to generate: as asked, else MusicGen's 10 s capped at the run's clip length."""
    if asked is not None:
        return asked
    return min(DEFAULT_SECONDS, trained) if trained else DEFAULT_SECONDS


def run_windowing(args: argparse.Namespace, model):
    """The :class:`musicgen.extend.Windowing` of ``--window`` (default: the model's training
    window) and ``--extend-stride``, at the model's frame rate.

    Raises:
        UsageError: if the stride is not shorter than the window.
    """
    from musicgen.extend import PUBLISHED_WINDOW_S, Windowing

    window = args.window or model.trained_seconds or PUBLISHED_WINDOW_S
    try:
        windowing = Windowing.from_seconds(model.frame_rate, window, args.extend_stride)
    except ValueError as err:
        raise UsageError(f"--window {window:g} --extend-stride: {err}") from err
    log.info(
        "window %.1f s, stride %.1f s (longer outputs continue in sliding windows)",
        windowing.window / model.frame_rate,
        windowing.stride / model.frame_rate,
    )
    return windowing


def generate_command(args: argparse.Namespace) -> None:
    import torch
    from tqdm import tqdm

    from musicgen import inference
    from musicgen.data.audio import write_wav
    from musicgen.device import pick_device
    from musicgen.generate import SamplingConfig
    from musicgen.params import write_json

    prompts = read_prompts(args.prompts, args.prompts_file)
    paths = output_paths(args.out, prompts, args.overwrite)
    if args.cont is not None and not args.cont.is_file():
        raise UsageError(f"--continue {args.cont}: no such file")
    try:
        device = pick_device(args.device)
    except ValueError as err:
        raise UsageError(str(err)) from err
    if args.hf is not None:
        log.info("loading %s", args.hf)
        model = inference.load_hf(args.hf, device, args.precision)
    else:
        log.info("loading the run at %s", args.model)
        model = inference.load_run(args.model, device, args.precision)
    seconds = run_seconds(args.seconds, model.trained_seconds)
    windowing = run_windowing(args, model)
    prompt = None if args.cont is None else model.encode_audio(args.cont)
    sampling = SamplingConfig(
        cfg_coef=args.cfg, top_k=args.top_k, top_p=args.top_p, temperature=args.temperature
    )
    generator = torch.Generator(device=device).manual_seed(args.seed)
    settings = {
        "model": model.source,
        "seconds": seconds,
        "continue": None if args.cont is None else str(args.cont.resolve()),
        "continue_frames": 0 if prompt is None else int(prompt.shape[2]),
        "window_frames": windowing.window,
        "extend_stride_frames": windowing.stride,
        "sampling": asdict(sampling),
        "seed": args.seed,
        "batch_size": args.batch_size,
        "device": str(device),
        "precision": args.precision,
        "sample_rate": model.sample_rate,
        "version": version("musicgen-dvc"),
    }
    bs = args.batch_size
    with tqdm(total=len(prompts), desc="generate", unit="prompt") as bar:
        for start in range(0, len(prompts), bs):
            batch = prompts[start : start + bs]
            audio = model.generate(batch, seconds, sampling, generator, prompt, windowing)
            for i, (text, clip) in enumerate(zip(batch, audio, strict=True), start):
                write_wav(paths[i], clip, model.sample_rate)
                write_json(
                    paths[i].with_suffix(".json"),
                    {"prompt": text, "index": i, "samples": len(clip), **settings},
                )
            bar.update(len(batch))
    for path in paths:
        print(path)


def add_generate(commands) -> None:
    from musicgen.device import PRECISIONS

    p = commands.add_parser(
        "generate",
        help="music from text prompts, with a trained run or a published MusicGen",
        description="Generates music from text prompts and writes one 16-bit WAV at the codec's "
        "rate per prompt, with a JSON sidecar (the prompt and every setting). The same command "
        "(prompts, their order, batch size, seed) gives the same audio again on the same machine.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("prompts", nargs="*", help='text prompts, e.g. "calm piano"')
    p.add_argument(
        "--prompts",
        dest="prompts_file",
        type=Path,
        metavar="FILE",
        help="a text file with one prompt a line",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR|FILE.wav",
        help="FILE.wav for one prompt, or a directory (NN_<prompt>.wav per prompt)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--model",
        type=Path,
        metavar="RUN_DIR",
        default=Path("."),
        help="a trained run of this pipeline: its data/lm, data/models/codec, data/models/text",
    )
    source.add_argument(
        "--hf",
        metavar="ID_OR_DIR",
        help="a published MusicGen instead: a hub id (facebook/musicgen-small) or a "
        "MusicgenForConditionalGeneration save_pretrained directory with its tokenizer",
    )
    for flag, metavar, kind, low, low_ok, high, default, text in SAMPLING_OPTIONS:
        p.add_argument(
            flag,
            metavar=metavar,
            type=_number(kind, flag, low, low_ok, high),
            default=default,
            help=text,
        )
    p.add_argument("--seed", type=int, metavar="N", default=0, help="seed of the sampling")
    p.add_argument(
        "--device",
        metavar="DEVICE",
        default="auto",
        help="auto (CUDA when present), cpu, cuda or cuda:N",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="autocast of the LM and the codec: auto is fp32 on the CPU, fp16 on CUDA (T5: bf16, "
        "never fp16)",
    )
    p.add_argument(
        "--continue",
        dest="cont",
        type=Path,
        metavar="AUDIO",
        help="an audio file to continue (mixed to mono, resampled to the codec's rate); the "
        "output holds it (re-synthesised by the codec) followed by --seconds of new audio",
    )
    p.add_argument(
        "--batch-size",
        metavar="B",
        type=_number(int, "--batch-size", 1, True, None),
        default=DEFAULT_BATCH,
        help="prompts generated at once",
    )
    p.set_defaults(run=generate_command)


# ---------------------------------------------------------------------------------------------
# convert-hf


def convert_hf_command(args: argparse.Namespace) -> None:
    from musicgen.convert import convert_hf

    cfg = convert_hf(args.src, args.dst)
    print(
        f"{args.dst}: d_model {cfg.d_model}, {cfg.n_heads} heads, {cfg.n_layers} layers, "
        f"ffn {cfg.ffn_dim}, {cfg.n_codebooks} codebooks x {cfg.card}, text_dim {cfg.text_dim}, "
        f"delays {cfg.delays}"
    )


def add_convert_hf(commands) -> None:
    p = commands.add_parser(
        "convert-hf",
        help="convert a Hugging Face MusicGen checkpoint into this project's LM format",
    )
    p.add_argument(
        "src",
        help="a MusicgenForConditionalGeneration or MusicgenForCausalLM directory, or a hub id "
        "such as facebook/musicgen-small",
    )
    p.add_argument("dst", type=Path, help="output directory (model.safetensors, config.json)")
    p.set_defaults(run=convert_hf_command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="musicgen", description="musicgen-dvc tools")
    commands = parser.add_subparsers(dest="command", required=True)
    add_generate(commands)
    from musicgen.info import add_info  # its own module (it imports this one)

    add_info(commands)
    add_convert_hf(commands)
    from musicgen.cli_compare import add_compare  # its own module (it imports this one)

    add_compare(commands)
    from musicgen.cli_repro import add_check_repro  # its own module (it imports this one)

    add_check_repro(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Runs a command; errors the user can fix end with a message and exit status 1."""
    from musicgen.inference import ModelError, PromptAudioError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (UsageError, ModelError, PromptAudioError) as err:
        print(f"musicgen {args.command}: error: {err}", file=sys.stderr)
        raise SystemExit(1) from err


if __name__ == "__main__":
    main()
