"""The text conditioner: a frozen T5 encoder, its tokenizer, and word dropout.

The real run loads ``t5-base`` by hub id; the embedded default builds a small T5 encoder from a
``T5Config`` with random weights and a word-level tokenizer built from the training captions. Both are
saved with ``save_pretrained`` and loaded back through :func:`load_text_encoder`, one code path.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import (
    Tokenizer,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)
from tqdm import tqdm
from transformers import AutoTokenizer, PreTrainedTokenizerBase, T5Config, T5EncoderModel

from musicgen.data.splits import unit_hash
from musicgen.device import autocast

SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2 as in T5


@dataclass
class TinyT5Config:
    vocab_size: int = 1000  # words in the tokenizer (with the 3 special tokens)
    d_model: int = 64  # width of the encoder (t5-base: 768)
    d_ff: int = 256
    n_layers: int = 2
    n_heads: int = 4
    seed: int = 0


def train_tokenizer(captions: list[str], vocab_size: int) -> PreTrainedTokenizerBase:
    """Builds a word-level tokenizer from the most frequent words of ``captions``.

    The vocabulary is the ``vocab_size - 3`` most frequent lowercased words and punctuation marks
    (ties broken alphabetically), so the same captions always give the same tokenizer (the
    ``tokenizers`` trainers are multi-threaded and not reproducible byte for byte).

    Returns:
        a fast tokenizer with ``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2 that appends ``</s>``.
    """
    from collections import Counter

    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    pre = pre_tokenizers.Whitespace()
    counts: Counter[str] = Counter()
    for caption in captions:
        counts.update(w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(caption)))
    words = sorted(counts, key=lambda w: (-counts[w], w))[
        : max(0, vocab_size - len(SPECIAL_TOKENS))
    ]
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", vocab["</s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def build_tiny_t5(cfg: TinyT5Config, vocab_size: int) -> T5EncoderModel:
    """A T5 encoder with seeded random weights."""
    config = T5Config(
        vocab_size=vocab_size,
        d_model=cfg.d_model,
        d_kv=cfg.d_model // cfg.n_heads,
        d_ff=cfg.d_ff,
        num_layers=cfg.n_layers,
        num_heads=cfg.n_heads,
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
    )
    torch.manual_seed(cfg.seed)
    return T5EncoderModel(config).eval()


def load_text_encoder(name_or_dir: str | Path) -> tuple[PreTrainedTokenizerBase, T5EncoderModel]:
    """Loads a tokenizer and a frozen T5 encoder by hub id (e.g. ``t5-base``) or local directory.

    A ``MusicgenForConditionalGeneration`` (``facebook/musicgen-small`` or its ``save_pretrained``
    directory with the tokenizer saved beside it, as ``MusicgenProcessor`` saves it) gives its
    ``text_encoder``, read alone from the checkpoint (:func:`musicgen.hf_parts.load_part`), and
    the tokenizer at its top level.
    """
    from musicgen.hf_parts import TOKENIZER, checkpoint_file, load_part, musicgen_config

    src = str(name_or_dir)
    try:
        musicgen = musicgen_config(src)
        if musicgen is not None and checkpoint_file(src, TOKENIZER) is None:
            # transformers would build an empty T5 tokenizer (no vocabulary) without a word
            raise OSError(f"the MusicGen {src} has no {TOKENIZER} beside its config.json")
        tokenizer = AutoTokenizer.from_pretrained(src)
        if musicgen is not None:
            model = load_part(src, "text_encoder", T5EncoderModel, musicgen)
        else:
            model = T5EncoderModel.from_pretrained(src)
    except OSError as e:
        raise OSError(
            f"could not load a T5 encoder and its tokenizer from '{name_or_dir}': give a local "
            "directory written by save_pretrained (for a MusicGen, with its tokenizer saved in the "
            "same directory), or a hub id with network access"
        ) from e
    model.eval().requires_grad_(False)
    return tokenizer, model


def save_text_encoder(
    tokenizer: PreTrainedTokenizerBase, model: T5EncoderModel, out_dir: Path
) -> None:
    """Saves both with ``save_pretrained`` (safetensors)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    model.save_pretrained(str(out_dir), safe_serialization=True)


