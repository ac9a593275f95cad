"""The audio codec: HF ``EncodecModel`` wrappers, a tiny offline codec and its k-means fit.

Two worlds share one loading path, ``EncodecModel.from_pretrained(name_or_dir)``:

* the real run loads the pretrained ``facebook/encodec_32khz`` (32 kHz mono, hop 640 = 50 frames/s,
  4 codebooks x 2048 at 2.2 kbps);
* the offline default builds a small ``EncodecModel`` with the same framing but random weights
  (:func:`build_tiny_codec`), fits its codebooks by residual k-means on training audio
  (:func:`fit_codebooks`) and saves it (:func:`save_codec`).

A freshly built ``EncodecModel`` has all-zero codebooks, so every frame maps to token 0; the fit is
what makes the tokens of the tiny codec meaningful. The encoder and decoder weights stay random.

The offline default's codec (``codec.source: tiny``) is such a container with a
:class:`musicgen.codec_synth.SpectralPart` attached (:func:`build_spectral_codec`,
:func:`fit_spectral_codec`): a pitch-resolving band-spectrum analysis, fixed-point residual k-means
codebooks (bit-identical on every CPU) and a fitted decoder with Griffin-Lim synthesis, so its tokens
decode to music. :func:`encode`, :func:`decode`, :func:`save_codec` and :func:`load_codec` dispatch
on it (the part is saved beside the container as ``spectral.json`` + ``spectral.safetensors``);
every other codec (``facebook/encodec_32khz``, a MusicGen's) goes through HF's encoder and decoder.

Shapes: audio is ``(B, S)`` float32 mono at the model's rate; codes are ``(B, K, T)`` int64 with
``T = ceil(S / hop)``; latents are ``(B, D, T)`` with ``D = config.codebook_dim``.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import EncodecConfig, EncodecModel
from transformers.models.encodec.modeling_encodec import (
    EncodecConv1d,
    EncodecLSTM,
    EncodecResnetBlock,
)

from musicgen import codec_synth as S
from musicgen.device import autocast

# Rows of the (frames x codebook) distance matrix computed at once in k-means: 1024 x 2048 floats
# is 8 MB (cache-friendly; 2048+ rows measured ~1.5x slower on 2 cores).
_CHUNK_ROWS = 1024


@dataclass
class TinyCodecConfig:
    """Sizes of the small random-weight codec used offline.

    The framing matches ``facebook/encodec_32khz``: 32 kHz, hop ``prod(upsampling_ratios) = 640``
    samples (50 frames/s), ``n_codebooks`` codebooks of ``codebook_size`` entries.

    Attributes:
        sample_rate: audio rate in Hz.
        upsampling_ratios: decoder upsampling ratios; the encoder downsamples in reverse order.
        n_codebooks: number of residual codebooks.
        codebook_size: entries per codebook (a power of 2).
        num_filters: channels of the first convolution (doubles at each downsampling); even:
            ``num_filters / 2`` band filters and their negatives.
        hidden_size: latent (and codebook) dimension D.
        num_residual_layers: residual blocks per resolution.
        seed: seed of the random weights.
    """

    sample_rate: int = 32000
    upsampling_ratios: tuple[int, ...] = (8, 5, 4, 4)  # hop 640 -> 50 frames/s
    n_codebooks: int = 4
    codebook_size: int = 2048
    num_filters: int = 8
    hidden_size: int = 32
    num_residual_layers: int = 1
    seed: int = 0


def _bits(codebook_size: int) -> float:
    """log2 of the codebook size (bits per code)."""
    return math.log2(codebook_size)


def _bandwidth(n_codebooks: int, codebook_size: int, frame_rate: int) -> float:
    """Bandwidth in kbps of ``n_codebooks`` codebooks at ``frame_rate`` frames/s.

    2.2 for 4 codebooks x 2048 entries x 50 frames/s.
    """
    return n_codebooks * _bits(codebook_size) * frame_rate / 1000


def build_tiny_codec(cfg: TinyCodecConfig) -> EncodecModel:
    """Builds a small ``EncodecModel`` with seeded random weights and all-zero codebooks.

    The global torch RNG state is left untouched.

    Args:
        cfg: the sizes.

    Returns:
        The model in eval mode, its encoder a band-envelope analyser (:func:`_reinit_encoder`).
        Its codebooks are still all zero (every frame encodes to token 0): fit them with
        :func:`fit_codebooks`.

    Raises:
        ValueError: if ``cfg.num_filters`` is odd, or the sizes give a different number of
            quantizers than ``cfg.n_codebooks``.
    """
    if cfg.num_filters < 2 or cfg.num_filters % 2:
        raise ValueError(
            f"num_filters must be even (band filters and their negatives), got {cfg.num_filters}"
        )
    hop = int(np.prod(cfg.upsampling_ratios))
    frame_rate = math.ceil(cfg.sample_rate / hop)
    config = EncodecConfig(
        sampling_rate=cfg.sample_rate,
        audio_channels=1,
        normalize=False,
        chunk_length_s=None,
        overlap=None,
        upsampling_ratios=list(cfg.upsampling_ratios),
        num_filters=cfg.num_filters,
        hidden_size=cfg.hidden_size,
        num_residual_layers=cfg.num_residual_layers,
        codebook_size=cfg.codebook_size,
        target_bandwidths=[_bandwidth(cfg.n_codebooks, cfg.codebook_size, frame_rate)],
        use_causal_conv=False,  # as facebook/encodec_32khz
    )
    if config.num_quantizers != cfg.n_codebooks:
        raise ValueError(
            f"codec sizes give {config.num_quantizers} quantizers, wanted {cfg.n_codebooks} "
            f"(target_bandwidths={config.target_bandwidths}, frame_rate={config.frame_rate})"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = EncodecModel(config)
    _reinit_encoder(model, torch.Generator().manual_seed(cfg.seed))
    return model.eval()


# Gain of the first convolution: with audio at ~0.1-0.5 full scale the filter outputs reach a few
# units, where ELU(g x) + ELU(-g x) ~ g |x| - 1 (a rectifier) rather than (g x)^2 / 2.
_ENVELOPE_GAIN = 10.0


def _set_conv_weight(conv: torch.nn.Conv1d, weight: torch.Tensor) -> None:
    """Sets a (weight-normed) conv's weight and zeroes its bias.

    Weight norm stores ``g`` (per output channel norm) and ``v`` (direction); an all-zero output
    channel would make ``v / |v|`` NaN, so its ``v`` is set to ones and its ``g`` to 0.
    """
    with torch.no_grad():
        plist = getattr(getattr(conv, "parametrizations", None), "weight", None)
        if plist is None:
            conv.weight.copy_(weight)
        else:
            norms = weight.flatten(1).norm(dim=1).reshape(-1, *([1] * (weight.dim() - 1)))
            plist.original0.copy_(norms)
            plist.original1.copy_(torch.where(norms > 0, weight, torch.ones_like(weight)))
        if conv.bias is not None:
            conv.bias.zero_()


def _band_filters(n_bands: int, kernel_size: int, sample_rate: int) -> torch.Tensor:
    """Hann-windowed cosines centred on ``n_bands`` equal bands of [0, sr/2]; ``(n_bands, k)``.

    Each filter has unit L1 norm. With the default kernel of 7 taps the bands overlap widely: the
    filters separate dull from bright sounds, not pitches.
    """
    n = torch.arange(kernel_size) - (kernel_size - 1) / 2
    window = torch.hann_window(kernel_size + 2, periodic=False)[1:-1]
    centres = (torch.arange(n_bands) + 0.5) / n_bands * sample_rate / 2
    filters = window * torch.cos(2 * math.pi * centres[:, None] * n / sample_rate)
    return filters / filters.abs().sum(dim=1, keepdim=True)


def _reinit_encoder(model: EncodecModel, gen: torch.Generator) -> None:
    """Turns the random encoder into a smoothed band-envelope analyser.

    Why not random weights: with HF's init the weight-normed convs get PyTorch's default init plus
    random biases (``_init_weights`` writes to a throw-away copy), the audio-dependent part of the
    latent shrinks below float32 resolution and the codes flip with the batch size. Kaiming-normal
    weights fix that, but a random conv stack sees the waveform's phase: two frames of the same
    held chord get unrelated latents, ~99 % of frames change code, the residual codebooks are noise,
    and an LM cannot learn more than the token frequencies (measured: validation CE above the
    training-token entropy).

    So the encoder is given weights that make it phase-invariant, within HF's architecture:

    1. the first conv is a bank of ``F / 2`` band filters (:func:`_band_filters`) and their
       negatives, times :data:`_ENVELOPE_GAIN`;
    2. the first residual block sums ``ELU(+y) + ELU(-y)`` per band, an even function of ``y`` (a
       rectifier), which is >= 0, so every later ELU is the identity;
    3. every strided conv averages each channel over its window (a box low-pass), the later
       residual blocks are identities, the LSTM is zeroed (its skip connection passes through);
    4. the last conv is a seeded random projection of the ``F`` envelopes (two copies of each of
       ``F / 2`` bands) to the ``D`` latent dimensions.

    The latent of a frame is thus a random view of the smoothed band envelopes around it: the same
    for a held note whatever its phase, 0 for silence, sign-invariant. The decoder keeps HF's init.
    """
    layers = model.encoder.layers
    first, last = layers[0].conv, layers[-1].conv
    n_bands = first.out_channels // 2
    bands = _band_filters(n_bands, first.kernel_size[0], model.config.sampling_rate)
    signs = torch.tensor([1.0, -1.0]).repeat(n_bands)  # (F,) +, -, +, -, ...
    _set_conv_weight(
        first, (_ENVELOPE_GAIN * bands.repeat_interleave(2, 0) * signs[:, None])[:, None]
    )
    rectified = False
    for layer in layers[1:-1]:
        if isinstance(layer, EncodecResnetBlock):
            conv1, conv2 = layer.block[1].conv, layer.block[3].conv
            dim, hidden, k = conv1.in_channels, conv1.out_channels, conv1.kernel_size[0]
            if not rectified:  # out_j = ELU(+y_j) + ELU(-y_j), written back to channels 2j, 2j+1
                pair = torch.zeros(hidden, dim, k)
                pair[torch.arange(hidden), 2 * torch.arange(hidden), k // 2] = 1.0
                pair[torch.arange(hidden), 2 * torch.arange(hidden) + 1, k // 2] = 1.0
                _set_conv_weight(conv1, pair)
                _set_conv_weight(conv2, pair[:, :, k // 2 : k // 2 + 1].transpose(0, 1).clone())
                _set_conv_weight(layer.shortcut.conv, torch.zeros(dim, dim, 1))
                rectified = True
            else:  # identity: the block adds 0, the shortcut passes through
                _set_conv_weight(conv1, torch.randn(hidden, dim, k, generator=gen))
                _set_conv_weight(conv2, torch.zeros(dim, hidden, 1))
                _set_conv_weight(layer.shortcut.conv, torch.eye(dim)[:, :, None].clone())
        elif isinstance(layer, EncodecConv1d):  # strided: box average of channel (o mod C_in)
            conv = layer.conv
            c_in, c_out, k = conv.in_channels, conv.out_channels, conv.kernel_size[0]
            box = torch.zeros(c_out, c_in, k)
            box[torch.arange(c_out), torch.arange(c_out) % c_in] = 1.0 / k
            _set_conv_weight(conv, box)
        elif isinstance(layer, EncodecLSTM):
            with torch.no_grad():
                for param in layer.lstm.parameters():
                    param.zero_()
    fan_in = last.in_channels * last.kernel_size[0]
    shape = (last.out_channels, last.in_channels, last.kernel_size[0])
    _set_conv_weight(last, torch.randn(shape, generator=gen) / math.sqrt(fan_in))


def _batch_invariant(fn, batch: torch.Tensor) -> torch.Tensor:
    """Calls ``fn(batch)`` so that each row's result does not depend on the batch it is in.

    On CPU the encoder's convolutions take a different kernel for batch size 1 than for >= 2
    (measured: bit-identical latents for any batch >= 2, not for 1), and the fine residual
    codebooks flip for a few % of frames. A lone clip is therefore run duplicated.

    Args:
        fn: maps ``(b, ...)`` to ``(b, ...)``.
        batch: ``(b, ...)`` input.

    Returns:
        ``fn(batch)``.
    """
    if batch.shape[0] != 1:
        return fn(batch)
    return fn(batch.expand(2, *batch.shape[1:]).contiguous())[:1]


def _check_supported(model: EncodecModel) -> None:
    """Raises ValueError for codec variants not handled here (chunked, normalised, stereo)."""
    c = model.config
    if c.chunk_length_s is not None:
        raise ValueError("chunked EnCodec models (chunk_length_s set, e.g. 48 kHz) are unsupported")
    if c.normalize:
        raise ValueError("EnCodec models with normalize=True (per-clip audio_scales) unsupported")
    if c.audio_channels != 1:
        raise ValueError(f"only mono EnCodec models are supported, got {c.audio_channels} channels")


def _as_audio(audio: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Checks and converts ``(B, S)`` audio to a float32 CPU tensor."""
    x = torch.as_tensor(np.asarray(audio) if not isinstance(audio, torch.Tensor) else audio)
    if x.ndim != 2:
        raise ValueError(f"audio must be (batch, samples), got shape {tuple(x.shape)}")
    if x.shape[1] == 0:
        raise ValueError("audio has zero samples")
    return x.to(dtype=torch.float32, device="cpu")


