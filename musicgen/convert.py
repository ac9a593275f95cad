"""Hugging Face MusicGen checkpoints in this project's LM format (safetensors + JSON config).

Two kinds of source, told apart by the config's ``model_type``:

- ``musicgen``: a ``MusicgenForConditionalGeneration`` (e.g. ``facebook/musicgen-small``). Its decoder
  becomes the LM and its ``enc_to_dec_proj`` the LM's ``text_proj`` (``text_dim`` = the text
  encoder's width). A checkpoint whose text encoder is as wide as the decoder has no projection in
  Hugging Face: ``text_proj`` becomes the identity.
- ``musicgen_decoder``: a ``MusicgenForCausalLM``, the decoder alone. Its cross-attention reads
  states already in the decoder's width, so ``text_proj`` becomes the identity and ``text_dim`` is
  ``d_model``: the converted LM takes the same encoder states as the Hugging Face model. To condition
  it on a text encoder of another width, a projection has to be trained (or taken from the
  ``MusicgenForConditionalGeneration`` the decoder came from).

The architectures match one to one (embeddings per codebook, ``[cos, sin]`` sinusoidal positions,
pre-norm blocks without biases in attention and feed-forward, exact GELU, final LayerNorm, one head
per codebook); the converted LM gives the same logits as Hugging Face's on the same inputs. Stereo
checkpoints (``audio_channels: 2``, codebooks interleaved left/right) become a ``delay`` pattern with
delays ``k // 2``. Anything the LM cannot reproduce raises ``UnsupportedCheckpoint``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from musicgen.hf_parts import CONDITIONAL  # MusicgenForConditionalGeneration's model_type
from musicgen.lm import LM, LMConfig

log = logging.getLogger(__name__)

CAUSAL = "musicgen_decoder"  # MusicgenForCausalLM

# Hugging Face ``MusicgenForCausalLM`` parameter names -> this project's ``LM`` names.
KEY_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^model\.decoder\.embed_tokens\.(\d+)\.weight$"), r"embed.\1.weight"),
    (
        re.compile(r"^model\.decoder\.layers\.(\d+)\.encoder_attn\.(.+)$"),
        r"layers.\1.cross_attn.\2",
    ),
    (
        re.compile(r"^model\.decoder\.layers\.(\d+)\.encoder_attn_layer_norm\.(.+)$"),
        r"layers.\1.cross_attn_layer_norm.\2",
    ),
    (re.compile(r"^model\.decoder\.layers\.(\d+)\.(.+)$"), r"layers.\1.\2"),
    (re.compile(r"^model\.decoder\.layer_norm\.(weight|bias)$"), r"norm.\1"),
    (re.compile(r"^lm_heads\.(\d+)\.weight$"), r"heads.\1.weight"),
]
IGNORED_KEYS = re.compile(r"^model\.decoder\.embed_positions\.")  # computed, not learned


class UnsupportedCheckpoint(ValueError):
    """The checkpoint uses a feature that this project's LM does not reproduce."""


@dataclass
class HFDecoder:
    """What a Hugging Face MusicGen checkpoint holds for the LM.

    Attributes:
        config: the ``MusicgenDecoderConfig``.
        weights: the ``MusicgenForCausalLM`` state dict.
        text_proj: ``enc_to_dec_proj`` weight (D, text_dim) and bias (D,), or None for the identity.
        text_dim: width of the states the decoder is conditioned on.
    """

    config: object
    weights: dict[str, torch.Tensor]
    text_proj: tuple[torch.Tensor, torch.Tensor] | None
    text_dim: int


def load_hf_decoder(src: str) -> HFDecoder:
    """Loads the decoder and the text projection of a Hugging Face MusicGen checkpoint.

    Args:
        src: a ``save_pretrained`` directory or a hub id.
    """
    from transformers import AutoConfig, MusicgenForCausalLM, MusicgenForConditionalGeneration

    config = AutoConfig.from_pretrained(src)
    if config.model_type == CAUSAL:
        model = MusicgenForCausalLM.from_pretrained(src, dtype=torch.float32)
        return HFDecoder(config, model.state_dict(), None, config.hidden_size)
    if config.model_type != CONDITIONAL:
        raise UnsupportedCheckpoint(
            f"{src} is a '{config.model_type}' checkpoint; only '{CONDITIONAL}' "
            f"(MusicgenForConditionalGeneration) and '{CAUSAL}' (MusicgenForCausalLM) convert"
        )
    model = MusicgenForConditionalGeneration.from_pretrained(src, dtype=torch.float32)
    return conditional_decoder(model, src)


def conditional_decoder(model, src: str) -> HFDecoder:
    """The decoder and text projection of a loaded ``MusicgenForConditionalGeneration``.

    Args:
        model: the composite model.
        src: where it came from (for error messages).
    """
    decoder_cfg = model.config.decoder
    proj = getattr(model, "enc_to_dec_proj", None)
    if proj is not None:
        return HFDecoder(
            decoder_cfg,
            model.decoder.state_dict(),
            (proj.weight.detach(), proj.bias.detach()),
            proj.in_features,
        )
    text_dim = model.config.text_encoder.hidden_size
    if text_dim != decoder_cfg.hidden_size:
        raise UnsupportedCheckpoint(
            f"{src} has no enc_to_dec_proj but its text encoder is {text_dim} wide and its decoder "
            f"{decoder_cfg.hidden_size}"
        )
    return HFDecoder(decoder_cfg, model.decoder.state_dict(), None, text_dim)


