"""Generation longer than the LM's window: audiocraft's ``extend_stride`` scheme, on codes.

An LM trained on clips of W frames (its window) has seen no position past W. To generate T > W
frames, the first window is the plain generation of W frames (:func:`musicgen.generate.generate`,
the same draws as a call for W frames with the same generator); each later window moves on by
the stride S and is generated with the previous output's last W - S frames as its prompt (the
codes in frames, which ``generate`` lays out in the model's pattern again and teacher-forces),
with the same text condition, and adds the next S frames (the last window fewer: up to T). This
is audiocraft's ``MusicGen._generate_tokens`` for ``duration > max_duration`` (its default stride
is 18 s of a 30 s window, :data:`STRIDE_SHARE`). An audio prompt (``--continue``) of Tp frames is
the first window's prompt as it is when Tp < W; a longer one is cut to its last W - S frames.

The windows run on the cached decoding path of ``generate`` (the numba step on the CPU, the
static step on CUDA); the full windows share one decoder of a :class:`WindowPools` (on CUDA one
CUDA graph for all of them), the shorter last window another.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from musicgen.generate import DecoderPool, SamplingConfig, generate
from musicgen.lm import LM

STRIDE_SHARE = 0.6  # audiocraft's default extend_stride (18 s) over its max_duration (30 s)
PUBLISHED_WINDOW_S = 30.0  # the published MusicGens' training window (audiocraft's max_duration)


@dataclass(frozen=True)
class Windowing:
    """The sliding window of long generation, in frames.

    Attributes:
        window: W, frames the LM sees at once (the length of its training clips).
        stride: S, frames each later window moves on (0 < S < W); it starts with the previous
            output's last W - S frames.
    """

    window: int
    stride: int

    def __post_init__(self):
        if self.window < 2:
            raise ValueError(f"the window must hold at least 2 frames, got {self.window}")
        if not 0 < self.stride < self.window:
            raise ValueError(
                f"the extend stride must be more than 0 and less than the window "
                f"({self.window} frames), got {self.stride} frames"
            )

    @property
    def overlap(self) -> int:
        """W - S: the frames a later window takes from the previous output as its prompt."""
        return self.window - self.stride

    @classmethod
    def from_seconds(
        cls, frame_rate: float, window_s: float, stride_s: float | None = None
    ) -> Windowing:
        """The windowing of ``window_s`` seconds moving on by ``stride_s`` (None: 60 %).

        Raises:
            ValueError: if the stride is not within (0, window) once rounded to frames.
        """
        if stride_s is None:
            stride_s = STRIDE_SHARE * window_s
        return cls(round(window_s * frame_rate), round(stride_s * frame_rate))


@dataclass(frozen=True)
class Span:
    """Where one window lies in the output.

    Attributes:
        start: its first frame in the output (the prompt's, if any).
        keep: its first ``keep`` frames are the output so far (its prompt; 0 for none).
        length: its frames, the prompt's included.
    """

    start: int
    keep: int
    length: int

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass
class Window:
    """One generated window: its span and codes (B, K, span.length), prompt included."""

    span: Span
    codes: torch.Tensor

    @property
    def new(self) -> torch.Tensor:
        """(B, K, length - keep): the frames this window adds to the output."""
        return self.codes[:, :, self.span.keep :]


def plan(n_frames: int, windowing: Windowing, n_prompt: int = 0) -> list[Span]:
    """The windows that make ``n_frames`` frames after a prompt of ``n_prompt`` frames.

    The first window starts at 0 (or, after a prompt of W frames or more, at its last W - S
    frames); every later one at the end of the previous minus W - S frames; each is W frames
    long, the last up to ``n_frames``. A prompt of ``n_frames`` frames needs no window.

    Raises:
        ValueError: if ``n_frames`` is not positive or shorter than the prompt.
    """
    if n_frames < 1 or n_frames < n_prompt:
        raise ValueError(f"cannot make {n_frames} frames after a prompt of {n_prompt}")
    spans, done = [], n_prompt
    while done < n_frames:
        keep = done if done < windowing.window else windowing.overlap
        start = done - keep
        spans.append(Span(start, keep, min(n_frames - start, windowing.window)))
        done = spans[-1].end
    return spans


class WindowPools:
    """Decoders kept across windows and batches: one pool for full windows, one for the shorter
    last window (see :class:`musicgen.generate.DecoderPool`); on CUDA, one graph capture each."""

    def __init__(self):
        self.full, self.last = DecoderPool(), DecoderPool()

    def pick(self, span: Span, windowing: Windowing) -> DecoderPool:
        return self.full if span.length == windowing.window else self.last


def iter_windows(
    model: LM,
    cond: torch.Tensor,
    cond_mask: torch.Tensor,
    n_frames: int,
    sampling: SamplingConfig,
    windowing: Windowing,
    generator: torch.Generator | None = None,
    prompt: torch.Tensor | None = None,
    pools: WindowPools | None = None,
    **kwargs,
) -> Iterator[Window]:
    """Generates the windows of :func:`plan` one after the other, each as it is made.

    Args:
        model, cond, cond_mask, sampling, generator: as :func:`musicgen.generate.generate`; the
            text condition is the same for every window, the generator goes on from one to the
            next.
        n_frames: T, frames of the whole output, the prompt's included.
        windowing: window and stride in frames.
        prompt: (B, K, Tp) codes the output starts with, or None.
        pools: decoders kept across windows (and calls); None builds one per window.
        **kwargs: passed to ``generate`` (``weights``, ``static_step``, ``fast_kernel``,
            ``use_cache``).

    Yields:
        :class:`Window` per span, codes (B, K, span.length) on the condition's device; a later
        window's first ``keep`` frames are the previous window's last ``keep``.
    """
    n_prompt = 0 if prompt is None else prompt.shape[2]
    before = prompt
    for span in plan(n_frames, windowing, n_prompt):
        head = before[:, :, before.shape[2] - span.keep :] if span.keep else None
        decoders = pools.pick(span, windowing) if pools is not None else None
        codes = generate(
            model,
            cond,
            cond_mask,
            span.length,
            sampling,
            generator,
            prompt=head,
            decoders=decoders,
            **kwargs,
        )
        yield Window(span, codes)
        before = codes


def generate_long(
    model: LM,
    cond: torch.Tensor,
    cond_mask: torch.Tensor,
    n_frames: int,
    sampling: SamplingConfig,
    windowing: Windowing,
    generator: torch.Generator | None = None,
    prompt: torch.Tensor | None = None,
    pools: WindowPools | None = None,
    **kwargs,
) -> torch.Tensor:
    """Codes of any length: one ``generate`` call up to the window, sliding windows past it.

    Arguments as :func:`iter_windows`. Up to W frames this is ``generate`` itself.

    Returns:
        codes (B, K, n_frames) int64: the prompt, then each window's new frames.
    """
    parts = [] if prompt is None else [prompt]
    for window in iter_windows(
        model, cond, cond_mask, n_frames, sampling, windowing, generator, prompt, pools, **kwargs
    ):
        parts.append(window.new)
    return torch.cat(parts, dim=2)
