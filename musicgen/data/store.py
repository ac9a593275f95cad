"""On-disk arrays for tokens and text embeddings, and batches over them.

Tokens: ``codes.npy`` (N, K, T) int16 and ``index.csv`` (``ytid``, ``row``).
Text: ``embeddings.npy`` (sum of lengths, D) float16, ragged, and ``index.csv`` (``ytid``,
``variant``, ``offset``, ``length``); variant 0 is the clean caption, variants 1.. its word-dropout
versions. One array per artifact, never one file per clip.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from musicgen.io import atomic_path


def save_array(path: Path, array: np.ndarray) -> None:
    """np.save, atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def save_table(path: Path, table: pd.DataFrame) -> None:
    """A CSV with Unix line endings, atomically."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, lineterminator="\n")


def save_tokens(out_dir: Path, ids: list[str], codes: np.ndarray) -> None:
    """Writes codes (N, K, T) as int16 with their ids."""
    if codes.max(initial=0) > np.iinfo(np.int16).max:
        raise ValueError("codes exceed int16")
    save_array(out_dir / "codes.npy", codes.astype(np.int16))
    save_table(out_dir / "index.csv", pd.DataFrame({"ytid": ids, "row": np.arange(len(ids))}))


def load_tokens(tokens_dir: Path) -> tuple[list[str], np.ndarray]:
    """Returns ids and codes (N, K, T) int16."""
    index = pd.read_csv(tokens_dir / "index.csv", dtype={"ytid": str})
    return index["ytid"].tolist(), np.load(tokens_dir / "codes.npy")


def save_text(out_dir: Path, ids: list[str], n_variants: int, states: list[np.ndarray]) -> None:
    """Writes ragged text states; ``states`` is ordered id-major, variant-minor."""
    lengths = np.array([len(s) for s in states])
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    save_array(out_dir / "embeddings.npy", np.concatenate(states).astype(np.float16))
    save_table(
        out_dir / "index.csv",
        pd.DataFrame(
            {
                "ytid": np.repeat(ids, n_variants),
                "variant": np.tile(np.arange(n_variants), len(ids)),
                "offset": offsets,
                "length": lengths,
            }
        ),
    )


def pad_states(states: list[np.ndarray], dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacks ragged text states into a zero-padded batch.

    Args:
        states: one (L_i, dim) array per row; an empty one (L_i = 0) gives the null condition
            (zero states, every position masked; see ``musicgen.lm.null_condition``).
        dim: the states' width.

    Returns:
        cond (B, L, dim) float32 with L = max(1, max L_i), and cond_mask (B, L) bool.
    """
    L = max([1, *(len(s) for s in states)])
    cond = np.zeros((len(states), L, dim), dtype=np.float32)
    mask = np.zeros((len(states), L), dtype=bool)
    for i, s in enumerate(states):
        cond[i, : len(s)] = s
        mask[i, : len(s)] = True
    return torch.from_numpy(cond), torch.from_numpy(mask)


@dataclass
class Batch:
    codes: torch.Tensor  # (B, K, T) int64
    cond: torch.Tensor  # (B, L, D) float32, zero past each text's length
    cond_mask: torch.Tensor  # (B, L) bool


class CodesAndText:
    """The clips of one split: their codes in memory and their text states memory-mapped."""

    def __init__(self, tokens_dir: Path, text_dir: Path, ids: list[str]):
        token_ids, codes = load_tokens(tokens_dir)
        row = {y: i for i, y in enumerate(token_ids)}
        missing = [y for y in ids if y not in row]
        if missing:
            raise KeyError(f"{len(missing)} ids have no tokens, e.g. {missing[:3]}")
        self.ids = list(ids)
        self.codes = codes[[row[y] for y in ids]]  # (N, K, T) int16
        index = pd.read_csv(text_dir / "index.csv", dtype={"ytid": str})
        self.n_variants = int(index["variant"].max()) + 1
        index = index.set_index(["ytid", "variant"])
        self.spans = np.array(
            [
                [index.loc[(y, v), ["offset", "length"]].to_numpy() for v in range(self.n_variants)]
                for y in ids
            ]
        ).reshape(len(ids), self.n_variants, 2)  # (N, V, 2): offset, length
        self.states = np.load(text_dir / "embeddings.npy", mmap_mode="r")  # (sum L, D)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_frames(self) -> int:
        return self.codes.shape[2]

    @property
    def text_dim(self) -> int:
        return self.states.shape[1]

    def batch(self, rows: np.ndarray, variants: np.ndarray | None = None) -> Batch:
        """Gathers clips ``rows`` with text ``variants`` (default: 0, the clean caption)."""
        variants = np.zeros(len(rows), dtype=int) if variants is None else variants
        spans = self.spans[rows, variants]  # (B, 2)
        cond, mask = pad_states([self.states[off : off + n] for off, n in spans], self.text_dim)
        return Batch(self.codes_of(rows), cond, mask)

    def codes_of(self, rows: np.ndarray) -> torch.Tensor:
        """The codes (B, K, T) int64 of clips ``rows``."""
        return torch.from_numpy(self.codes[rows].astype(np.int64))

    def sample_batch(self, rows: np.ndarray, sample_ids: np.ndarray, seed: int) -> Batch:
        """A training batch: clips ``rows`` (B,), each with a caption variant drawn at random.

        Each variant is drawn over all of them, the clean caption (0) included, from
        :func:`sample_rng` of its sample's index in the run's stream of samples, so the draw does not
        depend on how a batch is cut into micro-batches or shared across processes.

        Args:
            rows: (B,) rows of this dataset.
            sample_ids: (B,) the samples' global indices (step * global batch + position).
            seed: the run's seed.
        """
        variants = np.array(
            [sample_rng(seed, s).integers(self.n_variants) for s in sample_ids], dtype=int
        )
        return self.batch(rows, variants)


def sample_rng(seed: int, sample_id: int) -> np.random.Generator:
    """The random stream of one training sample (its caption's variant or word dropout)."""
    return np.random.default_rng([seed, 1, int(sample_id)])
