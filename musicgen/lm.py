"""The MusicGen language model over codebook patterns.

Architecture as in MusicGen (audiocraft ``LMModel``, Hugging Face ``MusicgenForCausalLM``): one
embedding table per codebook (``card + 1`` rows; id ``card`` is the special token), summed, plus
sinusoidal positions; pre-norm blocks of causal self-attention, cross-attention to the projected text
states (zeroed where padded) and a GELU feed-forward; a final LayerNorm; one linear head per codebook.
Hugging Face checkpoints convert to it exactly (``musicgen.convert``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.checkpoint import checkpoint

from musicgen.kernel_plans import plan_weights
from musicgen.kernels import (
    LayerArrays,
    LinearKernel,
    decoder_layer_step,
    decoder_steps,
    kernel_threads,
    layer_list,
)
from musicgen.patterns import Pattern, make_pattern

PRESETS: dict[str, dict[str, int]] = {
    # name: width, heads, layers, feed-forward width
    "tiny": dict(d_model=128, n_heads=4, n_layers=3, ffn_dim=512),  # tests, embedded default
    "seed1": dict(d_model=1024, n_heads=8, n_layers=8, ffn_dim=2048),  # the seed's MusicGen-1
    "seed2": dict(d_model=2048, n_heads=16, n_layers=16, ffn_dim=4096),
    "small": dict(d_model=1024, n_heads=16, n_layers=24, ffn_dim=4096),  # musicgen-small
    "medium": dict(d_model=1536, n_heads=24, n_layers=48, ffn_dim=6144),
    "large": dict(d_model=2048, n_heads=32, n_layers=48, ffn_dim=8192),
}


@dataclass
class LMConfig:
    n_codebooks: int = 4  # K, EnCodec 32 kHz at 2.2 kbps
    card: int = 2048  # codebook size; id `card` is the special (start / empty / pad) token
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 3
    ffn_dim: int = 512
    text_dim: int = 768  # width of the text encoder's states (t5-base: 768)
    dropout: float = 0.0
    pattern: str = "delay"  # delay | parallel | unroll | coarse_first
    delays: list[int] = field(default_factory=lambda: [0, 1, 2, 3])  # for `delay`

    @classmethod
    def from_preset(cls, preset: str, **overrides) -> LMConfig:
        if preset not in PRESETS:
            raise ValueError(f"unknown LM preset '{preset}'; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[preset], **overrides})

    def to_dict(self) -> dict:
        return asdict(self)


def sinusoidal_positions(
    positions: torch.Tensor, dim: int, max_period: float = 10000.0
) -> torch.Tensor:
    """MusicGen's sinusoidal embedding, ``[cos, sin]`` halves.

    The frequencies are computed in the same order of float32 operations as Hugging Face's
    ``MusicgenSinusoidalPositionalEmbedding``, so that positions agree bit for bit.

    Args:
        positions: (S,) integer positions.
        dim: the embedding width (even).

    Returns:
        (S, dim) float32.
    """
    half = dim // 2
    step = math.log(max_period) / (half - 1)
    freqs = torch.exp(torch.arange(half, device=positions.device).float() * -step)
    angles = positions.float().unsqueeze(1) * freqs.unsqueeze(0)  # (S, half)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class KVCache:
    """Self-attention keys and values for each layer, preallocated to ``max_len`` steps.

    ``kernel``, if given, runs the step's projections (:class:`musicgen.kernels.LinearKernel`: all
    rows times each weight, read once, in the weights' stored type). ``n_cond``, if given, says
    that only the first ``n_cond`` rows have a text condition and the others are null conditions
    (classifier-free guidance): their cross-attention output is exactly zero (all-zero memory, see
    ``LM.condition``), so it is not computed.

    With a kernel, a step of one new position runs each layer in numba
    (:func:`musicgen.kernels.decoder_layer_step`, see ``Block.forward``) on numpy views of the
    layer's parameters and of this cache, kept in ``layer_arrays``; from the second step on, all
    layers in one call (``fused``, see ``LM.fused_layers``). ``fused_steps`` counts those layer
    steps.
    """

    def __init__(
        self,
        n_layers: int,
        batch: int,
        n_heads: int,
        head_dim: int,
        max_len: int,
        device: torch.device,
        dtype: torch.dtype,
        kernel: LinearKernel | None = None,
        n_cond: int | None = None,
        zeroed: bool = True,
    ):
        shape = (batch, n_heads, max_len, head_dim)
        self.kernel, self.n_cond = kernel, n_cond
        # Steps not yet written are read only by the static step (masked, but 0 * NaN is NaN);
        # the dynamic paths read the written steps alone, so their cache need not be zeroed.
        new = torch.zeros if zeroed else torch.empty
        self.k = [new(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.v = [new(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.length = 0  # steps written so far
        self.cross: list[tuple[torch.Tensor, torch.Tensor]] = []  # per-layer text keys/values
        self.cross_mask: torch.Tensor | None = None  # (B, 1, 1, L) bool
        self.stale_text: set[int] = set()  # layers whose text keys a restart made stale
        self.layer_arrays: list[LayerArrays | None] = []  # per layer, for the fused step
        self.fused = None  # all of layer_arrays as a numba typed list, see LM.fused_layers
        self.fused_steps = 0
        self.positions: torch.Tensor | None = None  # (max_len, D) sinusoidal, see LM.embed_steps
        # (1,) int64: when set, a single new step is written and read at this position (a tensor,
        # so the step's ops are the same at every step: see musicgen.generate.StaticStep)
        self.position: torch.Tensor | None = None

    def numba_step(self, x: torch.Tensor, training: bool) -> bool:
        """Whether the numba kernels run x (B, S, D): one new position (S = 1) at no tensor
        position, outside training, with a kernel that handles x."""
        return (
            self.kernel is not None
            and x.shape[1] == 1
            and not training
            and self.position is None
            and self.kernel.handles(x)
        )

    def restart(self) -> None:
        """Empties the cache for a new sequence, keeping its tensors (and so the views of them a
        numba step or a CUDA graph holds): steps are written again from 0, and the text keys and
        values are stale until ``LM.refresh_text`` writes the new ones into the same tensors."""
        self.length = 0
        self.stale_text = set(range(len(self.cross)))

    def text_rows(self, rows: int) -> int:
        """How many of ``rows`` rows have a text condition (the first ones; see ``n_cond``)."""
        return rows if self.n_cond is None else self.n_cond


def project(layer: nn.Linear, x: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
    """``layer(x)``, through the decoding kernel when the cache asks for it."""
    if cache is not None and cache.kernel is not None:
        return cache.kernel(layer, x)
    return layer(x)


class Attention(nn.Module):
    """Multi-head attention without biases, as in MusicGen."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        self.dropout = dropout

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, D) -> (B, H, S, D / H)."""
        B, S, _ = x.shape
        return x.view(B, S, self.n_heads, self.head_dim).transpose(1, 2)

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Scaled dot-product attention over heads, then the output projection; (B, S, D)."""
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=p, is_causal=is_causal
        )
        B, H, S, hd = y.shape
        return project(self.out_proj, y.transpose(1, 2).reshape(B, S, H * hd), cache)


