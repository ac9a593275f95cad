"""Our LM vs. Hugging Face's ``MusicgenForCausalLM``: generation steps/s and training tokens/s.

Both run in this process, on the CPU, in float32, with the same weights: a random Hugging Face
decoder is built from the preset's sizes, saved with ``save_pretrained`` and converted with
:func:`musicgen.convert.convert_hf`. Conditioning is the same random text states (already in the
decoder's width, so the converted ``text_proj`` is the identity) with a padding mask.

Generation: classifier-free guidance 3.0 (conditional and null rows in one batch on both sides),
top-k 250, temperature 1.0, ``frames`` codec frames (+3 steps of the delay pattern). Hugging Face is
called with what transformers 5.x needs to be correct (explicit encoder-decoder cache, all-ones
decoder mask, a GenerationConfig with the special ids, encoder states doubled as [cond; zeros]).

Training: one step is forward + backward + AdamW on a batch of codes (B, K, T) through the delay
pattern; tokens/s counts B * K * T codec tokens. Hugging Face gets the same delayed sequence and
labels (its loss: mean over codebooks of the cross-entropy over non-pad labels).

Each figure is the best of ``--repeats`` timed runs after one warm-up.

Usage:
    python benchmarks/bench_lm.py                       # the README's figures
    python benchmarks/bench_lm.py --gen-presets seed1 --batches 1 --train-presets tiny
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from transformers import GenerationConfig, MusicgenDecoderConfig, MusicgenForCausalLM
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from musicgen.convert import convert_hf
from musicgen.generate import SamplingConfig, generate
from musicgen.lm import LM, PRESETS, load_lm

K, CARD, TEXT_LEN = 4, 2048, 24


def build_pair(preset: str, tmp: Path) -> tuple[MusicgenForCausalLM, LM]:
    """A random Hugging Face decoder of the preset's sizes and our LM converted from it."""
    sizes = PRESETS[preset]
    config = MusicgenDecoderConfig(
        vocab_size=CARD,
        num_codebooks=K,
        hidden_size=sizes["d_model"],
        num_attention_heads=sizes["n_heads"],
        num_hidden_layers=sizes["n_layers"],
        ffn_dim=sizes["ffn_dim"],
        pad_token_id=CARD,
        bos_token_id=CARD,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        layerdrop=0.0,
    )
    torch.manual_seed(0)
    hf = MusicgenForCausalLM(config).eval()
    hf.save_pretrained(tmp / "hf")
    convert_hf(str(tmp / "hf"), tmp / "ours")
    return hf, load_lm(tmp / "ours")


