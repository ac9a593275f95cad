"""What storing the LM's decoding weights as bf16 or int8 costs a trained run in quality.

For a trained run of the pipeline (default: this workspace, whose DVC outputs are in ``data/``):
the LM in ``data/lm``, the tokens in ``data/tokens``, the clean-caption text states in
``data/text`` and the split lists in ``data/split``, read with the library's own loaders
(:func:`musicgen.lm.load_lm`, :class:`musicgen.data.store.CodesAndText`,
:func:`musicgen.pipeline.common.read_split`), as the train and evaluate stages read them.

Held-out cross-entropy: every clip of each split (``valid``, then ``test``) with its clean caption,
teacher-forced through the decoding path (:func:`musicgen.generate.teacher_forced`: one cached
chunk, the linear weights stored as each type of :data:`musicgen.kernels.WEIGHT_TYPES`), per
codebook and mean over codebooks, in batches. Each type runs on the numba path (the table) and on
the torch path (``fast_kernel=False``); the two must agree within 1e-4 nats per codebook (the
script exits with status 1 otherwise). The logit error of a type is its largest |logit - fp32
logit| over every held-out position, relative to the standard deviation of the fp32 logits (the
measure of ``tests/test_kernels.py::test_bf16_and_int8_logit_error_and_held_out_ce``); its top-1
agreement, the share of held-out positions whose argmax is fp32's (one step's flips, without the
divergence that follows a flip in generation). Both are the worst over the splits. Every type,
fp32 included, runs the numba kernels on the numba path, at any number of rows.

Greedy agreement: the first ``--captions`` validation captions, ``--frames`` frames (default: the
clip length), greedy (temperature 0) with guidance ``--cfg-coef``, generated in one batch with each
type; the share of tokens equal to fp32's and, per caption, the first frame where any codebook
differs (the frame count when none does).

Stored MB: the linear weights the decoding step reads (every ``nn.Linear`` but the text
projection, which stays float32), in the stored type, int8's per-channel scales included.

Usage:
    OMP_NUM_THREADS=1 python3 benchmarks/weights_quality.py            # this workspace's run
    python3 benchmarks/weights_quality.py --run /path/to/run --splits valid --captions 4 --frames 100
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from musicgen.data.store import CodesAndText
from musicgen.generate import SamplingConfig, generate, teacher_forced
from musicgen.kernels import WEIGHT_TYPES, quantize
from musicgen.lm import LM, load_lm
from musicgen.params import load_params
from musicgen.pipeline.common import read_split

PATH_TOLERANCE = 1e-4  # nats per codebook: numba path vs torch path


def stored_mb(model: LM, weights: str) -> float:
    """MB of the linear weights a decoding step reads, stored as ``weights`` (scales included)."""
    total = 0
    for layer in model.modules():
        if isinstance(layer, torch.nn.Linear) and layer is not model.text_proj:
            data, scale = quantize(layer.weight, weights)
            total += data.numel() * data.element_size()
            total += scale.numel() * scale.element_size() if weights == "int8" else 0
    return total / 1e6


@torch.no_grad()
def held_out(model: LM, data: CodesAndText, batch_size: int, types: list[str]) -> dict:
    """Teacher-forced CE of every clip of ``data`` with each stored type, on both paths.

    Returns:
        {"ce": {(type, numba?): (K,) mean CE}, "error": {type: max |Δlogit| / fp32 logit std},
        "top1": {type: share of positions whose argmax is fp32's}}.
    """
    K = model.cfg.n_codebooks
    ce = {(w, fast): np.zeros(K) for w in types for fast in (True, False)}
    largest, top1 = dict.fromkeys(types, 0.0), dict.fromkeys(types, 0.0)
    moments = np.zeros(3)  # count, sum and sum of squares of the fp32 logits
    for start in range(0, len(data), batch_size):
        rows = np.arange(start, min(start + batch_size, len(data)))
        b = data.batch(rows)
        reference = None
        for w in types:  # fp32 first: the reference
            for fast in (True, False):
                logits, batch_ce = teacher_forced(
                    model, b.codes, b.cond, b.cond_mask, weights=w, fast_kernel=fast
                )
                ce[w, fast] += batch_ce.double().numpy() * len(rows)
                if not fast:
                    continue
                if reference is None:
                    reference = logits
                    moments += [
                        logits.numel(),
                        float(logits.sum(dtype=torch.float64)),
                        float(logits.square().sum(dtype=torch.float64)),
                    ]
                largest[w] = max(largest[w], float((logits - reference).abs().max()))
                top1[w] += float((logits.argmax(-1) == reference.argmax(-1)).sum())
    n, s, s2 = moments
    spread = np.sqrt(s2 / n - (s / n) ** 2)
    return {
        "ce": {k: v / len(data) for k, v in ce.items()},
        "error": {w: e / spread for w, e in largest.items()},
        "top1": {w: t / (n / model.cfg.card) for w, t in top1.items()},
    }


@torch.no_grad()
def greedy_agreement(
    model: LM, data: CodesAndText, n: int, frames: int, types: list[str], cfg_coef: float
) -> dict[str, tuple[float, list[int]]]:
    """{type: (share of tokens equal to fp32's, first differing frame of each caption)}."""
    b = data.batch(np.arange(min(n, len(data))))
    greedy = SamplingConfig(cfg_coef=cfg_coef, temperature=0)
    codes = {w: generate(model, b.cond, b.cond_mask, frames, greedy, weights=w) for w in types}
    result = {}
    for w in types:
        same = codes[w] == codes["fp32"]  # (B, K, T)
        differs = ~same.all(dim=1)  # (B, T)
        first = [int(d.nonzero()[0]) if d.any() else frames for d in differs]
        result[w] = (same.double().mean().item(), first)
    return result


def identity(run: Path, lm_dir: Path, model: LM) -> list[str]:
    """Where the LM came from: its size, its file's hash, and the train stage of ``dvc.lock``."""
    c = model.cfg
    n_params = sum(p.numel() for p in model.parameters())
    digest = hashlib.md5((lm_dir / "model.safetensors").read_bytes()).hexdigest()
    lines = [
        f"LM {lm_dir}: {n_params:,} parameters ({c.n_layers} layers, d_model {c.d_model}, "
        f"ffn {c.ffn_dim}, {c.n_codebooks} codebooks x {c.card}, text_dim {c.text_dim}); "
        f"model.safetensors md5 {digest}"
    ]
    lock = run / "dvc.lock"
    stage = load_params(lock).get("stages", {}).get("train") if lock.exists() else None
    if stage is not None:
        params = stage["params"]["params.yaml"]
        train = params["train"]
        outs = {o["path"]: o.get("md5") for o in stage["outs"]}
        lines.append(
            f"made by the train stage in {lock}: lm preset {params['lm']['preset']}, "
            f"overrides {params['lm']['overrides'] or 'none'}, {train['steps']} steps, "
            f"seed {train['seed']}, init_from {train['init_from'] or 'none (from scratch)'}; "
            f"data/lm md5 {outs.get('data/lm')}"
        )
    for name in ("train", "eval"):
        path = run / "metrics" / f"{name}.json"
        if path.exists():
            m = json.loads(path.read_text())
            keys = ("parameters", "steps", "val_ce", "valid_ce", "test_ce")
            lines.append(f"{path}: " + ", ".join(f"{k} {m[k]:.6g}" for k in keys if k in m))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=__doc__[__doc__.index("Usage:") :],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--run", type=Path, default=Path("."), help="the run's workspace")
    parser.add_argument("--lm", type=Path, help="default: RUN/data/lm")
    parser.add_argument("--tokens", type=Path, help="default: RUN/data/tokens")
    parser.add_argument("--text", type=Path, help="default: RUN/data/text")
    parser.add_argument("--split", type=Path, help="default: RUN/data/split")
    parser.add_argument("--splits", nargs="+", default=["valid", "test"])
    parser.add_argument("--weights", nargs="+", default=list(WEIGHT_TYPES), choices=WEIGHT_TYPES)
    parser.add_argument("--batch-size", type=int, default=16, help="clips per teacher-forced pass")
    parser.add_argument("--captions", type=int, default=8, help="validation captions (greedy)")
    parser.add_argument("--frames", type=int, help="greedy frames; default: the clip length")
    parser.add_argument("--cfg-coef", type=float, default=3.0, help="greedy guidance")
    parser.add_argument("--threads", type=int, default=1, help="torch (and kernel) threads")
    args = parser.parse_args()
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    data_dir = args.run / "data"
    lm_dir = args.lm or data_dir / "lm"
    tokens, text = args.tokens or data_dir / "tokens", args.text or data_dir / "text"
    split_dir = args.split or data_dir / "split"
    types = ["fp32", *(w for w in args.weights if w != "fp32")]
    model = load_lm(lm_dir)
    print("\n".join(identity(args.run, lm_dir, model)), flush=True)

    splits = {s: CodesAndText(tokens, text, read_split(split_dir, s)) for s in args.splits}
    results = {s: held_out(model, d, args.batch_size, types) for s, d in splits.items()}
    valid = splits.get("valid") or next(iter(splits.values()))
    frames = args.frames or valid.n_frames
    agreement = greedy_agreement(model, valid, args.captions, frames, types, args.cfg_coef)

    clips = ", ".join(f"{s} {len(d)} clips x {d.n_frames} frames" for s, d in splits.items())
    n_captions = min(args.captions, len(valid))
    print(
        f"\nheld-out CE (nats, mean over {model.cfg.n_codebooks} codebooks; {clips}); greedy: "
        f"{n_captions} captions x {frames} frames, cfg {args.cfg_coef}\n"
    )
    ce_cols = "".join(f" {s} CE | Δ{s} |" for s in splits)
    print(
        f"| type | stored MB |{ce_cols} max abs Δlogit / std | teacher-forced top-1 = fp32 "
        "| greedy agreement | first diff frame |"
    )
    print("|---|---|" + "---|---|" * len(splits) + "---|---|---|---|")
    failed = []
    for w in types:
        cells = [w, f"{stored_mb(model, w):.2f}"]
        for s, r in results.items():
            ce, ce32 = r["ce"][w, True].mean(), r["ce"]["fp32", True].mean()
            cells += [f"{ce:.5f}", f"{ce - ce32:+.5f}"]
            gap = np.abs(r["ce"][w, True] - r["ce"][w, False]).max()
            if gap > PATH_TOLERANCE:
                failed.append(f"{w} {s}: numba vs torch CE differ by {gap:.2e}")
        share, first = agreement[w]
        error = max(r["error"][w] for r in results.values())
        top1 = min(r["top1"][w] for r in results.values())
        cells += [f"{100 * error:.2f} %", f"{100 * top1:.2f} %", f"{100 * share:.1f} %"]
        cells.append(f"median {np.median(first):g}, min {min(first)}" if w != "fp32" else "–")
        print("| " + " | ".join(cells) + " |")

    for s, r in results.items():
        print(f"\n{s} CE per codebook (numba path; torch path gap = max over codebooks):")
        for w in types:
            per = " ".join(f"{v:.5f}" for v in r["ce"][w, True])
            gap = np.abs(r["ce"][w, True] - r["ce"][w, False]).max()
            print(f"  {w}: {per}   torch path gap {gap:.1e}")
    print(f"\n{time.perf_counter() - started:.1f} s, {args.threads} thread(s)")
    if failed:
        print("FAILED: " + "; ".join(failed), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