class Block(nn.Module):
    """Pre-norm self-attention, cross-attention and feed-forward, each with a residual."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.self_attn = Attention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.self_attn_layer_norm = nn.LayerNorm(cfg.d_model)
        self.cross_attn = Attention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.cross_attn_layer_norm = nn.LayerNorm(cfg.d_model)
        self.fc1 = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False)
        self.fc2 = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=False)
        self.final_layer_norm = nn.LayerNorm(cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def self_attention(self, x: torch.Tensor, cache: KVCache | None, layer: int) -> torch.Tensor:
        a = self.self_attn
        q, k, v = (a.heads(project(p, x, cache)) for p in (a.q_proj, a.k_proj, a.v_proj))
        if cache is None:
            return a.attend(q, k, v, is_causal=True)
        if cache.position is not None:  # one step at a tensor position, (1, max_len) mask
            k_all, v_all = cache.k[layer], cache.v[layer]
            k_all.index_copy_(2, cache.position, k.to(k_all.dtype))
            v_all.index_copy_(2, cache.position, v.to(v_all.dtype))
            visible = torch.arange(k_all.shape[2], device=x.device)[None] <= cache.position
            return a.attend(q, k_all, v_all, mask=visible, cache=cache)
        start, n = cache.length, x.shape[1]
        cache.k[layer][:, :, start : start + n] = k
        cache.v[layer][:, :, start : start + n] = v
        k, v = cache.k[layer][:, :, : start + n], cache.v[layer][:, :, : start + n]
        if n == 1:
            return a.attend(q, k, v, cache=cache)
        causal = torch.ones(n, start + n, dtype=torch.bool, device=x.device).tril(start)
        return a.attend(q, k, v, mask=causal, cache=cache)

    def text_keys(
        self,
        memory: torch.Tensor | None,
        memory_mask: torch.Tensor | None,
        cache: KVCache | None,
        layer: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cross-attention keys and values (rows, H, L, hd) and mask (rows, 1, 1, L) of the text.

        ``rows`` is the cache's ``n_cond`` if set, else all rows. With a cache they are computed
        on the first call and kept (contiguous).
        """
        kept = cache is not None and len(cache.cross) > layer
        if kept and layer not in cache.stale_text:
            return *cache.cross[layer], cache.cross_mask
        a = self.cross_attn
        rows = memory.shape[0] if cache is None else cache.text_rows(memory.shape[0])
        memory = memory[:rows]
        k, v = (a.heads(project(p, memory, cache)).contiguous() for p in (a.k_proj, a.v_proj))
        mask = memory_mask[:rows, None, None, :]
        if kept:  # a restarted cache: the new text into the tensors it holds
            for old, new in zip(cache.cross[layer], (k, v), strict=True):
                old.copy_(new)
            cache.cross_mask.copy_(mask)
            cache.stale_text.discard(layer)
            return *cache.cross[layer], cache.cross_mask
        if cache is not None:
            mask = mask.clone()  # the cache's own, so that a restart writes into it
            cache.cross.append((k, v))
            cache.cross_mask = mask
        return k, v, mask

    def cross_attention(
        self,
        x: torch.Tensor,
        memory: torch.Tensor | None,
        memory_mask: torch.Tensor | None,
        cache: KVCache | None,
        layer: int,
    ) -> torch.Tensor:
        a = self.cross_attn
        k, v, mask = self.text_keys(memory, memory_mask, cache, layer)
        rows = k.shape[0]
        q = a.heads(project(a.q_proj, x[:rows], cache))
        y = a.attend(q, k, v, mask=mask, cache=cache)  # (rows, S, D)
        if rows < x.shape[0]:  # null rows: exactly zero
            y = torch.cat([y, y.new_zeros(x.shape[0] - rows, *y.shape[1:])])
        return y

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor | None,
        memory_mask: torch.Tensor | None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        """(B, S, D) -> (B, S, D); a single new step with a kernel cache runs fused in numba."""
        if cache is not None and cache.numba_step(x, self.training):
            arrays = self.step_arrays(memory, memory_mask, cache, layer)
            if arrays is not None:
                cache.fused_steps += 1
                n_cond = cache.text_rows(x.shape[0])
                x = x.reshape(x.shape[0], -1).contiguous().numpy()
                y = decoder_layer_step(x, cache.length, n_cond, arrays)
                return torch.from_numpy(y).unsqueeze(1)
        x = x + self.drop(self.self_attention(self.self_attn_layer_norm(x), cache, layer))
        x = x + self.drop(
            self.cross_attention(self.cross_attn_layer_norm(x), memory, memory_mask, cache, layer)
        )
        h = F.gelu(project(self.fc1, self.final_layer_norm(x), cache))
        return x + self.drop(project(self.fc2, h, cache))

    def step_arrays(
        self,
        memory: torch.Tensor | None,
        memory_mask: torch.Tensor | None,
        cache: KVCache,
        layer: int,
    ) -> LayerArrays | None:
        """This layer's numpy views for the fused step, made on the first step and kept in the cache.

        None (the torch path runs) if the kernel does not hold all the layer's weights or the
        LayerNorms differ in ``eps``.
        """
        while len(cache.layer_arrays) <= layer:
            cache.layer_arrays.append(None)
        if cache.layer_arrays[layer] is None:
            norms = (self.self_attn_layer_norm, self.cross_attn_layer_norm, self.final_layer_norm)
            linears = (self.self_attn.q_proj, self.self_attn.k_proj, self.self_attn.v_proj)
            linears += (self.self_attn.out_proj, self.cross_attn.q_proj, self.cross_attn.out_proj)
            weights = [cache.kernel.weight(p) for p in (*linears, self.fc1, self.fc2)]
            k_cache, v_cache = cache.k[layer], cache.v[layer]
            if (
                any(w is None for w in weights)
                or len({n.eps for n in norms}) > 1
                or not cache.kernel.handles(k_cache)
            ):
                return None
            nw = [t.detach().numpy() for n in norms for t in (n.weight, n.bias)]
            k, v, mask = self.text_keys(memory, memory_mask, cache, layer)
            self_mask = np.ones((k_cache.shape[0], k_cache.shape[2]), dtype=bool)
            cache.layer_arrays[layer] = LayerArrays(
                norms[0].eps,
                *nw[:2],
                *weights[:4],
                k_cache.numpy(),
                v_cache.numpy(),
                self_mask,
                *nw[2:4],
                *weights[4:6],
                k.detach().numpy(),
                v.detach().numpy(),
                mask[:, 0, 0].contiguous().numpy(),
                *nw[4:],
                *weights[6:],
            )
        return cache.layer_arrays[layer]


