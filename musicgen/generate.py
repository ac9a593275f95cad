"""Sampling from the LM: KV cache, classifier-free guidance, top-k / top-p, temperature."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from musicgen.lm import LM, null_condition


@dataclass
class SamplingConfig:
    cfg_coef: float = 3.0  # logits = uncond + (cond - uncond) * coef; 1.0 turns guidance off
    top_k: int = 250  # 0 disables
    top_p: float = 0.0  # nucleus sampling when > 0 (applied after top-k)
    temperature: float = 1.0  # 0 means greedy


def sample_next(
    logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None
) -> torch.Tensor:
    """Draws one token per row.

    Args:
        logits: (N, card).

    Returns:
        (N,) int64 tokens.
    """
    if cfg.temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / cfg.temperature
    if 0 < cfg.top_k < logits.shape[-1]:
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p > 0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cum - sorted_logits.softmax(-1) > cfg.top_p  # keep the first token past p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model: LM,
    cond: torch.Tensor,
    cond_mask: torch.Tensor,
    n_frames: int,
    sampling: SamplingConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Samples codes for a batch of conditions.

    The conditional and, with guidance, the unconditional rows run as one batch; cross-attention keys
    and values are computed once and self-attention keys and values grow in a preallocated cache.

    Args:
        model: the LM (put in eval mode here).
        cond: (B, L, text_dim) text states.
        cond_mask: (B, L) bool.
        n_frames: T, frames to generate.
        sampling: guidance and sampling settings.
        generator: the torch RNG that makes sampling reproducible.

    Returns:
        codes (B, K, T) int64.
    """
    model.eval()
    B, K = cond.shape[0], model.cfg.n_codebooks
    guided = sampling.cfg_coef != 1.0
    if guided:
        null, null_mask = null_condition(cond, cond_mask)
        cond, cond_mask = torch.cat([cond, null]), torch.cat([cond_mask, null_mask])
    pattern = model.pattern(n_frames)
    valid = pattern.mask.to(cond.device)  # (K, S)
    seq = torch.full((B, K, pattern.n_steps), model.special, dtype=torch.long, device=cond.device)
    cache = model.new_cache(cond.shape[0], pattern.n_steps, cond.device, cond.dtype)
    memory = model.text_proj(cond)
    step_in = torch.full((cond.shape[0], K, 1), model.special, dtype=torch.long, device=cond.device)
    for s in range(pattern.n_steps):
        logits = model.decode_steps(step_in, memory, cond_mask, cache)[
            :, :, -1
        ]  # (B or 2B, K, card)
        if guided:
            cond_logits, uncond_logits = logits.float().split(B)
            logits = uncond_logits + (cond_logits - uncond_logits) * sampling.cfg_coef
        tokens = sample_next(logits.reshape(B * K, -1), sampling, generator).view(B, K)
        tokens = torch.where(valid[:, s], tokens, model.special)
        seq[:, :, s] = tokens
        step_in = (torch.cat([tokens, tokens]) if guided else tokens).unsqueeze(-1)
    return pattern.revert(seq)
