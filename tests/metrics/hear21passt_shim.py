"""Imports PyPI hear21passt's network and front end without torchaudio and timm.

hear21passt 0.0.26 needs two packages that cannot be imported next to the locked CPU torch:
``models/preprocess.py`` imports ``torchaudio`` (PyPI's wheels are CUDA builds: loading
``_torchaudio.so`` fails on ``libc10_cuda.so``; the CPU wheels are on pytorch.org's index only), and
``models/helpers/vit_helpers.py`` imports ``timm`` for ``download_cached_file`` (timm requires
torchvision, the same story). So the dev extra installs hear21passt with ``--no-deps`` and these
tests put two stand-in modules into ``sys.modules`` while importing it, providing only what the
imported code touches:

- ``timm.models._hub.download_cached_file``: used only to download pretrained weights; ours raises
  (the tests build hear21passt's model with ``pretrained=False``).
- ``torchaudio.transforms.FrequencyMasking`` / ``TimeMasking``: built by ``AugmentMelSTFT`` and
  called only in training; ours raise if called.
- ``torchaudio.compliance.kaldi.get_mel_banks``: called by ``AugmentMelSTFT.forward``. The real one
  cannot be provided, so this is an independent transcription of Kaldi's ``MelBanks`` constructor
  (``src/feat/mel-computations.cc``) for ``vtln_warp_factor == 1``, one bin at a time with the
  ``math`` module, returned in torch's default dtype like torchaudio's. It shares no code with
  :func:`musicgen.metrics.passt.kaldi_mel_banks` (vectorised numpy, float64), and
  ``test_passt.py`` compares the two. Checked once against torchaudio 2.11.1's own
  ``compliance/kaldi.py`` (run in float64): equal within 2e-14; torchaudio's float32 result
  differs from float64 by up to 1.3e-5 per weight.

Everything else in the parity tests (pre-emphasis, STFT, power, log and normalisation, the whole
network) is hear21passt's own code.
"""

from __future__ import annotations

import math
import sys
import types
from contextlib import contextmanager

import torch


def mel(hz: float) -> float:
    return 1127.0 * math.log(1.0 + hz / 700.0)


def kaldi_mel_banks_loop(
    num_bins: int,
    window_length_padded: int,
    sample_freq: float,
    low_freq: float,
    high_freq: float,
    vtln_low: float,
    vtln_high: float,
    vtln_warp_factor: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kaldi's mel banks, torchaudio's signature: ((num_bins, n_fft / 2), centres in Hz).

    In torch's default dtype (float32 unless changed), as torchaudio computes them.
    """
    assert vtln_warp_factor == 1.0, "the stand-in covers no VTLN warping"
    num_fft_bins = window_length_padded // 2
    nyquist = 0.5 * sample_freq
    if high_freq <= 0.0:
        high_freq += nyquist
    fft_bin_width = sample_freq / window_length_padded
    mel_low, mel_high = mel(low_freq), mel(high_freq)
    delta = (mel_high - mel_low) / (num_bins + 1)
    banks = torch.zeros(num_bins, num_fft_bins, dtype=torch.float64)
    centres = torch.zeros(num_bins, dtype=torch.float64)
    for b in range(num_bins):
        left, centre, right = (mel_low + (b + i) * delta for i in range(3))
        centres[b] = 700.0 * (math.exp(centre / 1127.0) - 1.0)
        for i in range(num_fft_bins):
            m = mel(fft_bin_width * i)
            if left < m < right:
                banks[b, i] = (
                    (m - left) / (centre - left) if m <= centre else (right - m) / (right - centre)
                )
    dtype = torch.get_default_dtype()  # torchaudio computes in it
    return banks.to(dtype), centres.to(dtype)


def download_cached_file(*args, **kwargs):
    raise RuntimeError("the hear21passt parity tests download nothing (pretrained=False)")


class TrainingOnlyMasking(torch.nn.Module):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__()

    def forward(self, x):
        raise RuntimeError("SpecAugment masking runs only in training; the parity tests use eval")


def stand_ins() -> dict[str, types.ModuleType]:
    """The stand-in modules, by the names hear21passt imports."""
    mods = {name: types.ModuleType(name) for name in (
        "timm", "timm.models", "timm.models._hub",
        "torchaudio", "torchaudio.transforms", "torchaudio.compliance", "torchaudio.compliance.kaldi",
    )}  # fmt: skip
    mods["timm.models._hub"].download_cached_file = download_cached_file
    mods["timm"].models = mods["timm.models"]
    mods["timm.models"]._hub = mods["timm.models._hub"]
    mods["torchaudio.transforms"].FrequencyMasking = TrainingOnlyMasking
    mods["torchaudio.transforms"].TimeMasking = TrainingOnlyMasking
    mods["torchaudio.compliance.kaldi"].get_mel_banks = kaldi_mel_banks_loop
    mods["torchaudio"].transforms = mods["torchaudio.transforms"]
    mods["torchaudio"].compliance = mods["torchaudio.compliance"]
    mods["torchaudio.compliance"].kaldi = mods["torchaudio.compliance.kaldi"]
    return mods


@contextmanager
def shimmed():
    """Within: the stand-ins are importable (real modules of those names are set aside)."""
    mods = stand_ins()
    saved = {name: sys.modules.get(name) for name in mods}
    sys.modules.update(mods)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


def import_hear21passt():
    """hear21passt's ``models.passt`` and ``models.preprocess`` modules, imported with the shim.

    The stand-ins stay referenced by the imported modules (``preprocess.torchaudio``) and leave
    ``sys.modules`` afterwards.
    """
    with shimmed():
        from hear21passt.models import passt, preprocess
    return passt, preprocess