def _bandwidth_for(model: EncodecModel, n_codebooks: int) -> float:
    """The supported bandwidth to encode with so that at least ``n_codebooks`` codes come out.

    The ideal bandwidth ``n_codebooks * log2(card) * frame_rate / 1000`` is used when it is in
    ``config.target_bandwidths`` (HF rejects any other); otherwise the smallest supported bandwidth
    that gives enough quantizers (residual codes are sequential, so the first ``n_codebooks`` codes
    are the same).
    """
    c = model.config
    q = model.quantizer
    if not 1 <= n_codebooks <= q.num_quantizers:
        raise ValueError(f"n_codebooks must be in 1..{q.num_quantizers}, got {n_codebooks}")
    ideal = _bandwidth(n_codebooks, c.codebook_size, c.frame_rate)
    supported = sorted(float(b) for b in c.target_bandwidths)
    for bw in supported:
        enough = q.get_num_quantizers_for_bandwidth(bw) >= n_codebooks
        if math.isclose(bw, ideal, rel_tol=1e-9) and enough:
            return bw
    for bw in supported:
        if min(q.get_num_quantizers_for_bandwidth(bw), q.num_quantizers) >= n_codebooks:
            return bw
    raise ValueError(f"no bandwidth in {supported} gives {n_codebooks} codebooks")


