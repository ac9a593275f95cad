"""A small random ``MusicgenForConditionalGeneration`` saved as a published one is: the stand-in for
``facebook/musicgen-small`` in the tests of its parts (codec, text encoder) and of the model-card
run through DVC. Offline: the tokenizer is a word-level one built from the captions it will read.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    EncodecConfig,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForConditionalGeneration,
    T5Config,
)

from musicgen import text as T

RATE = 32000  # MusicGen's framing: 32 kHz, hop 640 = 50 frames/s, 4 codebooks
N_CODEBOOKS = 4


def build_musicgen(
    vocab_size: int, card: int = 64, text_dim: int = 24, seed: int = 0
) -> MusicgenForConditionalGeneration:
    """A random MusicGen: T5 ``text_dim`` wide, EnCodec 32 kHz with 4 x ``card`` codes, decoder 32
    wide. The codebooks are random (a fresh EnCodec's are all zero: every code would decode to the
    same frame), so generated codes decode to audio that depends on them."""
    text = T5Config(
        vocab_size=vocab_size, d_model=text_dim, d_kv=8, d_ff=32, num_layers=1, num_heads=3
    )
    audio = EncodecConfig(
        sampling_rate=RATE,
        upsampling_ratios=[8, 5, 4, 4],
        codebook_size=card,
        target_bandwidths=[2.2],  # 4 codebooks at 50 frames/s, as facebook/encodec_32khz
        num_filters=4,
        hidden_size=8,
        use_causal_conv=False,
    )
    decoder = MusicgenDecoderConfig(
        hidden_size=32,
        num_attention_heads=2,
        num_hidden_layers=2,
        ffn_dim=64,
        num_codebooks=N_CODEBOOKS,
        vocab_size=card,
        pad_token_id=card,
        bos_token_id=card,
        decoder_start_token_id=card,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = MusicgenConfig(text_encoder=text, audio_encoder=audio, decoder=decoder)
        model = MusicgenForConditionalGeneration(config).eval()
        with torch.no_grad():
            for layer in model.audio_encoder.quantizer.layers:
                layer.codebook.embed.normal_()
    return model


def save_musicgen(
    out: Path, captions: list[str], vocab_size: int = 60, max_shard_size: str | None = None
) -> Path:
    """A random MusicGen (:func:`build_musicgen`) and its tokenizer, saved in ``out`` as a
    processor saves them (tokenizer files beside ``config.json``); ``max_shard_size`` (e.g.
    ``"20KB"``) shards the weights as the large hub checkpoints are."""
    tokenizer = T.train_tokenizer(captions, vocab_size)
    model = build_musicgen(len(tokenizer))
    if max_shard_size is None:
        model.save_pretrained(out)
    else:
        model.save_pretrained(out, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(out)
    return Path(out)


@torch.no_grad()
def hf_generate(
    hf: MusicgenForConditionalGeneration,
    tokenizer,
    texts: list[str],
    n_frames: int,
    guidance_scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hugging Face's greedy ``MusicgenForConditionalGeneration.generate`` of ``texts``.

    The codes are caught on their way to ``audio_encoder.decode`` (``generate`` returns only the
    audio): HF reverts the delay pattern and drops the steps that are padding in any codebook, so
    ``n_frames`` frames take ``n_frames + n_codebooks - 1`` new tokens.

    Returns:
        codes (B, K, n_frames) int64 and audio (B, n_frames * hop) float32.
    """
    decoded = []
    decode = hf.audio_encoder.decode
    hf.audio_encoder.decode = lambda codes, *a, **kw: (
        decoded.append(codes) or decode(codes, *a, **kw)
    )
    try:
        tokens = tokenizer(texts, return_tensors="pt", padding=True)
        audio = hf.generate(
            **tokens,
            do_sample=False,
            guidance_scale=guidance_scale,
            max_new_tokens=n_frames + hf.decoder.num_codebooks - 1,
        )
    finally:
        hf.audio_encoder.decode = decode
    return decoded[0][0], audio[:, 0]