def conditioning(batch: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random text states (B, L, D) and a mask (B, L) with the last rows padded."""
    gen = torch.Generator().manual_seed(1)
    states = torch.randn(batch, TEXT_LEN, dim, generator=gen)
    mask = torch.ones(batch, TEXT_LEN, dtype=torch.long)
    for b in range(1, batch):
        mask[b, TEXT_LEN - 3 * b :] = 0
    return states, mask


def best_time(fn, repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@torch.no_grad()
def hf_generate(hf: MusicgenForCausalLM, states, mask, n_steps: int, cfg_coef: float, top_k: int):
    batch = states.shape[0]
    config = GenerationConfig(
        decoder_start_token_id=CARD,
        pad_token_id=CARD,
        bos_token_id=CARD,
        eos_token_id=None,
        max_new_tokens=n_steps,
        num_return_sequences=1,
        do_sample=True,
        top_k=top_k,
        temperature=1.0,
        guidance_scale=cfg_coef,
        use_cache=True,
    )
    return hf.generate(
        torch.full((batch * K, 1), CARD),
        generation_config=config,
        attention_mask=torch.ones(batch * K, 1, dtype=torch.long),
        encoder_hidden_states=torch.cat([states, torch.zeros_like(states)]),
        encoder_attention_mask=torch.cat([mask, torch.zeros_like(mask)]),
        cache=EncoderDecoderCache(DynamicCache(), DynamicCache()),
    )


def bench_generation(preset: str, batches: list[int], frames: int, repeats: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        hf, ours = build_pair(preset, Path(tmp))
    for batch in batches:
        t_ours, t_hf, n_steps = time_generation(hf, ours, batch, frames, repeats)
        print(
            f"generate {preset:6s} batch {batch}  cfg 3.0  {n_steps} steps: "
            f"ours {n_steps / t_ours:7.2f} steps/s ({1000 * t_ours / n_steps:6.1f} ms/step)  "
            f"HF {n_steps / t_hf:7.2f} steps/s ({1000 * t_hf / n_steps:6.1f} ms/step)  "
            f"ratio {t_hf / t_ours:5.2f}x",
            flush=True,
        )


def time_generation(
    hf: MusicgenForCausalLM, ours: LM, batch: int, frames: int, repeats: int
) -> tuple[float, float, int]:
    """Seconds of our and Hugging Face's generation of ``frames`` frames, and the step count."""
    n_steps = ours.pattern(frames).n_steps
    sampling = SamplingConfig(cfg_coef=3.0, top_k=250, temperature=1.0)
    states, mask = conditioning(batch, ours.cfg.d_model)
    gen = torch.Generator().manual_seed(0)

    def run_ours():
        generate(ours, states, mask.bool(), frames, sampling, gen)

    def run_hf():
        hf_generate(hf, states, mask, n_steps, sampling.cfg_coef, sampling.top_k)

    t_hf = best_time(run_hf, repeats)
    return best_time(run_ours, repeats), t_hf, n_steps


def bench_training(preset: str, batch: int, frames: int, repeats: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        hf, ours = build_pair(preset, Path(tmp))
    hf.train()
    ours.train()
    gen = torch.Generator().manual_seed(2)
    codes = torch.randint(0, CARD, (batch, K, frames), generator=gen)  # (B, K, T)
    states, mask = conditioning(batch, ours.cfg.d_model)
    pattern = ours.pattern(frames)
    seq = pattern.build(codes, CARD)  # (B, K, S) with the special id at invalid positions
    start = torch.full((batch, K, 1), CARD)
    hf_inputs = torch.cat([start, seq[:, :, :-1]], dim=2).reshape(batch * K, -1)  # (B*K, S)
    hf_labels = seq.transpose(1, 2)  # (B, S, K); the special (= pad) id is ignored
    opt_hf = torch.optim.AdamW(hf.parameters(), lr=1e-4)
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-4)

    def step_hf():
        out = hf(
            input_ids=hf_inputs,
            encoder_hidden_states=states,
            encoder_attention_mask=mask,
            labels=hf_labels,
            use_cache=False,
        )
        out.loss.backward()
        opt_hf.step()
        opt_hf.zero_grad(set_to_none=True)

    def step_ours():
        _, ce = ours(codes, states, mask.bool())
        ce.mean().backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)

    t_hf, t_ours = best_time(step_hf, repeats), best_time(step_ours, repeats)
    tokens = batch * K * frames
    print(
        f"train    {preset:6s} batch {batch}  {frames} frames: "
        f"ours {tokens / t_ours:8.0f} tokens/s  HF {tokens / t_hf:8.0f} tokens/s  "
        f"ratio {t_hf / t_ours:5.2f}x",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gen-presets", nargs="*", default=["seed1", "small"])
    parser.add_argument("--batches", nargs="*", type=int, default=[1, 4])
    parser.add_argument("--frames", type=int, default=100, help="codec frames (50 per second)")
    parser.add_argument("--train-presets", nargs="*", default=["tiny", "seed1"])
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--train-frames", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), float32, CPU", flush=True)
    for preset in args.gen_presets:
        bench_generation(preset, args.batches, args.frames, args.repeats)
    for preset in args.train_presets:
        bench_training(preset, args.train_batch, args.train_frames, args.repeats)


if __name__ == "__main__":
    main()
