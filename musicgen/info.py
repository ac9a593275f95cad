"""``musicgen info [RUN_DIR]``: what a run holds, as a person reads it.

Clips, splits, codebooks, the LM and its training, then the evaluation: the paper's three numbers
first (FAD with VGGish, KL with PaSST, the CLAP score), each with the weights it was computed with,
then FAD, FAD∞ and KAD per embedder as a table, then the other metrics files one value a line.
A partly built run is fine: what is missing is listed with the stage that writes it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import re
from pathlib import Path

from musicgen.cli import HelpFormatter, UsageError

STAGE_OF = {  # the stage that writes what `musicgen info` shows under each label
    "download": "download",
    "resample": "resample",
    "split": "split",
    "codec": "codec_model",
    "codebooks": "tokenize",
    "text encoder": "text_model",
    "LM": "train",
    "training": "train",
    "generated": "generate",
}
EVAL_METRICS = "metrics/eval.json"  # the evaluate stage's DVC metrics
EVAL_DETAILS = "reports/eval/details.json"  # and the details beside them (weights, sizes, fits)
PAPER_NUMBERS = (  # label, metric, the embedder whose weights it names
    ("FAD (VGGish)", "fad_vggish", "vggish"),
    ("KL (PaSST)", "kl_passt", "passt"),
    ("CLAP score", "clap_score", "clap"),
)
EMBEDDER_SCORES = ("fad", "fad_inf", "kad")
KL_LINE = (("ref||gen", "kl_passt"), ("gen||ref", "kl_passt_qp"), ("both", "kl_passt_both"))
SHOWN_KEYS = {key for _, key in KL_LINE} | {
    "valid_ce",
    "test_ce",
    "clap_score",
    "clap_score_reference",
    "embedders",  # the details, in eval.json files written before they moved out
}


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _counts(path: Path, column: str) -> str | None:
    """``n rows (value n, ...)`` of a CSV column, or None if the file cannot be read."""
    import pandas as pd

    try:
        values = pd.read_csv(path, dtype=str, keep_default_na=False)[column]
    except (OSError, ValueError, KeyError, pd.errors.ParserError):
        return None
    counts = ", ".join(f"{k} {v}" for k, v in values.value_counts().items())
    return f"{len(values)} clips ({counts})"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _lm_parameters(lm_dir: Path) -> int | None:
    """Parameters in the LM's safetensors file, read from its header."""
    from safetensors import safe_open

    try:
        with safe_open(str(lm_dir / "model.safetensors"), "pt") as f:
            return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    except (OSError, ValueError):
        return None


def codebook_metrics(run: Path) -> tuple[Path, dict] | None:
    """The first metrics file with per-codebook usage (tokenize's, else the codec's, else any)."""
    files = [run / "metrics/tokens.json", run / "metrics/codec.json"]
    files += sorted((run / "metrics").glob("*.json"))
    for path in files:
        metrics = _read_json(path)
        if metrics and "codebook_0_distinct" in metrics:
            return path, metrics
    return None


def _split_text(split_dir: Path) -> str | None:
    """``train n, valid n, test n`` from the split lists."""
    files = {s: split_dir / f"{s}.txt" for s in ("train", "valid", "test")}
    if not all(f.is_file() for f in files.values()):
        return None
    return ", ".join(f"{s} {len(f.read_text().split())}" for s, f in files.items())


def _codec_text(config: dict | None) -> str | None:
    if not config:
        return None
    hop = math.prod(config.get("upsampling_ratios", [1]))
    return (
        f"EnCodec {config.get('sampling_rate')} Hz, hop {hop}, "
        f"{config.get('codebook_size')} codes per codebook"
    )


def _usage_text(run: Path) -> str | None:
    """Distinct codes (and entropy) per codebook, and the metrics file they come from."""
    found = codebook_metrics(run)
    if found is None:
        return None
    path, m = found
    K = sum(1 for k in m if re.fullmatch(r"codebook_\d+_distinct", k))
    text = "distinct codes " + " ".join(str(m[f"codebook_{k}_distinct"]) for k in range(K))
    if all(f"codebook_{k}_entropy_bits" in m for k in range(K)):
        entropy = " ".join(f"{m[f'codebook_{k}_entropy_bits']:.2f}" for k in range(K))
        text += f"; entropy {entropy} bits"
    return f"{text} ({path.relative_to(run)})"


def _text_encoder_text(config: dict | None) -> str | None:
    if not config:
        return None
    return (
        f"{config.get('model_type')}, d_model {config.get('d_model')}, layers "
        f"{config.get('num_layers')}, vocabulary {config.get('vocab_size')}"
    )


