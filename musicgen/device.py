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

``auto`` with several visible GPUs (:func:`claim_gpu`): each process takes the first GPU that no
other process holds, by an exclusive ``flock`` on a file named by the GPU's UUID (held until the
process exits), so the workers of ``dvc queue start -j N`` run on N GPUs, not all on GPU 0; when
every GPU is held, the one with the most free memory. One visible GPU (e.g. through
``CUDA_VISIBLE_DEVICES``) and processes under ``torchrun`` (which take their local rank's GPU)
get plain ``cuda``, as before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
GPU_LOCKS_ENV = (
    "MUSICGEN_GPU_LOCKS"  # the folder of the GPU lock files (default: under the tmp dir)
)
_claim: dict = {}  # this process's GPU: "device" and the open lock file that holds it


def pick_device(name: str) -> torch.device:
    """The device named by a ``device`` param.

    Args:
        name: ``auto`` (CUDA when ``torch.cuda.is_available()``, else CPU; with several GPUs one
            that no other process holds, :func:`claim_gpu`) or a ``torch.device`` string
            (``cpu``, ``cuda``, ``cuda:1``, ...).

    Returns:
        The device.

    Raises:
        ValueError: if ``name`` is not a device, or names CUDA on a machine without it.
    """
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        under_torchrun = "LOCAL_RANK" in os.environ  # each rank takes its local rank's GPU
        if torch.cuda.device_count() > 1 and not under_torchrun:
            return claim_gpu()
        return torch.device("cuda")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:<n>, got {name!r}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available here (use auto)")
    return device


def gpu_lock_dir() -> Path:
    """The folder of the GPU lock files: ``$MUSICGEN_GPU_LOCKS``, else ``<tmp>/musicgen-gpus``
    (made writable for every user, as the GPUs are shared)."""
    folder = Path(os.environ.get(GPU_LOCKS_ENV) or Path(tempfile.gettempdir()) / "musicgen-gpus")
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            folder.chmod(0o1777)
    return folder


def _hold(path: Path):
    """The open file ``path`` with an exclusive lock on it, or None if another process holds it."""
    import fcntl

    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def claim_gpu() -> torch.device:
    """This process's GPU among several: the first one no other process holds, kept until exit.

    Each GPU has a lock file named by its UUID in :func:`gpu_lock_dir` (the same GPU under other
    ``CUDA_VISIBLE_DEVICES`` numbers is the same file); this process takes the first it can lock
    exclusively and holds it until it exits (the system then releases it, also after a crash).
    Later calls in the process return the same GPU. When every GPU is held, the one with the
    most free memory, with a warning.

    Returns:
        ``cuda:<n>``.
    """
    if "device" in _claim:
        return _claim["device"]
    count, folder = torch.cuda.device_count(), gpu_lock_dir()
    for index in range(count):
        uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None) or f"index-{index}"
        fd = _hold(folder / f"{uuid}.lock")
        if fd is not None:
            _claim.update(device=torch.device("cuda", index), lock=fd)
            return _claim["device"]
    index = max(range(count), key=lambda i: torch.cuda.mem_get_info(i)[0])
    log.warning(
        "every one of the %d GPUs is held by another process (%s); cuda:%d has the most free memory",
        count,
        folder,
        index,
    )
    _claim["device"] = torch.device("cuda", index)
    return _claim["device"]


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
