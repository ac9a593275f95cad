"""Codebook interleaving patterns.

A pattern lays the K codebook streams of T frames out as one sequence of S steps that the LM predicts
step by step. It is described by a ``layout`` (K, S) of frame indices: ``layout[k, s] = t`` when step
``s`` holds codebook ``k`` of frame ``t``, and -1 when that slot is empty (filled with the special
token and excluded from the loss). Every (k, t) appears exactly once, so building and reverting are
two gathers.

- ``parallel``: all codebooks of frame t at step t (S = T).
- ``delay``: codebook k delayed by ``delays[k]`` steps (S = T + max delay); MusicGen's default.
- ``unroll``: flattening, one codebook per step, frame by frame (S = K * T).
- ``coarse_first``: codebook 0 for all frames, then the others in parallel (S = 2 T).

The LM's input at step s is the sequence at step s - 1 (step -1 is all special tokens), and its
output at step s is scored against the sequence at step s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PATTERNS = ("delay", "parallel", "unroll", "coarse_first")


@dataclass(frozen=True)
class Pattern:
    """A layout (K, S) of frame indices for T frames; -1 marks an empty slot."""

    layout: torch.Tensor  # (K, S) int64
    n_frames: int  # T

    @property
    def n_codebooks(self) -> int:
        return self.layout.shape[0]

    @property
    def n_steps(self) -> int:
        return self.layout.shape[1]

    @property
    def mask(self) -> torch.Tensor:
        """(K, S) bool: which slots hold a code."""
        return self.layout >= 0

    def inverse(self) -> torch.Tensor:
        """(K, T) int64: the step at which codebook k of frame t sits."""
        k_idx, s_idx = torch.nonzero(self.mask, as_tuple=True)
        inv = torch.full((self.n_codebooks, self.n_frames), -1, dtype=torch.long)
        inv[k_idx, self.layout[k_idx, s_idx]] = s_idx
        return inv

    def build(self, codes: torch.Tensor, special: int) -> torch.Tensor:
        """Interleaves codes.

        Args:
            codes: (B, K, T) integer codes.
            special: the id put in empty slots.

        Returns:
            (B, K, S) the pattern sequence.
        """
        B, K, T = codes.shape
        assert (K, T) == (self.n_codebooks, self.n_frames), (codes.shape, self.layout.shape)
        index = self.layout.clamp(min=0).to(codes.device).expand(B, K, -1)  # (B, K, S)
        seq = torch.gather(codes, 2, index)
        return seq.masked_fill(~self.mask.to(codes.device), special)

    def revert(self, values: torch.Tensor) -> torch.Tensor:
        """Takes per-step values back to frames.

        Args:
            values: (B, K, S, ...) e.g. logits (B, K, S, card) or a sequence (B, K, S).

        Returns:
            (B, K, T, ...) the values at the step of each (k, t).
        """
        inv = self.inverse().to(values.device)  # (K, T)
        B, K = values.shape[:2]
        index = inv.view(1, K, -1, *([1] * (values.dim() - 3)))
        index = index.expand(B, K, -1, *values.shape[3:])
        return torch.gather(values, 2, index)


def delay_layout(n_frames: int, delays: list[int]) -> torch.Tensor:
    s = torch.arange(n_frames + max(delays))
    t = s.unsqueeze(0) - torch.tensor(delays).unsqueeze(1)  # (K, S)
    return torch.where((t >= 0) & (t < n_frames), t, -1)


def unroll_layout(n_frames: int, n_codebooks: int) -> torch.Tensor:
    layout = torch.full((n_codebooks, n_codebooks * n_frames), -1, dtype=torch.long)
    for k in range(n_codebooks):
        layout[k, k::n_codebooks] = torch.arange(n_frames)
    return layout


def coarse_first_layout(n_frames: int, n_codebooks: int) -> torch.Tensor:
    layout = torch.full((n_codebooks, 2 * n_frames), -1, dtype=torch.long)
    layout[0, :n_frames] = torch.arange(n_frames)
    layout[1:, n_frames:] = torch.arange(n_frames)
    return layout


def make_pattern(
    name: str, n_codebooks: int, n_frames: int, delays: list[int] | None = None
) -> Pattern:
    """Builds a pattern by name.

    Args:
        name: one of ``PATTERNS``.
        n_codebooks: K.
        n_frames: T.
        delays: per-codebook delays for ``delay`` (default 0, 1, ..., K-1).
    """
    if name == "delay":
        delays = list(range(n_codebooks)) if delays is None else list(delays)
        if len(delays) != n_codebooks or min(delays) < 0:
            raise ValueError(f"delay pattern needs {n_codebooks} non-negative delays, got {delays}")
        layout = delay_layout(n_frames, delays)
    elif name == "parallel":
        layout = torch.arange(n_frames).expand(n_codebooks, -1).clone()
    elif name == "unroll":
        layout = unroll_layout(n_frames, n_codebooks)
    elif name == "coarse_first":
        layout = coarse_first_layout(n_frames, n_codebooks)
    else:
        raise ValueError(f"unknown pattern '{name}'; choose one of {', '.join(PATTERNS)}")
    return Pattern(layout=layout.long(), n_frames=n_frames)