def _lm_text(lm_dir: Path) -> str | None:
    config = _read_json(lm_dir / "config.json")
    if not config:
        return None
    g = config.get
    pattern = g("pattern")
    text = (
        f"d_model {g('d_model')}, heads {g('n_heads')}, layers {g('n_layers')}, ffn {g('ffn_dim')}, "
        f"{g('n_codebooks')} codebooks x {g('card')}, pattern {pattern}"
        f"{' ' + str(g('delays')) if pattern == 'delay' else ''}, text_dim {g('text_dim')}"
    )
    n = _lm_parameters(lm_dir)
    text = text if n is None else f"{text}, {n:,} parameters"
    from musicgen.lora import ADAPTER, adapter_summary

    adapter = adapter_summary(lm_dir / ADAPTER, n)  # a LoRA run's (train.lora)
    return text if adapter is None else f"{text}; {adapter}"


def _training_text(train: dict | None) -> str | None:
    """Steps, tokens and validation CE of ``metrics/train.json``."""
    if not train:
        return None
    parts = [f"{_fmt(train.get('steps'))} steps"]
    if "tokens_seen" in train:
        parts.append(f"{_fmt(train['tokens_seen'])} tokens")
    if "val_ce" in train:
        extra = [
            f"{label} {train[key]:.4f}"
            for key, label in (("val_ce_init", "step 0"), ("val_ce_raw", "raw weights"))
            if key in train
        ]
        parts.append(
            f"val_ce {train['val_ce']:.4f} nats" + (f" ({', '.join(extra)})" if extra else "")
        )
    if "train_token_entropy" in train:
        parts.append(f"training-token entropy {train['train_token_entropy']:.4f}")
    return ", ".join(parts)


