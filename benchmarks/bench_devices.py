"""Inference speed of the real run's frozen models on the device at hand, per precision, and what a
lower precision changes: the EnCodec encoder and decoder of tokenize and generate, and T5 of
encode_text, through the functions the stages call (``musicgen.codec.encode``/``decode``,
``musicgen.text.encode_texts``).

The models have the configurations of ``facebook/encodec_32khz`` and ``t5-base``
(``tests/test_real_models.py``) with random weights, or are loaded from ``--codec`` / ``--text``
(a ``save_pretrained`` directory or hub id). A random EnCodec's codebooks are all zero (every
frame is code 0), so they are drawn at random here to make the code comparison mean something.

For each precision it prints clips/s (encode, decode) or captions/s (T5) and, against fp32 on the
same device: the fraction of codes that are the same per codebook, the largest decoded-audio
difference, and the largest T5 state difference. On the CPU the precisions are fp32 and bf16; on
CUDA also fp16 (not for T5: ``musicgen.device.inference_dtype`` refuses it).

Usage:
    python3 benchmarks/bench_devices.py                      # auto device, 8 clips of 10 s
    python3 benchmarks/bench_devices.py --device cuda --clips 64 --batch 32
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from musicgen import codec as C  # noqa: E402
from musicgen import text as T  # noqa: E402
from musicgen.device import inference_dtype, pick_device  # noqa: E402

CAPTION = (
    "A slow ambient piece with warm synth pads, a soft piano melody and a gentle pulsing bass; "
    "the mood is calm and dreamy, the recording is clean."
)


def timed(device: torch.device, fn, *args, **kwargs):
    """fn(*args, **kwargs) and its wall time (after the device has finished)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def load_codec(source: str | None) -> torch.nn.Module:
    if source:
        return C.load_codec(source)
    from test_real_models import ENCODEC_32KHZ
    from transformers import EncodecConfig, EncodecModel

    torch.manual_seed(0)
    model = EncodecModel(EncodecConfig(**ENCODEC_32KHZ)).eval()
    with torch.no_grad():
        for layer in model.quantizer.layers:
            layer.codebook.embed.normal_()
    return model


def load_text(source: str | None):
    if source:
        return T.load_text_encoder(source)
    from test_real_models import T5_BASE
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    tokenizer = T.train_tokenizer([CAPTION], T5_BASE["vocab_size"])
    return tokenizer, T5EncoderModel(T5Config(**T5_BASE)).eval()


def bench_codec(args, device: torch.device, precisions: list[str]) -> None:
    model = load_codec(args.codec).to(device)
    rate = model.config.sampling_rate
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal((args.clips, int(args.seconds * rate)))).astype(np.float32)
    ref_codes = ref_audio = None
    for precision in precisions:
        dtype = inference_dtype(precision, device)
        C.encode(model, audio[: args.batch], 4, args.batch, dtype)  # warm-up
        codes, t_enc = timed(device, C.encode, model, audio, 4, args.batch, dtype)
        decoded, t_dec = timed(device, C.decode, model, codes, batch_size=args.batch, dtype=dtype)
        line = f"codec {precision:>4}: encode {args.clips / t_enc:7.2f} clips/s, decode {args.clips / t_dec:7.2f} clips/s"
        if ref_codes is None:
            ref_codes, ref_audio = codes, decoded
        else:
            same = (codes == ref_codes).double().mean(dim=(0, 2)).tolist()  # (K,)
            diff = (decoded - ref_audio).abs().max().item()
            line += f"; codes equal to fp32 per codebook {[round(s, 4) for s in same]}, audio max diff {diff:.2e}"
        print(line, flush=True)


def bench_text(args, device: torch.device, precisions: list[str]) -> None:
    tokenizer, model = load_text(args.text)
    model = model.to(device)
    texts = [CAPTION] * args.captions
    ref = None
    for precision in precisions:
        try:
            dtype = inference_dtype(precision, device, fp16_safe=False)
        except ValueError as err:
            print(f"t5    {precision:>4}: refused ({err})", flush=True)
            continue
        kw = {"progress": False, "dtype": dtype}
        T.encode_texts(tokenizer, model, texts, args.batch, **kw)  # warm-up
        states, t = timed(device, T.encode_texts, tokenizer, model, texts, args.batch, **kw)
        line = f"t5    {precision:>4}: {len(texts) / t:7.2f} captions/s"
        if ref is None:
            ref = states
        else:
            diff = max(
                float(np.abs(a.astype(np.float32) - b.astype(np.float32)).max())
                for a, b in zip(states, ref, strict=True)
            )
            line += f"; states max diff to fp32 {diff:.2e}, finite {all(np.isfinite(s).all() for s in states)}"
        print(line, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="auto")
    ap.add_argument("--clips", type=int, default=8, help="clips to encode and decode")
    ap.add_argument("--seconds", type=float, default=10.0, help="clip length")
    ap.add_argument("--batch", type=int, default=8, help="clips or captions per call")
    ap.add_argument("--captions", type=int, default=64)
    ap.add_argument("--codec", help="a codec dir or hub id (default: random encodec_32khz config)")
    ap.add_argument("--text", help="a T5 dir or hub id (default: random t5-base config)")
    args = ap.parse_args()
    device = pick_device(args.device)
    precisions = ["fp32", "fp16", "bf16"] if device.type == "cuda" else ["fp32", "bf16"]
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    bench_text(args, device, precisions)
    bench_codec(args, device, precisions)


if __name__ == "__main__":
    main()
