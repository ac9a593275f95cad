"""Where and in what precision a stage computes: one set of helpers for every compute stage.

Each compute stage (tokenize, encode_text, train, generate, evaluate) reads a ``device`` param
(``auto``: CUDA when present, else CPU; or any ``torch.device`` string such as ``cpu``, ``cuda``,
``cuda:1``) and a ``precision`` param (``auto`` | ``fp32`` | ``fp16`` | ``bf16``). The CPU and CUDA
paths are the same functions: precision is applied with ``torch.autocast`` around the model calls,
and ``fp32`` (the CPU default) disables it, so a CPU run computes exactly what it did before.

Inference precision (:func:`inference_dtype`), ``auto``:

* CPU: fp32 (autocast gains nothing there and changes results);
* CUDA: fp16, or bf16 for models known to overflow in fp16 (pass ``fp16_safe=False``), fp32 on a
  GPU without bf16 support. T5 is one: the output of its feed-forward ``wo`` projection exceeds
  fp16's range (65504; 66246 measured in transformers issue #5651), the states become inf and then
  NaN; ``t5-base`` in half precision gives NaN encoder states (transformers #4586; #9295 found only
  ``t5-small`` safe), and T5 was trained with bf16 activations (google-research/t5 #539). Autocast
  does not help, as the projection's output is fp16 under it too.

A GPU "supports bf16" here when it computes it natively: compute capability 8.0 or newer
(Ampere, Hopper, ...) on CUDA, asked of the device in question (:func:`native_bf16`), not of the
current device and not counting emulation (``torch.cuda.is_bf16_supported()`` says True on a V100
or a T4, where bf16 runs emulated and slowly).

Encoding precision (:func:`encoding_dtype`), ``auto``: fp32 on every device. The codec's codes are
the training data: latents rounded to fp16 can flip the fine residual codes (audiocraft encodes
outside its autocast block too); ``fp16`` / ``bf16`` must be asked for.

Training precision (:func:`autocast_dtype`), ``auto``: fp16 autocast on CUDA, fp32 on CPU.

A stage that runs on ``cuda:<n>`` makes that GPU the current device for its work
(:func:`device_scope`): streams, CUDA graphs and generators that are created without a device
argument live on the current device.
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def pick_device(name: str) -> torch.device:
    """The device named by a ``device`` param.

    Args:
        name: ``auto`` (CUDA when ``torch.cuda.is_available()``, else CPU) or a ``torch.device``
            string (``cpu``, ``cuda``, ``cuda:1``, ...).

    Returns:
        The device.

    Raises:
        ValueError: if ``name`` is not a device, or names CUDA on a machine without it.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:<n>, got {name!r}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available here (use auto)")
    return device


def device_scope(device: torch.device) -> contextlib.AbstractContextManager:
    """Makes ``device`` the current CUDA device inside the block (a no-op elsewhere).

    ``torch.cuda.Stream()``, ``torch.cuda.graph`` (its capture stream and memory pool) and
    ``torch.cuda.current_stream()`` use the current device when given none: a stage on ``cuda:1``
    whose current device is still ``cuda:0`` would capture its decoding step on the wrong GPU.
    """
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.cuda.device(device)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (CUDA capability >= 8.0; ROCm: as torch says).

    Emulated bf16 (V100, T4) does not count: it is slower than fp32 there.
    """
    if device.type != "cuda":
        return False
    if torch.version.hip:  # ROCm: torch knows which of its GPUs have bf16
        with torch.cuda.device(device):
            return torch.cuda.is_bf16_supported()
    return torch.cuda.get_device_capability(device) >= (8, 0)


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The training autocast dtype, or None for plain fp32.

    ``auto``: fp16 on CUDA (with a GradScaler), fp32 elsewhere.
    """
    _check_precision(precision)
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else None
    return _DTYPES[precision]


def inference_dtype(
    precision: str, device: torch.device, fp16_safe: bool = True
) -> torch.dtype | None:
    """The autocast dtype of a frozen model's inference, or None for plain fp32.

    Args:
        precision: ``auto`` | ``fp32`` | ``fp16`` | ``bf16``.
        device: where the model runs.
        fp16_safe: False for models whose activations overflow fp16 (T5): ``auto`` then picks
            bf16 on CUDA, and an explicit ``fp16`` is refused.

    Returns:
        ``torch.float16``, ``torch.bfloat16`` or None (fp32).

    Raises:
        ValueError: on an unknown precision, or ``fp16`` with ``fp16_safe=False``.
    """
    _check_precision(precision)
    if precision == "auto":
        if device.type != "cuda":
            return None
        if fp16_safe:
            return torch.float16
        return torch.bfloat16 if native_bf16(device) else None
    if precision == "fp16" and not fp16_safe:
        raise ValueError(
            "precision fp16 is refused for this model: its activations overflow fp16 (T5's "
            "feed-forward states exceed 65504 and become inf/NaN); use bf16 or fp32"
        )
    return _DTYPES[precision]


def encoding_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the codec's encoder when it makes training codes: None (fp32) for
    ``auto`` on every device; ``fp16`` / ``bf16`` only when asked for.

    Latents rounded to half precision move near-tied residuals to the neighbouring codeword, and
    the codes are what the LM is trained on (``scripts/gpu_check.py`` measures the share that
    flips); audiocraft encodes outside its autocast block for the same reason.
    """
    _check_precision(precision)
    return None if precision == "auto" else _DTYPES[precision]


def autocast(
    device: torch.device, dtype: torch.dtype | None, cache_enabled: bool = True
) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``, or a no-op context when ``dtype`` is None.

    ``cache_enabled=False`` when a CUDA graph is captured inside (the weights' casts must be part
    of the graph, not cached outside it).
    """
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype, cache_enabled=cache_enabled)