def check_supported(cfg) -> None:
    """Raises ``UnsupportedCheckpoint`` for a decoder config the LM cannot reproduce exactly.

    Args:
        cfg: a ``MusicgenDecoderConfig``.
    """
    problems = []
    if cfg.activation_function != "gelu":
        problems.append(f"activation '{cfg.activation_function}' (the LM uses exact GELU)")
    if cfg.scale_embedding:
        problems.append("scale_embedding (the LM does not scale embeddings by sqrt(d_model))")
    if cfg.hidden_size % 2:
        problems.append(f"odd hidden_size {cfg.hidden_size} (sinusoidal positions need it even)")
    if cfg.audio_channels not in (1, 2) or cfg.num_codebooks % cfg.audio_channels:
        problems.append(f"{cfg.num_codebooks} codebooks over {cfg.audio_channels} channels")
    for name in ("bos_token_id", "pad_token_id", "decoder_start_token_id"):
        value = getattr(cfg, name, None)
        if value is not None and value != cfg.vocab_size:
            problems.append(
                f"{name} {value} (the LM's start/pad token is vocab_size, {cfg.vocab_size})"
            )
    if problems:
        raise UnsupportedCheckpoint("unsupported MusicGen decoder: " + "; ".join(problems))
    ignored = {
        "layerdrop": cfg.layerdrop,
        "attention_dropout": cfg.attention_dropout,
        "activation_dropout": cfg.activation_dropout,
    }
    for name, value in ignored.items():
        if value:
            log.warning(
                "%s=%s is a training-time setting the LM does not have; ignored", name, value
            )


def lm_config_from_hf(cfg, text_dim: int) -> LMConfig:
    """This project's LM config for a Hugging Face ``MusicgenDecoderConfig``.

    ``max_position_embeddings`` needs no counterpart: both models compute sinusoidal positions for
    any length. Stereo checkpoints delay both channels' codebook k by k // 2.
    """
    check_supported(cfg)
    return LMConfig(
        n_codebooks=cfg.num_codebooks,
        card=cfg.vocab_size,
        d_model=cfg.hidden_size,
        n_heads=cfg.num_attention_heads,
        n_layers=cfg.num_hidden_layers,
        ffn_dim=cfg.ffn_dim,
        text_dim=text_dim,
        dropout=float(cfg.dropout),
        pattern="delay",
        delays=[k // cfg.audio_channels for k in range(cfg.num_codebooks)],
    )


def rename_key(key: str) -> str | None:
    """This project's name for a ``MusicgenForCausalLM`` parameter; None for computed buffers."""
    if IGNORED_KEYS.match(key):
        return None
    for pattern, replacement in KEY_RULES:
        if pattern.match(key):
            return pattern.sub(replacement, key)
    raise UnsupportedCheckpoint(f"unexpected parameter '{key}' in the MusicGen decoder")


def convert_weights(hf: HFDecoder, cfg: LMConfig) -> dict[str, torch.Tensor]:
    """The LM's state dict from a Hugging Face decoder; checked against ``LM(cfg)``."""
    weights = {}
    for key, value in hf.weights.items():
        name = rename_key(key)
        if name is not None:
            weights[name] = value.detach().to(torch.float32).contiguous()
    if hf.text_proj is None:
        weights["text_proj.weight"] = torch.eye(cfg.d_model, cfg.text_dim)
        weights["text_proj.bias"] = torch.zeros(cfg.d_model)
    else:
        weights["text_proj.weight"], weights["text_proj.bias"] = (
            t.to(torch.float32).contiguous() for t in hf.text_proj
        )
    with torch.device("meta"):
        expected = LM(cfg).state_dict()
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    wrong = [k for k in expected if k in weights and weights[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise UnsupportedCheckpoint(
            f"converted weights do not fit the LM: missing {missing}, unexpected {unexpected}, "
            f"wrong shapes {wrong}"
        )
    return weights


def convert_hf(src: str, dst: Path) -> LMConfig:
    """Converts a Hugging Face MusicGen checkpoint into an LM directory that ``load_lm`` reads.

    Args:
        src: a ``MusicgenForConditionalGeneration`` or ``MusicgenForCausalLM`` ``save_pretrained``
            directory, or a hub id such as ``facebook/musicgen-small``.
        dst: the output directory (``model.safetensors`` + ``config.json``).

    Returns:
        the converted LM's config.
    """
    from musicgen.lm import save_lm

    hf = load_hf_decoder(src)
    cfg = lm_config_from_hf(hf.config, hf.text_dim)
    save_lm(Path(dst), convert_weights(hf, cfg), cfg)
    log.info("converted %s to %s: %s", src, dst, cfg)
    return cfg
