"""Sampling from the LM: KV cache, classifier-free guidance, top-k / top-p, temperature, prompts."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from musicgen.device import device_scope
from musicgen.kernels import kernel_available, sample_top_k
from musicgen.lm import LM, KVCache, masked_codebook_ce, null_condition
from musicgen.patterns import Pattern


@dataclass
class SamplingConfig:
    cfg_coef: float = 3.0  # logits = uncond + (cond - uncond) * coef; 1.0 turns guidance off
    top_k: int = 250  # 0 disables
    top_p: float = 0.0  # nucleus sampling when > 0 (applied after top-k)
    temperature: float = 1.0  # 0 means greedy (argmax, no random draw)


def sample_next(
    logits: torch.Tensor,
    cfg: SamplingConfig,
    generator: torch.Generator | None,
    use_numba: bool = True,
) -> torch.Tensor:
    """Draws one token per row.

    On the CPU without top-p, :func:`musicgen.kernels.sample_top_k` draws (the same uniforms, the
    same rule; ``use_numba=False`` runs torch, the path of other devices).

    Args:
        logits: (N, card).

    Returns:
        (N,) int64 tokens.
    """
    if cfg.temperature <= 0:
        return logits.argmax(dim=-1)
    if use_numba and cfg.top_p <= 0 and logits.device.type == "cpu" and kernel_available():
        # the same draw in numba: the same uniforms from the generator, ~5x less time at 64 rows
        u = torch.rand(logits.shape[0], 1, generator=generator, dtype=torch.float64)
        tokens = sample_top_k(logits.float().numpy(), cfg.temperature, cfg.top_k, u.numpy())
        return torch.from_numpy(tokens)
    logits = logits.float() / cfg.temperature
    if 0 < cfg.top_k < logits.shape[-1]:
        # the k-th largest logit (kthvalue counts from the smallest; the same value as topk's last)
        kth = torch.kthvalue(logits, logits.shape[-1] - cfg.top_k + 1, dim=-1, keepdim=True).values
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p > 0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cum - sorted_logits.softmax(-1) > cfg.top_p  # keep the first token past p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return draw(logits.softmax(dim=-1), generator)


def draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One index per row of ``probs`` (N, V), drawn with those probabilities (inverse CDF).

    The same distribution as ``torch.multinomial(probs, 1)``, ~10x faster on a few rows (one
    uniform per row, a cumulative sum in float64 and a binary search). A zero-probability index is
    never drawn: the search returns the first index whose cumulative sum exceeds the uniform.

    Returns:
        (N,) int64.
    """
    cdf = probs.double().cumsum(dim=-1)
    u = torch.rand(probs.shape[0], 1, generator=generator, dtype=cdf.dtype, device=cdf.device)
    u *= cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=probs.shape[-1] - 1).squeeze(-1)


def autocast_dtype_in_force(device: torch.device) -> torch.dtype | None:
    """The dtype ``torch.autocast`` computes in on ``device`` here, or None when it is off.

    The decoding weights are made once in it (:class:`musicgen.kernels.LinearKernel`), so that
    the steps cast nothing; on the CPU the numba kernels read their own stored weights.
    """
    if not torch.is_autocast_enabled(device.type):
        return None
    return torch.get_autocast_dtype(device.type)