def null_condition(
    cond: torch.Tensor, cond_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The condition of classifier-free guidance's unconditional rows: no text at all.

    Zero states with every position masked. ``LM.condition`` zeroes masked positions after the text
    projection, so the null row's memory is all zeros and its cross-attention output is exactly zero,
    as in audiocraft (a masked empty text) and Hugging Face (zero encoder states, zero mask).

    Args:
        cond: (B, L, D) text states.
        cond_mask: (B, L) bool, True for real tokens.
    """
    return torch.zeros_like(cond), torch.zeros_like(cond_mask)


def drop_condition(
    cond: torch.Tensor, cond_mask: torch.Tensor, drop: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replaces the rows where ``drop`` (B,) is True by the null condition."""
    null, null_mask = null_condition(cond, cond_mask)
    cond = torch.where(drop[:, None, None], null, cond)
    return cond, torch.where(drop[:, None], null_mask, cond_mask)


def masked_codebook_ce(
    logits: torch.Tensor, codes: torch.Tensor, frame_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy per codebook over valid frames.

    Args:
        logits: (B, K, T, card).
        codes: (B, K, T) targets.
        frame_mask: (B, T) bool, True for real (unpadded) frames; None means all.

    Returns:
        (K,) mean cross-entropy of each codebook in nats.
    """
    B, K, T, card = logits.shape
    ce = F.cross_entropy(logits.reshape(-1, card).float(), codes.reshape(-1), reduction="none")
    ce = ce.view(B, K, T)
    if frame_mask is None:
        return ce.mean(dim=(0, 2))
    w = frame_mask[:, None, :].to(ce.dtype).expand(B, K, T)
    return (ce * w).sum(dim=(0, 2)) / w.sum(dim=(0, 2)).clamp(min=1)


class LM(nn.Module):
    """A transformer LM over a codebook pattern, conditioned on text states by cross-attention."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.ModuleList(
            nn.Embedding(cfg.card + 1, cfg.d_model) for _ in range(cfg.n_codebooks)
        )
        self.text_proj = nn.Linear(cfg.text_dim, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.heads = nn.ModuleList(
            nn.Linear(cfg.d_model, cfg.card, bias=False) for _ in range(cfg.n_codebooks)
        )
        self.apply(self._init_weights)
        self._kernel_memo: tuple[tuple, dict] | None = None  # see decoding_kernel
        self.grad_checkpointing = False  # recompute each block in the backward pass (training)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @property
    def special(self) -> int:
        return self.cfg.card

    def pattern(self, n_frames: int) -> Pattern:
        return make_pattern(self.cfg.pattern, self.cfg.n_codebooks, n_frames, self.cfg.delays)

    def condition(
        self, cond: torch.Tensor, cond_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The cross-attention memory: projected text states, zero where masked, and its mask.

        As in audiocraft's T5 conditioner and Hugging Face's ``MusicgenForConditionalGeneration``,
        padded positions are zeroed after the projection (its bias included). A row without any real
        token (the null condition) attends to all its positions: they are all zero, so its
        cross-attention output is exactly zero, which is also what Hugging Face computes for an
        all-zero encoder mask.

        Args:
            cond: (B, L, text_dim) text states.
            cond_mask: (B, L) bool, True for real tokens.

        Returns:
            memory (B, L, D) and memory_mask (B, L) bool.
        """
        memory = self.text_proj(cond)
        memory = memory * cond_mask.unsqueeze(-1).to(memory.dtype)
        empty = ~cond_mask.any(dim=1, keepdim=True)  # (B, 1)
        return memory, cond_mask | empty

    def embed_steps(
        self, seq: torch.Tensor, offset: int = 0, cache: KVCache | None = None
    ) -> torch.Tensor:
        """Summed codebook embeddings plus positions: (B, K, S) -> (B, S, D).

        With a cache, the positions come from a table of all its steps, made on the first call.
        """
        x = sum(F.embedding(seq[:, k], emb.weight) for k, emb in enumerate(self.embed))
        if cache is None:
            pos = torch.arange(offset, offset + seq.shape[2], device=seq.device)
            return x + sinusoidal_positions(pos, self.cfg.d_model).to(x.dtype)
        if cache.positions is None:
            pos = torch.arange(cache.k[0].shape[2], device=seq.device)
            cache.positions = sinusoidal_positions(pos, self.cfg.d_model).to(x.dtype)
        if cache.position is not None:
            return x + cache.positions.index_select(0, cache.position)
        return x + cache.positions[offset : offset + seq.shape[2]]

    def hidden_steps(
        self,
        seq: torch.Tensor,
        memory: torch.Tensor | None,
        memory_mask: torch.Tensor | None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """The transformer over input steps, up to the final norm.

        Args:
            seq: (B, K, S) input tokens.
            memory: (B, L, D) projected text states from ``condition`` (None when cached).
            memory_mask: (B, L) bool from ``condition``.
            cache: the KV cache for incremental decoding, or None.

        Returns:
            (B, S, D) hidden states.
        """
        x = self.embed_steps(seq, cache.length if cache is not None else 0, cache)
        layers = self.fused_layers(x, cache)
        if layers is not None:  # every layer in one numba call (see Block.forward)
            h = x.reshape(x.shape[0], -1).contiguous().numpy()
            y = decoder_steps(h, cache.length, cache.text_rows(x.shape[0]), layers)
            x = torch.from_numpy(y).unsqueeze(1)
            cache.fused_steps += len(self.layers)
            cache.length += 1
            return self.norm(x)
        for i, layer in enumerate(self.layers):
            if self.grad_checkpointing and self.training and cache is None:
                x = checkpoint(layer, x, memory, memory_mask, use_reentrant=False)
            else:
                x = layer(x, memory, memory_mask, cache, i)
        if cache is not None:
            cache.length += seq.shape[2]
        return self.norm(x)

    def refresh_text(self, memory: torch.Tensor, memory_mask: torch.Tensor, cache: KVCache):
        """Writes the text keys and values of ``memory`` (B, L, D) into a restarted cache's
        tensors (see ``KVCache.restart``)."""
        for i, layer in enumerate(self.layers):
            layer.text_keys(memory, memory_mask, cache, i)

    def fused_layers(self, x: torch.Tensor, cache: KVCache | None):
        """The typed list of every layer's arrays for one new step (x (B, 1, D)), or None.

        None unless the kernels run x (``KVCache.numba_step``) and every layer already made its
        arrays (on the first step, which runs layer by layer: ``Block.step_arrays``).
        """
        if cache is None or not cache.numba_step(x, self.training):
            return None
        if cache.fused is None:
            arrays = cache.layer_arrays
            if len(arrays) < len(self.layers) or any(a is None for a in arrays):
                return None
            cache.fused = layer_list(arrays[: len(self.layers)])
        return cache.fused

    def decode_steps(
        self,
        seq: torch.Tensor,
        memory: torch.Tensor | None,
        memory_mask: torch.Tensor | None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Logits (B, K, S, card) of every codebook at every input step (see ``hidden_steps``).

        This is the interleaved-sequence interface, the counterpart of Hugging Face's
        ``MusicgenForCausalLM`` on ``input_ids`` (B * K, S).
        """
        return self.logits(self.hidden_steps(seq, memory, memory_mask, cache))

    def logits(self, h: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Every codebook's head: hidden states (B, S, D) -> logits (B, K, S, card)."""
        return torch.stack([project(head, h, cache) for head in self.heads], dim=1)

    def forward(
        self,
        codes: torch.Tensor,
        cond: torch.Tensor,
        cond_mask: torch.Tensor,
        frame_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced pass over a pattern.

        Args:
            codes: (B, K, T) codes.
            cond: (B, L, text_dim) text states.
            cond_mask: (B, L) bool, True for real tokens.
            frame_mask: (B, T) bool, True for real frames (None: all).

        Returns:
            logits (B, K, T, card) per frame, and (K,) cross-entropy per codebook; the training loss
            is its mean.
        """
        pattern = self.pattern(codes.shape[2])
        seq = pattern.build(codes, self.special)  # (B, K, S)
        start = torch.full_like(seq[:, :, :1], self.special)
        inputs = torch.cat([start, seq[:, :, :-1]], dim=2)  # step s sees the sequence up to s - 1
        h = self.hidden_steps(inputs, *self.condition(cond, cond_mask))  # (B, S, D)
        inv = pattern.inverse().to(h.device)  # (K, T): the step of each (k, t)
        # Heads only where the pattern puts codes: the same as reverting full logits, cheaper.
        logits = torch.stack([head(h[:, inv[k]]) for k, head in enumerate(self.heads)], dim=1)
        return logits, masked_codebook_ce(logits, codes, frame_mask)

    def decoding_kernel(
        self, weights: str, use_numba: bool, compute_dtype: torch.dtype | None = None
    ) -> LinearKernel:
        """A :class:`LinearKernel` over this model's weights, kept while they stay the same.

        Packing (and for bf16 / int8 converting) every weight takes ~1 s for ``seed1``, so it is
        done once per weight type and compute dtype, not at every ``generate`` call; a parameter
        changed in place (its version counter), moved or replaced drops them all.
        """
        stamp = tuple((p.data_ptr(), p._version, p.device) for p in self.parameters())
        if self._kernel_memo is None or self._kernel_memo[0] != stamp:
            self._kernel_memo = (stamp, {})
        kernels = self._kernel_memo[1]
        key = (weights, use_numba, compute_dtype)
        if key not in kernels:
            kernels[key] = LinearKernel(self, weights, use_numba, compute_dtype)
        return kernels[key]

    def new_cache(
        self,
        batch: int,
        max_len: int,
        device: torch.device,
        dtype: torch.dtype,
        fast_kernel: bool = False,
        n_cond: int | None = None,
        weights: str = "fp32",
        compute_dtype: torch.dtype | None = None,
    ) -> KVCache:
        """A cache for ``batch`` rows and ``max_len`` steps (see :class:`KVCache`).

        ``fast_kernel`` adds a :class:`LinearKernel` that runs the numba kernels; ``weights``
        (``fp32 | bf16 | int8``) is how it stores the linear weights (``bf16`` or ``int8`` without
        ``fast_kernel``: torch multiplies by their float value). ``compute_dtype`` (the autocast
        dtype the decoding runs under, e.g. fp16 on CUDA) has the torch path read weights made
        once in that dtype instead of casting them at every step. ``n_cond`` rows have a text
        condition, the rest are null conditions (None: all rows have one).
        """
        cfg = self.cfg
        head_dim = cfg.d_model // cfg.n_heads
        kernel = None
        if fast_kernel or weights != "fp32" or compute_dtype is not None:
            kernel = self.decoding_kernel(weights, fast_kernel, compute_dtype)
            arrays = kernel.arrays()  # none on CUDA or without numba
            if arrays:  # the fastest block sizes (or BLAS) here at the step's row counts
                plan_weights(arrays, [batch, batch if n_cond is None else n_cond], kernel_threads())
        return KVCache(
            cfg.n_layers,
            batch,
            cfg.n_heads,
            head_dim,
            max_len,
            device,
            dtype,
            kernel,
            n_cond,
            zeroed=not fast_kernel,  # the numba step reads written steps only (StaticStep: none)
        )


def save_lm(out_dir: Path, weights: dict[str, torch.Tensor], cfg: LMConfig) -> None:
    """Writes ``model.safetensors`` and ``config.json``: the LM directory format."""
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(out_dir / "model.safetensors"))
    (out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")


def load_lm(lm_dir: Path, device: torch.device | str = "cpu") -> LM:
    """The LM saved by :func:`save_lm` in ``lm_dir``, in eval mode on ``device``."""
    cfg = LMConfig(**json.loads((lm_dir / "config.json").read_text()))
    model = LM(cfg)
    model.load_state_dict(load_file(str(lm_dir / "model.safetensors")))
    return model.to(device).eval()