def first_words(text: str, max_words: int) -> list[str]:
    """The whitespace-separated words of ``text``, at most ``max_words`` of them."""
    return text.split()[:max_words]


def word_dropout(words: list[str], p: float, rng: np.random.Generator) -> list[str]:
    """Drops each word with probability ``p``, keeping at least one."""
    if p <= 0 or not words:
        return words
    keep = rng.random(len(words)) >= p
    if not keep.any():
        keep[rng.integers(len(words))] = True
    return [w for w, k in zip(words, keep, strict=True) if k]


def caption_variants(
    ytid: str, caption: str, n_variants: int, p: float, max_words: int, seed: int
) -> list[str]:
    """Variant 0 is the caption's first ``max_words`` words; variants 1.. apply word dropout.

    The randomness is seeded by ``(seed, ytid, variant)``, so a clip's variants do not depend on the
    other clips.
    """
    words = first_words(caption, max_words)
    out = [" ".join(words)]
    for v in range(1, n_variants):
        rng = np.random.default_rng([seed, int(unit_hash(ytid, seed) * 2**32), v])
        out.append(" ".join(word_dropout(words, p, rng)))
    return out


def token_lengths(
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    batch_size: int = 256,
    max_tokens: int = 512,
) -> np.ndarray:
    """The number of tokens of each text, as :func:`encode_texts` encodes it.

    Returns:
        (N,) int64: the rows of each text's states (its real tokens, truncated to ``max_tokens``).
    """
    lengths = [
        len(row)
        for i in range(0, len(texts), batch_size)
        for row in tokenizer(texts[i : i + batch_size], truncation=True, max_length=max_tokens)[
            "input_ids"
        ]
    ]
    return np.array(lengths, dtype=np.int64)


@torch.inference_mode()
def encode_batches(
    tokenizer: PreTrainedTokenizerBase,
    model: T5EncoderModel,
    texts: list[str],
    batch_size: int = 32,
    max_tokens: int = 512,
    progress: bool = True,
    dtype: torch.dtype | None = None,
) -> Iterator[list[np.ndarray]]:
    """Encodes texts with the frozen T5 encoder, on the model's device, one batch at a time.

    Args:
        tokenizer: the T5 tokenizer.
        model: the encoder, on any device.
        texts: the captions.
        batch_size: texts per encoder call (padded to the longest of the batch).
        max_tokens: texts are truncated to this many tokens.
        progress: show a progress bar.
        dtype: autocast dtype (``torch.bfloat16``), or None for float32. Not float16: T5's
            feed-forward activations overflow it (see :func:`musicgen.device.inference_dtype`).

    Yields:
        per batch, one float16 array (L_i, D) per text, holding only its real (unpadded) tokens.
    """
    device = model.device
    for i in tqdm(range(0, len(texts), batch_size), desc="encode_text", disable=not progress):
        batch = tokenizer(
            texts[i : i + batch_size],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=max_tokens,
        )
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        with autocast(device, dtype):
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, D)
        states = hidden.float().cpu().numpy()
        yield [
            row[:n].astype(np.float16)
            for row, n in zip(states, batch["attention_mask"].sum(1).tolist(), strict=True)
        ]


def encode_texts(*args, **kwargs) -> list[np.ndarray]:
    """All of :func:`encode_batches` (same arguments) in one list: a float16 (L_i, D) per text.

    For a few texts (inference, training on the fly); the encode_text stage streams the batches
    to disk instead (:func:`musicgen.pipeline.captions.write_text_states`).
    """
    return [states for batch in encode_batches(*args, **kwargs) for states in batch]