class StaticStep:
    """One decoding step whose ops do not depend on the step: on CUDA, captured in a CUDA graph.

    The new step is written to and read from the KV cache at a position held in a tensor
    (``KVCache.position``), attention runs over all the cache's steps with a mask, and the inputs
    and outputs live in fixed tensors, so the same kernels with the same shapes run at every step.
    On the CPU it runs eagerly (the path the tests compare with the dynamic cache); on CUDA it is
    captured once in a ``torch.cuda.CUDAGraph`` after two warm-up runs and replayed, which removes
    the launch overhead of a step's ~20 ops per layer. The CUDA-graph capture is untested on the
    project's machine (no GPU); under ``torch.autocast`` it needs ``cache_enabled=False``.

    Args:
        model: the LM.
        cache: its KV cache (without a numba kernel), after the text keys exist (one dynamic step).
        rows: N, the rows of a step (batch, or twice the batch with guidance).
    """

    def __init__(self, model: LM, cache: KVCache, rows: int):
        self.model, self.cache = model, cache
        device = cache.k[0].device
        self.tokens = torch.zeros(rows, model.cfg.n_codebooks, 1, dtype=torch.long, device=device)
        self.position = torch.zeros(1, dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None

    def run(self) -> torch.Tensor:
        """The step's ops on ``self.tokens`` at ``self.position``: logits (N, K, card)."""
        cache, length = self.cache, self.cache.length
        cache.position = self.position
        try:
            h = self.model.hidden_steps(self.tokens, None, None, cache)
            return self.model.logits(h, cache)[:, :, 0]
        finally:
            cache.position, cache.length = None, length

    def capture(self) -> None:  # pragma: no cover - needs a GPU (scripts/gpu_check.py)
        """Records :meth:`run` in a CUDA graph, on the GPU that holds the cache.

        That GPU is made current for the capture: the side stream of the warm-up, the graph's
        capture stream and its memory pool all live on the current device, so on ``cuda:1``
        with ``cuda:0`` current the graph would record nothing of the step's kernels.
        """
        device = self.tokens.device
        with device_scope(device):
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm-up runs write the same keys and values again
                    self.run()
            torch.cuda.current_stream(device).wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.logits = self.run()

    def __call__(self, steps: torch.Tensor) -> torch.Tensor:
        """Feeds one step (N, K, 1) at the cache's length and returns the logits (N, K, card)."""
        self.tokens.copy_(steps)
        self.position.fill_(self.cache.length)
        if self.tokens.device.type != "cuda":
            logits = self.run()
        else:  # pragma: no cover - needs a GPU (scripts/gpu_check.py)
            if self.graph is None:
                self.capture()
            self.graph.replay()
            logits = self.logits.clone()
        self.cache.length += 1
        return logits


class StepDecoder:
    """Next-step logits of the LM for a growing input sequence.

    With ``use_cache``, each call runs only the new input steps (self-attention keys and values grow
    in a preallocated cache, cross-attention keys and values are computed on the first call);
    without, each call recomputes the whole sequence (the reference the cache is tested against).
    With ``static_step`` (and the cache), single steps after the first call run as a
    :class:`StaticStep` (a CUDA graph on CUDA), without the numba kernel.
    """

    def __init__(
        self,
        model: LM,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
        max_steps: int,
        use_cache: bool = True,
        fast_kernel: bool = True,
        n_cond: int | None = None,
        weights: str = "fp32",
        static_step: bool = False,
    ):
        self.model, self.memory, self.memory_mask = model, memory, memory_mask
        self.cache: KVCache | None = None
        self.history: torch.Tensor | None = None
        self.static: StaticStep | None = None
        self.static_step = static_step and use_cache
        if self.static_step:
            fast_kernel = False
        if use_cache:
            device, dtype = memory.device, memory.dtype
            self.cache = model.new_cache(
                memory.shape[0],
                max_steps,
                device,
                dtype,
                fast_kernel,
                n_cond,
                weights,
                compute_dtype=autocast_dtype_in_force(device),
            )

    def restart(self, memory: torch.Tensor, memory_mask: torch.Tensor) -> None:
        """Starts a new sequence for another text of the same shape, keeping the cache's tensors,
        the stored weights and the static step (its CUDA graph reads the same tensors)."""
        self.memory, self.memory_mask, self.history = memory, memory_mask, None
        if self.cache is not None:
            self.cache.restart()
            self.model.refresh_text(memory, memory_mask, self.cache)

    def __call__(self, steps: torch.Tensor) -> torch.Tensor:
        """Feeds input steps (N, K, n) and returns the logits (N, K, card) after the last one."""
        if self.cache is None:
            self.history = steps if self.history is None else torch.cat([self.history, steps], 2)
            steps = self.history
        if self.static_step and self.cache.length > 0 and steps.shape[2] == 1:
            if self.static is None:  # after the first call: the text keys are in the cache
                self.static = StaticStep(self.model, self.cache, steps.shape[0])
            return self.static(steps)
        h = self.model.hidden_steps(steps, self.memory, self.memory_mask, self.cache)
        return self.model.logits(h[:, -1:], self.cache)[:, :, 0]


class DecoderPool:
    """Keeps the last :class:`StepDecoder` across :func:`generate` calls.

    A batch of the same shape (rows, text length, steps, settings) restarts the kept decoder
    instead of building one: its KV cache, stored weights and static step are reused, so on CUDA
    the decoding step's graph is captured once, not once per batch (pad the texts to one length,
    :func:`pad_text`, so that the batches share a shape). Only one decoder is kept, so memory
    does not grow with the number of shapes seen. ``built`` counts the decoders built.
    """

    def __init__(self):
        self.kept: dict[tuple, StepDecoder] = {}
        self.built = 0

    def __call__(
        self, model: LM, memory: torch.Tensor, memory_mask: torch.Tensor, *args, **kwargs
    ) -> StepDecoder:
        """``StepDecoder(model, memory, memory_mask, *args, **kwargs)``, kept and restarted."""
        device = memory.device
        key = (
            id(model),
            tuple(memory.shape),
            memory.dtype,
            device,
            autocast_dtype_in_force(device),
            args,
            tuple(sorted(kwargs.items())),
        )
        decoder = self.kept.get(key)
        if decoder is not None and decoder.model is model:
            decoder.restart(memory, memory_mask)
            return decoder
        self.kept.clear()  # the previous decoder's cache goes before the new one is made
        self.built += 1
        self.kept[key] = StepDecoder(model, memory, memory_mask, *args, **kwargs)
        return self.kept[key]


def pad_text(
    cond: torch.Tensor, cond_mask: torch.Tensor, length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Text states (B, L, D) and mask (B, L) padded with masked zeros to ``length`` >= L steps.

    Masked steps take no part in cross-attention, so the codes are those of the unpadded text
    (the logits within float rounding); batches of one length share a :class:`DecoderPool`
    decoder and its CUDA graph.
    """
    extra = length - cond.shape[1]
    if extra < 0:
        raise ValueError(f"cannot pad {cond.shape[1]} text steps to {length}")
    return F.pad(cond, (0, 0, 0, extra)), F.pad(cond_mask, (0, extra), value=False)


@torch.no_grad()
def teacher_forced(
    model: LM,
    codes: torch.Tensor,
    cond: torch.Tensor,
    cond_mask: torch.Tensor,
    weights: str = "fp32",
    fast_kernel: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``LM.forward`` through the decoding path: one cached chunk with weights stored as ``weights``.

    What a model with ``bf16`` or ``int8`` weights (see :mod:`musicgen.kernels`) predicts for given
    codes, to measure what the fewer bytes cost in cross-entropy.

    Args:
        codes: (B, K, T) codes.
        cond: (B, L, text_dim) text states; cond_mask: (B, L) bool.

    Returns:
        logits (B, K, T, card) and (K,) cross-entropy per codebook, as ``LM.forward``.
    """
    model.eval()
    pattern = model.pattern(codes.shape[2])
    seq = pattern.build(codes, model.special)  # (B, K, S)
    inputs = torch.cat([torch.full_like(seq[:, :, :1], model.special), seq[:, :, :-1]], dim=2)
    memory, memory_mask = model.condition(cond, cond_mask)
    cache = model.new_cache(
        codes.shape[0], seq.shape[2], cond.device, memory.dtype, fast_kernel, weights=weights
    )
    steps = model.logits(model.hidden_steps(inputs, memory, memory_mask, cache), cache)
    inv = pattern.inverse().to(codes.device)  # (K, T): the step of each (k, t)
    logits = torch.stack([steps[:, k, inv[k]] for k in range(codes.shape[1])], dim=1)
    return logits, masked_codebook_ce(logits, codes)


def forced_steps(
    pattern: Pattern, prompt: torch.Tensor | None, special: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the pattern sequence is fixed by a prompt, and to what.

    Args:
        pattern: the pattern of the whole output (T frames).
        prompt: (B, K, Tp) codes of the first Tp <= T frames, or None.
        special: the id of empty slots.

    Returns:
        forced (K, S) bool and values (B, K, S): the prompt's tokens in its slots.
    """
    K, S = pattern.layout.shape
    if prompt is None:
        return torch.zeros(K, S, dtype=torch.bool), torch.zeros(0, K, S, dtype=torch.long)
    B, Kp, Tp = prompt.shape
    if Kp != K or Tp > pattern.n_frames:
        raise ValueError(
            f"prompt {tuple(prompt.shape)} does not fit {K} codebooks x {pattern.n_frames}"
        )
    padded = torch.full((B, K, pattern.n_frames), special, dtype=torch.long, device=prompt.device)
    padded[:, :, :Tp] = prompt
    forced = pattern.mask & (pattern.layout < Tp)
    return forced, pattern.build(padded, special)


@torch.no_grad()
def generate(
    model: LM,
    cond: torch.Tensor,
    cond_mask: torch.Tensor,
    n_frames: int,
    sampling: SamplingConfig,
    generator: torch.Generator | None = None,
    prompt: torch.Tensor | None = None,
    use_cache: bool = True,
    fast_kernel: bool = True,
    weights: str = "fp32",
    static_step: bool = False,
    decoders: DecoderPool | None = None,
) -> torch.Tensor:
    """Samples codes for a batch of conditions, optionally continuing a prompt.

    The conditional and, with guidance, the null rows run as one batch (cfg_coef 1.0 runs no null
    rows); cross-attention keys and values are computed once and self-attention keys and values grow
    in a preallocated cache. The pattern's first step is fed the special token; slots the pattern
    leaves empty are filled with it too, and the result is reverted to frames. A prompt's slots are
    teacher-forced: the steps they fill entirely run as one chunk, later ones keep their prompt slots.

    Args:
        model: the LM (put in eval mode here).
        cond: (B, L, text_dim) text states.
        cond_mask: (B, L) bool.
        n_frames: T, frames of the output, prompt included.
        sampling: guidance and sampling settings.
        generator: the torch RNG that makes sampling reproducible.
        prompt: (B, K, Tp) codes (e.g. of an audio prompt) that the output starts with, or None.
        use_cache: False recomputes the whole sequence at every step (slow; for testing).
        fast_kernel: with the cache, run each decoding step in numba
            (:func:`musicgen.kernels.decoder_layer_step`; CPU float32 only, else torch).
        weights: with the cache, how the linear weights are stored for decoding: ``fp32``,
            ``bf16`` or ``int8`` (per-output-channel scales), see :mod:`musicgen.kernels`; sums
            are float32 on every path. The text projection stays float32.
        static_step: with the cache, run single steps as a :class:`StaticStep`: the same ops at
            every step, captured once in a CUDA graph on CUDA (untested here: no GPU); on the CPU
            it runs eagerly in torch (slower than the numba step; for testing).
        decoders: a :class:`DecoderPool` that keeps the decoder for later calls of the same
            shape (on CUDA: one graph capture for every batch of that shape); None builds one.

    Returns:
        codes (B, K, T) int64.
    """
    model.eval()
    B, K, special = cond.shape[0], model.cfg.n_codebooks, model.special
    device = cond.device
    guided = sampling.cfg_coef != 1.0
    memory, memory_mask = model.condition(cond, cond_mask)
    if guided:
        null, null_mask = model.condition(*null_condition(cond, cond_mask))
        memory, memory_mask = torch.cat([memory, null]), torch.cat([memory_mask, null_mask])
    pattern = model.pattern(n_frames)
    S = pattern.n_steps
    forced, prompt_seq = forced_steps(pattern, prompt, special)
    valid, forced, prompt_seq = pattern.mask.to(device), forced.to(device), prompt_seq.to(device)
    seq = torch.full((B, K, S), special, dtype=torch.long, device=device)
    if prompt is not None:
        seq = torch.where(forced, prompt_seq, seq)
    open_steps = (valid & ~forced).any(dim=0).nonzero()
    first = int(open_steps[0]) if len(open_steps) else S  # steps before it are all prompt
    n_cond = B if guided else None
    decoder = (decoders or StepDecoder)(
        model, memory, memory_mask, S, use_cache, fast_kernel, n_cond, weights, static_step
    )
    steps = torch.cat([torch.full_like(seq[:, :, :1], special), seq[:, :, :first]], dim=2)
    for s in range(first, S):
        logits = decoder(steps.repeat(2, 1, 1) if guided else steps)  # (B or 2B, K, card)
        if guided:
            cond_logits, null_logits = logits.float().split(B)
            logits = null_logits + (cond_logits - null_logits) * sampling.cfg_coef
        tokens = sample_next(logits.reshape(B * K, -1), sampling, generator).view(B, K)
        tokens = torch.where(valid[:, s], tokens, special)
        if prompt is not None:
            tokens = torch.where(forced[:, s], prompt_seq[:, :, s], tokens)
        seq[:, :, s] = tokens
        steps = tokens.unsqueeze(-1)
    return pattern.revert(seq)
