"""Stage generate: audio for each test caption."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from musicgen.data.audio import write_wav
from musicgen.data.store import CodesAndText, save_tokens
from musicgen.device import autocast, device_scope, inference_dtype, pick_device
from musicgen.lm import load_lm
from musicgen.pipeline.common import AUDIO, read_split


def generate(
    params: dict,
    lm_dir: Path,
    codec_dir: Path,
    text_dir: Path,
    tokens_dir: Path,
    split_dir: Path,
    out_dir: Path,
    progress: bool = True,
) -> None:
    """The generate stage: one wav per test caption in ``out_dir/audio`` and ``tokens/``.

    The LM and the codec run on ``generate.device``; ``generate.precision`` is the autocast dtype
    of the LM's forward passes and of the codec's decoder (``auto``: fp16 on CUDA, fp32 on the
    CPU, where the numba decoding step runs; on CUDA each decoding step is replayed from a CUDA
    graph, ``generate(static_step=True)``). Guidance and sampling always use float32 logits.
    The sampling RNG lives on the device, so a CUDA run draws other samples than a CPU run.

    Each clip is ``generate.seconds`` long (null: the test clips' length); past the LM's window
    (``generate.window_s``, null: the length of its training clips, the tokens' frames) it goes
    on in sliding windows that move on by ``generate.extend_stride_s`` (:mod:`musicgen.extend`).
    """
    device = pick_device(params["device"])
    with device_scope(device):  # cuda:<n>: streams and graphs on that GPU
        _generate(
            params, device, lm_dir, codec_dir, text_dir, tokens_dir, split_dir, out_dir, progress
        )


def _generate(
    params, device, lm_dir, codec_dir, text_dir, tokens_dir, split_dir, out_dir, progress
):
    """:func:`generate` on ``device``, the current device."""
    from tqdm import tqdm

    from musicgen import codec as C
    from musicgen.extend import WindowPools, generate_long
    from musicgen.generate import SamplingConfig, pad_text

    dtype = inference_dtype(params["precision"], device)
    static = device.type == "cuda"  # decoding steps in a CUDA graph; the CPU runs the numba step
    model = load_lm(lm_dir, device)
    codec = C.load_codec(str(codec_dir)).to(device)
    test_ids = read_split(split_dir, "test")
    if params["max_items"]:
        test_ids = test_ids[: params["max_items"]]
    data = CodesAndText(tokens_dir, text_dir, test_ids)
    sampling = SamplingConfig(
        cfg_coef=params["cfg_coef"],
        top_k=params["top_k"],
        top_p=params["top_p"],
        temperature=params["temperature"],
    )
    rate = codec.config.sampling_rate
    frame_rate = rate / codec.config.hop_length
    n_frames, windowing = clip_frames(params, data.n_frames, frame_rate)
    generator = torch.Generator(device).manual_seed(params["seed"])
    codes, bs = [], params["batch_size"]
    text_length = max(1, int(data.spans[:, 0, 1].max(initial=0)))  # the longest caption
    pools = WindowPools()  # batches of one shape reuse decoders (on CUDA: one graph capture)
    for i in tqdm(range(0, len(data), bs), desc="generate", disable=not progress):
        b = data.batch(np.arange(i, min(i + bs, len(data))))
        cond, cond_mask = b.cond, b.cond_mask
        if static:  # every batch one shape: one decoder and one graph capture for the stage
            cond, cond_mask = pad_text(cond, cond_mask, text_length)
        cond, cond_mask = cond.to(device), cond_mask.to(device)
        with autocast(device, dtype, cache_enabled=not static):
            out = generate_long(  # (b, K, T)
                model,
                cond,
                cond_mask,
                n_frames,
                sampling,
                windowing,
                generator,
                pools=pools,
                weights=params["weights"],
                static_step=static,
            )
        audio = C.decode(codec, out, dtype=dtype).numpy()  # (b, T * hop)
        out = out.cpu()
        for ytid, clip in zip(test_ids[i : i + bs], audio, strict=True):
            write_wav(out_dir / AUDIO / f"{ytid}.wav", clip, rate)
        codes.append(out.numpy())
    save_tokens(out_dir / "tokens", test_ids, np.concatenate(codes))


def clip_frames(params: dict, trained_frames: int, frame_rate: float):
    """Frames of each generated clip and the :class:`musicgen.extend.Windowing` of the LM.

    Args:
        params: the ``generate`` params (``seconds``, ``window_s``, ``extend_stride_s``; a
            missing or null key takes its default).
        trained_frames: frames of the clips the LM was trained on (the tokens').
        frame_rate: the codec's frames per second.

    Returns:
        (n_frames, windowing).
    """
    from musicgen.extend import Windowing

    seconds, window_s = params.get("seconds"), params.get("window_s")
    n_frames = round(seconds * frame_rate) if seconds else trained_frames
    window_s = window_s or trained_frames / frame_rate
    return n_frames, Windowing.from_seconds(frame_rate, window_s, params.get("extend_stride_s"))