def flat_items(metrics: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Nested metrics as (dotted key, value) pairs, in key order: one value a line, never a dict."""
    items = []
    for key, value in sorted(metrics.items()):
        if isinstance(value, dict):
            items += flat_items(value, f"{prefix}{key}.")
        else:
            items.append((f"{prefix}{key}", value))
    return items


def _value_lines(items: list[tuple[str, object]], indent: str) -> list[str]:
    width = max((len(k) for k, _ in items), default=0)
    return [f"{indent}{k:<{width}}  {_fmt(v)}" for k, v in items]


def _paper_line(label: str, key: str, embedder: str, metrics: dict, details: dict) -> str:
    """One of the paper's numbers, with the weights it was computed with and its sample size."""
    if metrics.get(key) is None:
        return f"    {label:<14}not computed ({embedder} is not in evaluate.embedders)"
    info = details.get("embedders", {}).get(embedder, {})
    text = f"{_fmt(metrics[key])}"
    kl = details.get("kl_passt", {})
    if key == "kl_passt" and "n_segments" in kl:
        text += f" over {kl['n_segments']} segments ({kl.get('segments_per_clip', '?')} per clip)"
    elif key == "clap_score" and "clap_score_reference" in metrics:
        text += f" (reference clips {_fmt(metrics['clap_score_reference'])})"
    elif "n_gen" in info:
        text += f" ({info['n_gen']} vs {info.get('n_ref')} embeddings)"
    return f"    {label:<14}{text}; weights {info.get('weights', 'unknown')}"


def _embedder_table(metrics: dict, details: dict) -> list[str]:
    """FAD, FAD∞ and KAD per embedder, a row each, with sizes and weights."""
    names = [m.group(1) for k in metrics if (m := re.fullmatch(r"fad_(?!inf_)(\w+)", k))]
    if not names:
        return []
    rows = [("embedder", "FAD", "FAD∞", "KAD", "n gen/ref", "weights")]
    for name in names:
        info = details.get("embedders", {}).get(name, {})
        rows.append(
            (
                name,
                *(_fmt(metrics.get(f"{score}_{name}")) for score in EMBEDDER_SCORES),
                f"{info.get('n_gen', '?')}/{info.get('n_ref', '?')}",
                str(info.get("weights", "unknown")),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return [
        "    "
        + "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True))
        + f"  {row[-1]}"
        for row in rows
    ]


def _codebook_ce(details: dict, split: str) -> str | None:
    """``valid 6.56 7.27 ...``: a split's CE per codebook (details.json), or None."""
    keys = itertools.takewhile(
        details.__contains__, (f"{split}_ce_cb{k}" for k in itertools.count())
    )
    values = [details[key] for key in keys]
    return f"{split} " + " ".join(f"{v:.4f}" for v in values) if values else None


def _shown_in_the_evaluation(key: str) -> bool:
    """Whether :func:`evaluation_lines` shows ``metrics/eval.json``'s ``key`` above its rest."""
    return key in SHOWN_KEYS or re.fullmatch(r"(fad|fad_inf|kad)_\w+", key) is not None


def evaluation_lines(run: Path) -> list[str]:
    """The evaluate stage's numbers as a person reads them: the paper's three numbers (FAD with
    VGGish, KL with PaSST, CLAP) with their weights, a table per embedder, KL both ways, the LM's
    CE, then any other value of ``metrics/eval.json``; [] when there is none."""
    metrics = _read_json(run / EVAL_METRICS)
    if not isinstance(metrics, dict):
        return []
    details = _read_json(run / EVAL_DETAILS) or {}
    if "embedders" in metrics:  # written before the details moved out of the metrics
        details = {**metrics, **details}
    lines = ["  the paper's numbers"]
    lines += [_paper_line(*paper, metrics, details) for paper in PAPER_NUMBERS]
    lines += ["  per embedder", *_embedder_table(metrics, details)]
    if "kl_passt" in metrics:
        kl = ", ".join(f"{what} {_fmt(metrics.get(key))}" for what, key in KL_LINE)
        lines.append(f"  {'KL (PaSST)':<14}{kl}")
    ce = [f"{s} {_fmt(metrics[f'{s}_ce'])}" for s in ("valid", "test") if f"{s}_ce" in metrics]
    if ce:
        lines.append(f"  {'LM CE':<14}{', '.join(ce)} nats")
    per_codebook = [_codebook_ce(details, split) for split in ("valid", "test")]
    if any(per_codebook):
        lines.append(f"  {'per codebook':<14}{'; '.join(filter(None, per_codebook))}")
    rest = {k: v for k, v in metrics.items() if not _shown_in_the_evaluation(k)}
    return lines + (["  other values", *_value_lines(flat_items(rest), "    ")] if rest else [])


def _metrics_lines(run: Path) -> list[str]:
    """Every ``metrics/*.json`` but the evaluation's, one value a line (nested values with
    dotted keys)."""
    lines = []
    for path in sorted((run / "metrics").glob("*.json")):
        if path == run / EVAL_METRICS:
            continue
        metrics = _read_json(path)
        if not isinstance(metrics, dict):
            lines.append(f"  {path.relative_to(run)}: unreadable")
            continue
        lines += [f"  {path.relative_to(run)}", *_value_lines(flat_items(metrics), "    ")]
    return lines


def info_lines(run: Path) -> list[str]:
    """A terminal-readable summary of a run; what is missing is listed at the end."""
    generated = run / "data/generated/audio"
    sections = {
        "data": [
            ("download", "data/raw/status.csv", _counts(run / "data/raw/status.csv", "status")),
            (
                "resample",
                "data/audio/manifest.csv",
                _counts(run / "data/audio/manifest.csv", "status"),
            ),
            ("split", "data/split", _split_text(run / "data/split")),
        ],
        "models": [
            (
                "codec",
                "data/models/codec",
                _codec_text(_read_json(run / "data/models/codec/config.json")),
            ),
            ("codebooks", "metrics/tokens.json", _usage_text(run)),
            (
                "text encoder",
                "data/models/text",
                _text_encoder_text(_read_json(run / "data/models/text/config.json")),
            ),
            ("LM", "data/lm", _lm_text(run / "data/lm")),
            (
                "training",
                "metrics/train.json",
                _training_text(_read_json(run / "metrics/train.json")),
            ),
            (
                "generated",
                "data/generated/audio",
                f"{len(list(generated.glob('*.wav')))} wavs" if generated.is_dir() else None,
            ),
        ],
    }
    lines, missing = [f"run {run.resolve()}"], []
    for section, items in sections.items():
        lines.append(section)
        for label, path, text in items:
            if text is None:
                missing.append(f"  {path} (stage {STAGE_OF[label]})")
            else:
                lines.append(f"  {label:<14}{text}")
    evaluation = evaluation_lines(run)
    if evaluation:
        lines += [f"evaluation ({EVAL_METRICS}; weights and sizes: {EVAL_DETAILS})", *evaluation]
    metrics = _metrics_lines(run)
    if metrics:
        lines += ["other metrics" if evaluation else "metrics", *metrics]
    if missing:
        lines += ["missing (run `dvc repro` in the run to build them)", *missing]
    return lines


def info_command(args: argparse.Namespace) -> None:
    if not args.run_dir.is_dir():
        raise UsageError(f"{args.run_dir} is not a directory")
    print("\n".join(info_lines(args.run_dir)))


def add_info(commands) -> None:
    p = commands.add_parser(
        "info",
        help="what a run holds: clips, splits, codebooks, the LM, its training and metrics",
        description="Summarises a run of this pipeline (tolerates a partly built one and lists "
        "what is missing).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("run_dir", nargs="?", type=Path, default=Path("."), help="the run directory")
    p.set_defaults(run=info_command)
