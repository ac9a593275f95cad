"""The text conditioner: a frozen T5 encoder, its tokenizer, and word dropout.

The real run loads ``t5-base`` by hub id; the embedded default builds a small T5 encoder from a
``T5Config`` with random weights and a word-level tokenizer built from the training captions. Both are
saved with ``save_pretrained`` and loaded back through :func:`load_text_encoder`, one code path.

The same states on every CPU: on the CPU without autocast the encoder computes in float64
(:func:`encode_batches`; its RMS norms too, which transformers computes in float32 for every
input), and the states are rounded to the float16 the LM reads. Another CPU sums in another order
(other SIMD widths, other BLAS kernels), which moves float64 results by a few units in their last
place, about 1e-16 relative; float16's steps are 1e-3 relative, so a state rounds differently only
when it lies within 1e-16 of a midpoint between two float16s (about once in 1e13 values; the
embedded default has ~1e6). The tiny encoder's weights are drawn with numpy's PCG64
(:func:`build_tiny_t5`), not torch's ``normal_``, whose float32 Box-Muller has one vectorised
form for AVX2 and AVX-512 and a scalar one elsewhere, and so other bits.
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
    """A T5 encoder with seeded random weights, the same bytes on every CPU.

    Each weight matrix is drawn uniformly with T5's initial standard deviation
    (:func:`t5_init_std`) from numpy's PCG64: ``std * sqrt(3) * (2u - 1)``, ``u`` a 53-bit
    integer over 2**53, computed in float64 and rounded to float32 (exact arithmetic up to one
    correctly rounded multiply, so no instruction set can change a bit). The RMS-norm weights are
    ones, as in T5.
    """
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
    model = T5EncoderModel(config).eval()
    rng = np.random.default_rng(cfg.seed)
    with torch.no_grad():
        for name, weight in model.named_parameters():  # a tied weight once
            std = t5_init_std(name, config)
            if std is not None:
                u = rng.random(tuple(weight.shape))
                weight.copy_(torch.from_numpy((std * 3**0.5) * (2.0 * u - 1.0)))
    return model


def t5_init_std(name: str, config: T5Config) -> float | None:
    """T5's initial standard deviation of the weight ``name`` (transformers'
    ``T5PreTrainedModel._init_weights``), or None for an RMS norm's weight (ones).

    Raises:
        ValueError: for a weight these rules do not know.
    """
    d_model, d_kv, factor = config.d_model, config.d_kv, config.initializer_factor
    stds = {
        "shared": 1.0,
        "embed_tokens": 1.0,
        "q": (d_model * d_kv) ** -0.5,
        "k": d_model**-0.5,
        "v": d_model**-0.5,
        "o": (config.num_heads * d_kv) ** -0.5,
        "relative_attention_bias": d_model**-0.5,
        "wi": d_model**-0.5,
        "wi_0": d_model**-0.5,
        "wi_1": d_model**-0.5,
        "wo": config.d_ff**-0.5,
    }
    module = name.split(".")[-2]
    if module.endswith("layer_norm"):
        return None
    if module not in stds or not name.endswith(".weight"):
        raise ValueError(f"no initial standard deviation for the T5 weight {name}")
    return factor * stds[module]


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

    On the CPU without autocast the encoder computes in float64 (:func:`compute_dtype`), so the
    float16 states are the same bytes on every CPU (module docstring); elsewhere in float32 or
    under autocast. The model's weights are converted in place to that dtype (float32 weights
    to float64 and back are the same numbers).

    Args:
        tokenizer: the T5 tokenizer.
        model: the encoder, on any device, with float32 (or float64) weights.
        texts: the captions.
        batch_size: texts per encoder call (padded to the longest of the batch).
        max_tokens: texts are truncated to this many tokens.
        progress: show a progress bar.
        dtype: autocast dtype (``torch.bfloat16``), or None for none (float64 on the CPU,
            float32 on CUDA). Not float16: T5's feed-forward activations overflow it (see
            :func:`musicgen.device.inference_dtype`).

    Yields:
        per batch, one float16 array (L_i, D) per text, holding only its real (unpadded) tokens.
    """
    device = model.device
    model.to(dtype=compute_dtype(device, dtype))
    float64_norms(model)
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
        # float64 rounds straight to float16 (one rounding); bf16/fp32 through float32
        states = (hidden if hidden.dtype == torch.float64 else hidden.float()).cpu().numpy()
        yield [
            row[:n].astype(np.float16)
            for row, n in zip(states, batch["attention_mask"].sum(1).tolist(), strict=True)
        ]


def compute_dtype(device: torch.device, dtype: torch.dtype | None) -> torch.dtype:
    """The dtype of the encoder's weights and states: float64 on the CPU without autocast
    (``dtype`` None), so that the states do not depend on the CPU; else float32 (a GPU's float64
    is slow, and its autocast, bf16, is what runs)."""
    return torch.float64 if dtype is None and device.type == "cpu" else torch.float32


def float64_norms(model: torch.nn.Module) -> None:
    """Makes each T5 RMS norm of ``model`` compute its variance in float64 when its input is
    float64 (transformers computes it in float32 for every input, and a float32 mean's sum order
    differs between instruction sets); other inputs are left as transformers computes them.
    Idempotent."""
    from transformers.models.t5.modeling_t5 import T5LayerNorm

    for module in model.modules():
        if isinstance(module, T5LayerNorm) and not getattr(module, "float64_variance", False):
            module.register_forward_hook(_rms_norm_in_float64)
            module.float64_variance = True


def _rms_norm_in_float64(
    module: torch.nn.Module, args: tuple[torch.Tensor], output: torch.Tensor
) -> torch.Tensor | None:
    """A T5LayerNorm's forward hook: for a float64 input (..., D), T5's RMS norm with its
    variance in float64 too, in transformers' order of operations; None (the output as it is)
    for any other input."""
    (x,) = args
    if x.dtype != torch.float64:
        return None
    variance = x.pow(2).mean(-1, keepdim=True)
    return module.weight * (x * torch.rsqrt(variance + module.variance_epsilon))


def encode_texts(*args, **kwargs) -> list[np.ndarray]:
    """All of :func:`encode_batches` (same arguments) in one list: a float16 (L_i, D) per text.

    For a few texts (inference, training on the fly); the encode_text stage streams the batches
    to disk instead (:func:`musicgen.pipeline.captions.write_text_states`).
    """
    return [states for batch in encode_batches(*args, **kwargs) for states in batch]
