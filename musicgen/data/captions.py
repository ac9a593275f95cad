"""Word dropout on the fly: the frozen T5 encodes each training batch's captions, as audiocraft does.

``train.text_on_the_fly: true`` trains on :class:`CodesAndCaptions`: every sample of every step gets
a fresh word dropout of its caption (its first ``encode_text.max_words`` words, each dropped with
``encode_text.word_dropout``; audiocraft: 0.3), drawn from the sample's own random stream
(:func:`musicgen.data.store.sample_rng`), so the batch does not depend on how it is sharded across
processes. A caption whose every word drops becomes the null condition (zero states, every position
masked), as audiocraft's T5 conditioner masks an empty text. The default (``false``) trains on the
cached variants of the encode_text stage (:class:`musicgen.data.store.CodesAndText`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase, T5EncoderModel

from musicgen.data.store import Batch, CodesAndText, pad_states, sample_rng
from musicgen.text import encode_texts, first_words


def drop_words(words: list[str], p: float, rng: np.random.Generator) -> str:
    """The words that survive dropout with probability ``p`` each, joined; "" when none do."""
    keep = rng.random(len(words)) >= p
    return " ".join(w for w, k in zip(words, keep, strict=True) if k)


class CodesAndCaptions(CodesAndText):
    """The clips of one split, whose training batches encode word-dropped captions with T5.

    :meth:`batch` (validation, clean captions) reads the cached states like
    :class:`~musicgen.data.store.CodesAndText`; :meth:`sample_batch` runs the text encoder.
    """

    def __init__(
        self,
        tokens_dir: Path,
        text_dir: Path,
        ids: list[str],
        captions: list[str],
        tokenizer: PreTrainedTokenizerBase,
        encoder: T5EncoderModel,
        word_dropout: float,
        max_words: int,
        dtype: torch.dtype | None = None,
    ):
        """
        Args:
            tokens_dir: the tokenize stage's output.
            text_dir: the encode_text stage's output (the clean captions' states).
            ids: the clips.
            captions: each clip's caption, aligned with ``ids``.
            tokenizer, encoder: the frozen text model that made ``text_dir`` (on its device).
            word_dropout: per-word drop probability.
            max_words: captions are cut to their first ``max_words`` words before dropout.
            dtype: the encoder's autocast dtype (bf16 on CUDA as encode_text), None for fp32.
        """
        super().__init__(tokens_dir, text_dir, ids)
        if len(captions) != len(ids):
            raise ValueError(f"{len(captions)} captions for {len(ids)} clips")
        if encoder.config.d_model != self.text_dim:
            raise ValueError(
                f"the text encoder is {encoder.config.d_model} wide but the cached states in "
                f"{text_dir} are {self.text_dim}: encode_text ran with another text model"
            )
        if not 0.0 <= word_dropout <= 1.0:
            raise ValueError(f"encode_text.word_dropout must be in [0, 1], got {word_dropout}")
        self.words = [first_words(c, max_words) for c in captions]
        self.tokenizer, self.encoder = tokenizer, encoder
        self.word_dropout, self.dtype = word_dropout, dtype

    def captions_for(self, rows: np.ndarray, sample_ids: np.ndarray, seed: int) -> list[str]:
        """Each sample's word-dropped caption ("" when every word dropped)."""
        return [
            drop_words(self.words[r], self.word_dropout, sample_rng(seed, s))
            for r, s in zip(rows, sample_ids, strict=True)
        ]

    @torch.no_grad()
    def sample_batch(self, rows: np.ndarray, sample_ids: np.ndarray, seed: int) -> Batch:
        """A training batch of clips ``rows`` (B,) with fresh word dropout per sample.

        Args:
            rows: (B,) rows of this dataset.
            sample_ids: (B,) the samples' global indices (step * global batch + position).
            seed: the run's seed.

        Returns:
            codes (B, K, T); cond (B, L, D) float32 from the T5 encoder (float16-rounded like the
            cache); cond_mask (B, L), all False on rows whose caption dropped entirely.
        """
        texts = self.captions_for(rows, sample_ids, seed)
        kept = [i for i, t in enumerate(texts) if t]
        states = [np.zeros((0, self.text_dim), dtype=np.float16)] * len(texts)
        if kept:
            encoded = encode_texts(
                self.tokenizer,
                self.encoder,
                [texts[i] for i in kept],
                batch_size=len(kept),
                progress=False,
                dtype=self.dtype,
            )
            for i, s in zip(kept, encoded, strict=True):
                states[i] = s
        cond, mask = pad_states(states, self.text_dim)
        return Batch(self.codes_of(rows), cond, mask)
