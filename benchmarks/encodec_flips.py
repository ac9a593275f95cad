"""The share of real-EnCodec codes that change with the CPU's instruction set, on this machine.

The embedded default's tiny codec gives the same codes on every CPU (fixed-point analysis and
codebooks, ``tests/test_reproducibility.py``); the real run's ``facebook/encodec_32khz`` runs
float32 convolutions and LSTMs whose sums ATen, oneDNN and MKL order differently per instruction
set and thread count, so a latent near the boundary between two codewords can land on the other
one. This script measures how often, on the machine at hand:

* a codec of ``facebook/encodec_32khz``'s configuration (``musicgen.hub_configs.ENCODEC_32KHZ``)
  with seeded random weights (the real ones are a download), its 4 codebooks of 2048 fitted by the
  project's residual k-means on the latents of the run's training clips (so that codewords sit
  where latents are, as in a trained codec; fitted on the few test clips alone, ~2 frames per
  codeword, the 4th codebook is fitted to float noise and flips almost everywhere), saved once;
* the run's test clips (``data/audio``, ``data/split/test.txt``) encoded by that saved codec in
  one fresh process per instruction-set choice that this CPU can stand in for (the environments
  of ``tests/isa_runs.py``: ATen capability, oneDNN ISA, MKL path, thread count) and once natively;
* per codebook, the share of codes that differ from the native run's, and the share of frames
  with any difference; and how far the encoder's latents moved (the share of latent values not
  the same bits, and the largest difference), which says whether the paths differed at all.

It is a comparison of code paths on one CPU, which is what a second CPU would run; it is not a
measurement of another machine. Random encoder weights are not the trained ones: the share on
real weights may differ (run it where the download is possible: ``--codec facebook/encodec_32khz``
uses the real codec and codebooks instead).

Usage::

    python benchmarks/encodec_flips.py --run . [--clips 16] [--codec facebook/encodec_32khz]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

SAMPLE_RATE = 32000


def build_codec(out: Path, audio: np.ndarray | None, source: str | None) -> None:
    """The codec every run encodes with, saved to ``out``: ``source`` as is, or the real
    configuration with random weights and codebooks fitted to ``audio``."""
    import torch
    from transformers import EncodecConfig, EncodecModel

    from musicgen import codec as C
    from musicgen.hub_configs import ENCODEC_32KHZ

    if source:
        model = C.load_codec(source)
    else:
        torch.manual_seed(0)
        model = EncodecModel(EncodecConfig(**ENCODEC_32KHZ)).eval()
        C.fit_codebooks(model, audio, n_iter=5, progress=False)
    C.save_codec(model, out)


def encode_worker(codec_dir: Path, audio_path: Path, out: Path) -> None:
    """One run: encode the clips with the saved codec in this process's instruction set."""
    import torch

    from musicgen import codec as C

    if "OMP_NUM_THREADS" in os.environ:  # torch caps the variable at the cores it sees
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    model, audio = C.load_codec(str(codec_dir)), np.load(audio_path)
    codes = C.encode(model, audio, 4, batch_size=2)
    np.save(out, codes.numpy())
    latents = C._latents(model, torch.from_numpy(audio), 2)  # (N, D, T), what the codes quantise
    np.save(out.with_suffix(".latents.npy"), latents.numpy())
    info = {"aten": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}
    out.with_suffix(".json").write_text(json.dumps(info))


def flips(codes: np.ndarray, native: np.ndarray) -> dict:
    """Share of codes differing from the native run's, per codebook, and of frames with any."""
    differ = codes != native  # (N, K, T)
    return {
        "per_codebook": [float(v) for v in differ.mean(axis=(0, 2))],
        "frames_with_any": float(differ.any(axis=1).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=__doc__[__doc__.index("Usage::") :],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--run", type=Path, default=Path("."), help="holds data/audio and split")
    parser.add_argument("--clips", type=int, default=16, help="test clips to encode")
    parser.add_argument("--codec", default=None, help="a hub id or directory (default: random)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    parser.add_argument("--worker", nargs=3, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        encode_worker(*args.worker)
        return

    from isa_runs import cpu_flags, isa_runs

    from musicgen.data.audio import load_clips
    from musicgen.pipeline.common import read_split

    split, audio_dir = args.run / "data/split", args.run / "data/audio"
    ids = read_split(split, "test")[: args.clips]
    audio = load_clips(audio_dir, ids, SAMPLE_RATE)
    results = {"clips": len(ids), "seconds": audio.shape[1] / SAMPLE_RATE, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train = (
            None if args.codec else load_clips(audio_dir, read_split(split, "train"), SAMPLE_RATE)
        )
        build_codec(tmp / "codec", train, args.codec)
        results["fit_clips"] = 0 if train is None else len(train)
        np.save(tmp / "audio.npy", audio)
        envs = [{}] + isa_runs(cpu_flags())
        for i, env in enumerate(envs):
            out = tmp / f"codes{i}.npy"
            cmd = [sys.executable, __file__, "--worker", str(tmp / "codec"), str(tmp / "audio.npy")]
            subprocess.run([*cmd, str(out)], env={**os.environ, **env}, check=True)
            info = json.loads(out.with_suffix(".json").read_text())
            codes, latents = np.load(out), np.load(out.with_suffix(".latents.npy"))
            native = codes if i == 0 else np.load(tmp / "codes0.npy")
            native_latents = latents if i == 0 else np.load(tmp / "codes0.latents.npy")
            moved = np.abs(latents - native_latents)
            row = {
                "env": env,
                **info,
                **flips(codes, native),
                "latents_differing": float((moved > 0).mean()),
                "latent_max_abs_diff": float(moved.max()),
                "latent_rms": float(np.sqrt(np.mean(native_latents.astype(np.float64) ** 2))),
            }
            results["runs"].append(row)
            shares = " ".join(f"{100 * v:.3f}%" for v in row["per_codebook"])
            label = " ".join(f"{k}={v}" for k, v in env.items() if "THREADS" not in k) or "native"
            print(
                f"{label} (ATen {info['aten']}, {info['threads']} threads): codes differing per "
                f"codebook {shares}; frames with any {100 * row['frames_with_any']:.3f}%; "
                f"latents differing {100 * row['latents_differing']:.1f}%, by at most "
                f"{row['latent_max_abs_diff']:.2e} (latent RMS {row['latent_rms']:.2e})",
                flush=True,
            )
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