def n_frames(n_samples: int, hop: int = 640) -> int:
    """Number of codec frames for ``n_samples`` samples: ``ceil(n_samples / hop)``."""
    return -(-n_samples // hop)


def _device_of(model: torch.nn.Module) -> torch.device:
    """The device the model's parameters are on."""
    return next(model.parameters()).device


def encode(
    model: EncodecModel,
    audio: torch.Tensor | np.ndarray,
    n_codebooks: int = 4,
    batch_size: int = 8,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Encodes audio to codec tokens, on the model's device.

    The encoder runs under autocast to ``dtype`` (none: float32); the quantizer's nearest-codeword
    search always runs in float32 on the encoder's latents, as HF's ``encode`` computes it
    (``quantizer.encode(encoder(x))``).

    Args:
        model: an ``EncodecModel`` (mono, not chunked, ``normalize=False``), on any device.
        audio: ``(B, S)`` float32 mono audio at ``model.config.sampling_rate``.
        n_codebooks: K, the number of residual codebooks to keep.
        batch_size: clips per encoder call (moved to the model's device one batch at a time). The
            codes do not depend on it (a lone clip is run duplicated, see
            :func:`_batch_invariant`). On CPU small batches of long clips are faster (activations
            stay in cache): for 10-s clips 2 is ~2x faster than 16; on a GPU use large batches.
        dtype: autocast dtype of the encoder (``torch.float16`` / ``torch.bfloat16``), or None.

    Returns:
        ``(B, K, T)`` int64 codes on the CPU, with ``T = ceil(S / hop)``.

    A codec with a :class:`~musicgen.codec_synth.SpectralPart` (the tiny one) analyses and quantises
    in float64 DSP and fixed point on the CPU (``dtype`` and ``batch_size`` do not apply): its
    codes are the same bytes on every CPU.
    """
    _check_supported(model)
    x = _as_audio(audio)
    bw = _bandwidth_for(model, n_codebooks)
    part = spectral_part(model)
    if part is not None:  # the tiny codec: fixed-point analysis and codes, on the CPU
        books = fixed_codebooks(model, part)[:n_codebooks]
        return S.quantise(S.analyse(part.config, x.numpy()), books)
    device = _device_of(model)

    def codes_of(batch: torch.Tensor) -> torch.Tensor:  # (b, 1, S) -> (K', b, T)
        with autocast(device, dtype):
            latents = model.encoder(batch)  # (b, D, T)
        return model.quantizer.encode(latents.float(), bw)

    out = []
    with torch.inference_mode():
        for start in range(0, x.shape[0], batch_size):
            batch = x[start : start + batch_size, None, :].to(device)
            codes = _batch_invariant(lambda b: codes_of(b).transpose(0, 1), batch)  # (b, K', T)
            out.append(codes[:, :n_codebooks].to(torch.int64).cpu())
    if not out:
        t = n_frames(x.shape[1], model.config.hop_length)
        return torch.zeros(0, n_codebooks, t, dtype=torch.int64)
    return torch.cat(out).clone()


def decode(
    model: EncodecModel,
    codes: torch.Tensor,
    *,
    batch_size: int = 8,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Decodes codec tokens to audio, on the model's device.

    Args:
        model: an ``EncodecModel`` (mono, not chunked, ``normalize=False``), on any device.
        codes: ``(B, K, T)`` integer codes, on any device; K may be fewer than the model's
            quantizers.
        batch_size: clips per decoder call.
        dtype: autocast dtype of the decoder (``torch.float16`` / ``torch.bfloat16``), or None.

    Returns:
        ``(B, T * hop)`` float32 audio on the CPU.

    A codec with a :class:`~musicgen.codec_synth.SpectralPart` (the tiny one) sums the codewords
    and synthesises with its fitted decoder and Griffin-Lim in float32 on the model's device
    (``dtype`` does not apply).
    """
    _check_supported(model)
    codes = torch.as_tensor(codes).to(dtype=torch.int64)
    if codes.ndim != 3:
        raise ValueError(f"codes must be (batch, codebooks, frames), got {tuple(codes.shape)}")
    device = _device_of(model)
    part = spectral_part(model)
    if part is not None:
        return _decode_spectral(model, part, codes, batch_size, device)
    out = []
    with torch.inference_mode(), autocast(device, dtype):
        for start in range(0, codes.shape[0], batch_size):
            batch = codes[None, start : start + batch_size].to(device)  # (chunks=1, b, K, T)
            audio = model.decode(batch, audio_scales=[None], return_dict=True).audio_values
            out.append(audio[:, 0].float().cpu())
    if not out:
        return torch.zeros(0, codes.shape[2] * model.config.hop_length)
    return torch.cat(out).clone()


def save_codec(model: EncodecModel, out_dir: Path) -> None:
    """Saves the codec with ``save_pretrained`` (``config.json`` + ``model.safetensors``).

    The tiny codec's spectral part goes beside them (``spectral.json`` + ``spectral.safetensors``).

    Args:
        model: the codec.
        out_dir: the directory (created if missing).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    if not (out_dir / "model.safetensors").is_file():
        raise RuntimeError(f"save_pretrained did not write {out_dir / 'model.safetensors'}")
    part = spectral_part(model)
    if part is not None:
        part.save(out_dir)


def load_codec(name_or_dir: str) -> EncodecModel:
    """Loads a codec with ``EncodecModel.from_pretrained`` in float32, eval mode.

    A ``MusicgenForConditionalGeneration`` (``config.json`` with ``model_type: musicgen``) gives
    its ``audio_encoder``, read alone from the checkpoint (:func:`musicgen.hf_parts.load_part`).

    Args:
        name_or_dir: a local directory written by :func:`save_codec`, a hub id such as
            ``facebook/encodec_32khz`` (needs the hub cache or network), or a MusicGen's directory
            or hub id (``facebook/musicgen-small``).

    Returns:
        The model; a directory with ``spectral.json`` (the tiny codec) gets its spectral part.

    Raises:
        FileNotFoundError: if the directory or hub model cannot be found.
    """
    path = Path(name_or_dir)
    looks_local = path.is_absolute() or str(name_or_dir).startswith(".") or path.exists()
    if looks_local and not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"codec directory {name_or_dir!r} has no config.json; build it with the codec stage "
            "(build_tiny_codec + fit_codebooks + save_codec) or give a hub id"
        )
    from musicgen.hf_parts import load_part, musicgen_config

    try:
        musicgen = musicgen_config(str(name_or_dir))
        if musicgen is not None:
            return load_part(str(name_or_dir), "audio_encoder", EncodecModel, musicgen)
        model = EncodecModel.from_pretrained(str(name_or_dir), dtype=torch.float32)
    except OSError as err:
        raise FileNotFoundError(
            f"cannot load codec {name_or_dir!r}: not a local directory with config.json and not in "
            f"the Hugging Face cache (offline?). Original error: {err}"
        ) from err
    if looks_local:
        part = S.SpectralPart.load(path)
        if part is not None:
            attach_spectral_part(model, part)
    return model.eval()


def codebook_usage(codes: np.ndarray, codebook_size: int) -> dict:
    """Per-codebook usage statistics of a code array.

    Args:
        codes: ``(N, K, T)`` integer codes.
        codebook_size: entries per codebook.

    Returns:
        ``{"codebook_<i>_distinct": int, "codebook_<i>_entropy_bits": float}`` for each i, plus
        ``"distinct_mean"``, ``"entropy_bits_mean"`` (means over codebooks) and ``"frames"``
        (N * T).
    """
    codes = np.asarray(codes)
    if codes.ndim != 3:
        raise ValueError(f"codes must be (N, K, T), got shape {codes.shape}")
    n, k, t = codes.shape
    stats: dict = {}
    distinct, entropy = [], []
    for i in range(k):
        counts = np.bincount(codes[:, i, :].reshape(-1).astype(np.int64), minlength=codebook_size)
        total = counts.sum()
        p = counts[counts > 0] / total if total else np.zeros(0)
        h = float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0 turns -0.0 into 0.0
        distinct.append(int((counts > 0).sum()))
        entropy.append(h)
        stats[f"codebook_{i}_distinct"] = distinct[-1]
        stats[f"codebook_{i}_entropy_bits"] = h
    stats["distinct_mean"] = float(np.mean(distinct)) if k else 0.0
    stats["entropy_bits_mean"] = float(np.mean(entropy)) if k else 0.0
    stats["frames"] = int(n * t)
    return stats


def _nearest(x: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of each row, chunked.

    Args:
        x: ``(n, D)`` float32 points.
        centroids: ``(k, D)`` float32 centroids.

    Returns:
        ``(n,)`` int64 indices and ``(n,)`` float32 squared distances (clamped at 0).
    """
    c_t = centroids.t().contiguous()
    c_sq = centroids.pow(2).sum(1)
    idx = torch.empty(x.shape[0], dtype=torch.int64)
    dist = torch.empty(x.shape[0], dtype=torch.float32)
    for start in range(0, x.shape[0], _CHUNK_ROWS):
        xs = x[start : start + _CHUNK_ROWS]
        d = torch.addmm(c_sq, xs, c_t, beta=1.0, alpha=-2.0)  # ||c||^2 - 2 x.c
        best, arg = d.min(dim=1)
        idx[start : start + xs.shape[0]] = arg
        dist[start : start + xs.shape[0]] = (best + xs.pow(2).sum(1)).clamp_min(0.0)
    return idx, dist


def _reseed_empty(
    new: torch.Tensor,
    filled: torch.Tensor,
    x: torch.Tensor,
    dist: torch.Tensor,
    log_prefix: str | None,
    iteration: str,
) -> torch.Tensor:
    """One k-means iteration's end: each empty cluster of ``new`` (``(k, D)``, ``filled`` False)
    takes one of the points farthest from their centroid (``dist``, largest first, ties by index);
    with ``log_prefix``, a progress line to stderr. Returns ``new``."""
    empty = torch.nonzero(~filled).flatten()
    if empty.numel():
        far = torch.sort(dist, descending=True, stable=True).indices[: empty.numel()]
        new[empty[: far.numel()]] = x[far]
    if log_prefix is not None:
        print(
            f"{log_prefix} iter {iteration}: mse {dist.double().mean().item():.4g}, "
            f"used {int(filled.sum())}/{len(new)}, re-seeded {empty.numel()}",
            file=sys.stderr,
            flush=True,
        )
    return new


def _init_centroids(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """Picks k distinct random rows of ``x`` (repeats only if there are fewer than k distinct rows).

    Args:
        x: ``(n, D)`` points.
        k: number of centroids.
        gen: seeded generator.

    Returns:
        ``(k, D)`` float32 centroids.
    """
    perm = torch.randperm(x.shape[0], generator=gen)
    _, inverse = torch.unique(x, dim=0, return_inverse=True)
    # position in `perm` of each point; the first occurrence of each distinct row in perm order
    pos = torch.empty_like(perm)
    pos[perm] = torch.arange(perm.numel())
    first = torch.full((int(inverse.max()) + 1,), perm.numel(), dtype=torch.int64)
    first = first.scatter_reduce(0, inverse, pos, reduce="amin")
    chosen = perm[first.sort().values]  # distinct rows, in random order
    missing = k - chosen.numel()
    if missing > 0:  # fewer distinct rows than k: pad with repeats (they stay unused)
        chosen = torch.cat([chosen, perm.repeat(-(-missing // perm.numel()))[:missing]])
    return x[chosen[:k]].clone()


def _kmeans(
    x: torch.Tensor, k: int, n_iter: int, gen: torch.Generator, log_prefix: str | None = None
) -> torch.Tensor:
    """Lloyd's k-means with deterministic re-seeding of empty clusters.

    Each iteration assigns every point to its nearest centroid, moves each non-empty centroid to
    the mean of its points (summed in float64), and re-seeds the empty ones with the points farthest
    from their centroid (largest first; ties by index).

    Args:
        x: ``(n, D)`` float32 points.
        k: number of clusters.
        n_iter: Lloyd iterations.
        gen: seeded generator (used for the initialisation).
        log_prefix: if given, one progress line per iteration goes to stderr.

    Returns:
        ``(k, D)`` float32 centroids.
    """
    centroids = _init_centroids(x, k, gen)
    x64 = x.double()
    for it in range(n_iter):
        assign, dist = _nearest(x, centroids)
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros(k, x.shape[1], dtype=torch.float64).index_add_(0, assign, x64)
        filled = counts > 0
        new = centroids.clone()
        new[filled] = (sums[filled] / counts[filled, None]).float()
        centroids = _reseed_empty(new, filled, x, dist, log_prefix, f"{it + 1}/{n_iter}")
    return centroids


def _latents(model: EncodecModel, audio: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Encoder output (before quantization), as HF's encode computes it.

    Args:
        model: the codec (not chunked, ``normalize=False``).
        audio: ``(N, S)`` float32.
        batch_size: clips per encoder call.

    Returns:
        ``(N, D, T)`` float32 latents.
    """
    out = []
    with torch.inference_mode():
        for start in range(0, audio.shape[0], batch_size):
            out.append(_batch_invariant(model.encoder, audio[start : start + batch_size, None, :]))
    return torch.cat(out)


def _set_codebook(codebook: torch.nn.Module, centroids: torch.Tensor, counts: torch.Tensor) -> None:
    """Writes fitted centroids into an ``EncodecEuclideanCodebook``'s buffers.

    Buffers, as HF defines them (EMA state of the original EnCodec training): ``embed`` (k, D) the
    codewords, ``cluster_size`` (k,) the assignment counts, ``embed_avg`` (k, D) the sums of the
    assigned vectors (``embed * cluster_size``), ``inited`` (1,) = 1.
    """
    with torch.no_grad():
        codebook.embed.copy_(centroids)
        codebook.cluster_size.copy_(counts.to(codebook.cluster_size.dtype))
        codebook.embed_avg.copy_(centroids * counts[:, None].to(centroids.dtype))
        codebook.inited.fill_(1.0)


def fit_codebooks(
    model: EncodecModel,
    audio: np.ndarray,
    n_iter: int = 10,
    max_frames: int = 200_000,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
    codes_used: int | None = None,
) -> dict:
    """Fits the codec's codebooks by residual k-means on the encoder latents of ``audio``.

    The encoder runs without grad to get the ``(frames, D)`` latents; at most ``max_frames`` of
    them are subsampled with a ``torch.Generator`` seeded with ``seed``. Then, for each codebook in
    turn, k-means (k = codebook size, ``n_iter`` iterations, initialised from distinct random
    frames, empty clusters re-seeded from the points farthest from their centroid) runs on the
    residual, the assigned centroid is subtracted, and the centroids are written into
    ``model.quantizer.layers[i].codebook`` (``embed``, ``embed_avg``, ``cluster_size``,
    ``inited``), so that encode, decode and save/load use them. Deterministic on CPU: the same
    inputs give bit-identical codebooks.

    Args:
        model: the codec to modify in place (its encoder and decoder are unchanged).
        audio: ``(N, S)`` float32 audio at the model's rate.
        n_iter: k-means iterations per codebook.
        max_frames: cap on the number of frames used for the fit.
        seed: seed of the subsampling and initialisation.
        batch_size: clips per encoder call; the result does not depend on it. For 10-s clips on
            2 CPU cores 2 is ~2x faster than 16 in the encoder pass.
        progress: print one line per k-means iteration to stderr.
        codes_used: k of the k-means (default: the codebook size). With fewer, the remaining
            entries repeat the fitted centroids, so the encoder never picks them and any code the
            LM samples still decodes to a fitted point; tokens get coarser and easier to model
            from little data.

    Returns:
        :func:`codebook_usage` statistics of ALL frames of ``audio`` encoded with the fitted codec.
    """
    _check_supported(model)
    x = _as_audio(audio)
    latents = _latents(model, x, batch_size)  # (N, D, T)
    frames = latents.permute(0, 2, 1).reshape(-1, latents.shape[1]).contiguous()  # (N*T, D)
    gen = torch.Generator().manual_seed(seed)
    if frames.shape[0] > max_frames:
        keep = torch.randperm(frames.shape[0], generator=gen)[:max_frames].sort().values
        residual = frames[keep].clone()
    else:
        residual = frames.clone()
    layers = model.quantizer.layers
    size = model.config.codebook_size
    k = size if codes_used is None else codes_used
    if not 1 <= k <= size:
        raise ValueError(f"codes_used must be in 1..{size}, got {codes_used}")
    if residual.shape[0] < k and progress:
        print(f"fit_codebooks: only {residual.shape[0]} frames for {k} codes", file=sys.stderr)
    for i, layer in enumerate(layers):
        prefix = f"codebook {i + 1}/{len(layers)}" if progress else None
        centroids = _kmeans(residual, k, n_iter, gen, prefix)
        assign, _ = _nearest(residual, centroids)
        counts = torch.bincount(assign, minlength=size)
        padded = centroids[torch.arange(size) % k]  # entries k.. repeat entries 0..k-1
        _set_codebook(layer.codebook, padded, counts)
        residual = residual - centroids[assign]
    with torch.inference_mode():
        codes = torch.cat(
            [
                model.quantizer.encode(latents[s : s + batch_size]).transpose(0, 1)
                for s in range(0, latents.shape[0], batch_size)
            ]
        )  # (N, K, T), as HF's encode at full bandwidth
    return codebook_usage(codes.numpy(), size)


_SPECTRAL_ATTR = "spectral_part"


def spectral_part(model: EncodecModel) -> S.SpectralPart | None:
    """The tiny codec's analysis/synthesis part, or None for any other codec."""
    return getattr(model, _SPECTRAL_ATTR, None)


def attach_spectral_part(model: EncodecModel, part: S.SpectralPart) -> EncodecModel:
    """Makes ``model`` a tiny spectral codec: :func:`encode` / :func:`decode` use ``part``.

    Raises:
        ValueError: if the part's band count is not the container's latent width.
    """
    d = S.n_bands(part.config)
    if model.config.codebook_dim != d or part.weights.shape[0] != d + 1:
        raise ValueError(
            f"the spectral part has {d} bands and {part.weights.shape[0]} decoder inputs; the codec "
            f"has codebooks of width {model.config.codebook_dim}"
        )
    setattr(model, _SPECTRAL_ATTR, part)  # a plain attribute: not a parameter or buffer
    return model


def fixed_codebooks(model: EncodecModel, part: S.SpectralPart) -> list[torch.Tensor]:
    """The codebooks of a spectral codec in grid units: ``(size, D)`` int64 per quantizer.

    The quantizer's ``embed`` holds them in dB (integers / ``grid``, a power of 2: exact in float32).
    """
    grid = part.config.grid
    return [
        torch.round(layer.codebook.embed.detach().cpu().double() * grid).long()
        for layer in model.quantizer.layers
    ]


def _decode_spectral(
    model: EncodecModel,
    part: S.SpectralPart,
    codes: torch.Tensor,
    batch_size: int,
    device: torch.device,
) -> torch.Tensor:
    """:func:`decode` for a spectral codec: codewords summed, then the fitted synthesis."""
    books = fixed_codebooks(model, part)[: codes.shape[1]]
    weights = part.weights.to(device)
    out = [
        S.synthesise(part.config, weights, S.dequantise(codes[s : s + batch_size], books)).cpu()
        for s in range(0, codes.shape[0], batch_size)
    ]
    if not out:
        return torch.zeros(0, codes.shape[2] * model.config.hop_length)
    return torch.cat(out)


def build_spectral_codec(cfg: TinyCodecConfig, spectral: S.SpectralCodecConfig) -> EncodecModel:
    """The offline default's codec before its fit: a container whose latent width is the bands'.

    Args:
        cfg: the container's sizes (its ``hidden_size`` is replaced by the band count).
        spectral: the analysis and synthesis.

    Returns:
        A :func:`build_tiny_codec` model, its own encoder and decoder zeroed (unused), with an
        unfitted spectral part (zero decoder weights, zero codebooks): fit it with
        :func:`fit_spectral_codec`.
    """
    hop = int(np.prod(cfg.upsampling_ratios))
    if (spectral.sample_rate, spectral.hop) != (cfg.sample_rate, hop):
        raise ValueError(
            f"spectral part at {spectral.sample_rate} Hz hop {spectral.hop}, container at "
            f"{cfg.sample_rate} Hz hop {hop}"
        )
    d = S.n_bands(spectral)
    model = build_tiny_codec(TinyCodecConfig(**{**cfg.__dict__, "hidden_size": d}))
    _zero_encoder_and_decoder(model)
    weights = torch.zeros(d + 1, spectral.synth_n_fft // 2 + 1)
    return attach_spectral_part(model, S.SpectralPart(spectral, weights))


def _zero_encoder_and_decoder(model: EncodecModel) -> None:
    """Zeroes the container's own encoder and decoder, which the spectral part replaces.

    Their random init is not the same bytes on every CPU (weight norms and normal samples take
    ISA-dependent kernels); zeros are. A weight-normed conv gets ``g = 0``, ``v = 1`` (no NaN).
    """
    with torch.no_grad():
        for module in (model.encoder, model.decoder):
            for name, param in module.named_parameters():
                if name.endswith("parametrizations.weight.original1"):
                    param.fill_(1.0)
                else:
                    param.zero_()


def fit_spectral_codec(
    model: EncodecModel,
    audio: np.ndarray,
    n_iter: int = 10,
    max_frames: int = 200_000,
    seed: int = 0,
    progress: bool = True,
    codes_used: int | None = None,
) -> dict:
    """Fits a spectral codec's codebooks (fixed-point residual k-means) and decoder on ``audio``.

    As :func:`fit_codebooks` (the same subsampling to ``max_frames``, initialisation, re-seeding and
    ``codes_used``), on the integer features of :func:`musicgen.codec_synth.analyse`; then the
    decoder is fitted on every clip's quantised features (:func:`musicgen.codec_synth.fit_decoder`).
    The written codebooks and weights are the same bytes on every CPU.

    Args:
        model: a :func:`build_spectral_codec` model, modified in place.
        audio: ``(N, S)`` float32 training audio at the model's rate.
        n_iter: k-means iterations per codebook.
        max_frames: cap on the frames of the k-means fit.
        seed: seed of the subsampling and initialisation.
        progress: print one line per k-means iteration to stderr.
        codes_used: k of the k-means (default: the codebook size).

    Returns:
        :func:`codebook_usage` statistics of all frames of ``audio``.
    """
    part = spectral_part(model)
    if part is None:
        raise ValueError("not a spectral codec: build it with build_spectral_codec")
    x = _as_audio(audio).numpy()
    features = S.analyse(part.config, x)  # (N, T, D) int64
    frames = torch.from_numpy(features.reshape(-1, features.shape[2]))
    gen = torch.Generator().manual_seed(seed)
    if frames.shape[0] > max_frames:
        frames = frames[torch.randperm(frames.shape[0], generator=gen)[:max_frames].sort().values]
    size = model.config.codebook_size
    k = size if codes_used is None else codes_used
    if not 1 <= k <= size:
        raise ValueError(f"codes_used must be in 1..{size}, got {codes_used}")
    books = S.fit_codebooks_fixed(frames, len(model.quantizer.layers), k, n_iter, gen, progress)
    padded = [book[torch.arange(size) % k] for book in books]  # entries k.. repeat 0..k-1
    codes = S.quantise(features, padded)  # (N, K, T): ties go to the first entry
    for i, layer in enumerate(model.quantizer.layers):
        counts = torch.bincount(codes[:, i].reshape(-1), minlength=size)
        _set_codebook(layer.codebook, padded[i].float() / part.config.grid, counts)
    quantised = S.dequantise(codes, padded).numpy()
    part.weights = torch.from_numpy(S.fit_decoder(part.config, x, quantised))
    return codebook_usage(codes.numpy(), size)
