"""LoRA adapters on the LM through peft (``train.lora``): low-rank updates of chosen linear layers,
the rest of the model frozen.

``train.lora.r`` > 0 injects peft's ``lora.Linear`` layers into the modules of the chosen roles
(:data:`ROLES`) and freezes every other parameter, so the training loop (:mod:`musicgen.train`)
gives gradients, optimizer state, EMA and checkpoints to the adapters alone. B starts at zero
(peft's default init), so the adapted model's outputs at step 0 are the base model's.

The train stage writes two things into its LM directory (``data/lm``):

- ``model.safetensors`` + ``config.json``: the base with the (EMA) adapters merged in (peft's
  ``merge_and_unload``), the plain LM every reader of a run takes (generate, evaluate,
  ``musicgen generate --model``, ``musicgen info``), as fast as the base model;
- ``adapter/``: the adapters alone, in peft's format (``adapter_model.safetensors``,
  ``adapter_config.json``) and ``base.json`` (the base: ``train.init_from`` and the content hash of
  its LM files), a few percent of the base's size; :func:`load_adapted` applies them to the base.

peft is imported inside the functions that need it (it imports transformers: ~3 s).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from musicgen.lm import LM

log = logging.getLogger(__name__)

ADAPTER = "adapter"  # the adapter's folder inside the LM directory
WEIGHTS = "adapter_model.safetensors"  # peft's file names
CONFIG = "adapter_config.json"
BASE = "base.json"  # what the adapter was trained on
NAME = "default"  # peft's adapter name

# role -> the LM's modules (full names, regular expressions; see musicgen.lm)
ROLES = {
    "self_attn": r"layers\.\d+\.self_attn\.(q|k|v|out)_proj",
    "cross_attn": r"layers\.\d+\.cross_attn\.(q|k|v|out)_proj",
    "ffn": r"layers\.\d+\.fc[12]",
    "text_proj": r"text_proj",
    "heads": r"heads\.\d+",
}


@dataclass
class LoraSettings:
    """``train.lora``: rank, scale, dropout and the roles of the adapted modules.

    Attributes:
        r: the rank; 0 turns LoRA off (the whole model trains).
        alpha: the update is scaled by ``alpha / r``.
        dropout: dropout on the adapters' input (training only).
        targets: roles from :data:`ROLES`.
    """

    r: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["self_attn", "cross_attn", "ffn"])

    def __post_init__(self) -> None:
        if self.r < 0:
            raise ValueError(f"train.lora.r must be >= 0 (0: off), got {self.r}")
        if not self.alpha > 0:
            raise ValueError(f"train.lora.alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"train.lora.dropout must be in [0, 1), got {self.dropout}")
        unknown = [t for t in self.targets if t not in ROLES]
        if unknown or not self.targets:
            raise ValueError(
                f"train.lora.targets must name some of {', '.join(ROLES)}; got {self.targets}"
            )

    @classmethod
    def from_params(cls, params: dict | None) -> LoraSettings:
        """From the ``train.lora`` section (None or missing keys: the defaults)."""
        return cls(**(params or {}))

    @property
    def enabled(self) -> bool:
        return self.r > 0

    def identity(self) -> dict | None:
        """What defines the adapters (the resume key's part), or None when LoRA is off."""
        if not self.enabled:
            return None
        return {"r": self.r, "alpha": self.alpha, "dropout": self.dropout, "targets": self.targets}

    def peft_config(self, base: str | None = None):
        """peft's ``LoraConfig`` for the LM (``base``: its ``base_model_name_or_path``)."""
        from peft import LoraConfig

        pattern = "|".join(ROLES[t] for t in self.targets)
        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=f"({pattern})",
            base_model_name_or_path=base,
        )


def attach(model: LM, settings: LoraSettings, base: str | None = None):
    """Injects the adapters into ``model`` in place and freezes everything else.

    The adapters' A is drawn from torch's global generator (seed it first), B is zero.

    Returns:
        peft's ``LoraModel`` holding ``model`` (its ``merge_and_unload`` merges them).
    """
    from peft import LoraModel

    return LoraModel(model, settings.peft_config(base), NAME)


def trainable_parameters(model: torch.nn.Module) -> int:
    """How many parameters the optimizer updates."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def merge(tuner, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``weights`` (the adapted model's full state dict) with the adapters merged in: the plain
    LM's state dict. The model ``tuner`` holds becomes that plain LM (peft's
    ``merge_and_unload``)."""
    tuner.model.load_state_dict(weights)
    merged = tuner.merge_and_unload()
    return {k: v.detach().cpu() for k, v in merged.state_dict().items()}


def save_adapter(
    tuner, weights: dict[str, torch.Tensor], out_dir: Path, base: dict | None = None
) -> None:
    """Writes the adapters of ``weights`` (the adapted model's full state dict, e.g. with the EMA
    adapters) in peft's format into ``out_dir``, with ``base.json`` (``base``: what they adapt).
    """
    from peft import get_peft_model_state_dict

    out_dir.mkdir(parents=True, exist_ok=True)
    adapter = get_peft_model_state_dict(tuner.model, state_dict=weights, adapter_name=NAME)
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in adapter.items()}, str(out_dir / WEIGHTS)
    )
    tuner.peft_config[NAME].save_pretrained(str(out_dir))
    (out_dir / BASE).write_text(json.dumps(base or {}, indent=2, sort_keys=True) + "\n")


def load_adapted(model: LM, adapter_dir: Path) -> LM:
    """``model`` (the base LM) with the adapters of ``adapter_dir`` applied and merged: a plain
    LM, in place."""
    from peft import LoraConfig, LoraModel, set_peft_model_state_dict

    config = LoraConfig.from_pretrained(str(adapter_dir))
    tuner = LoraModel(model, config, NAME)
    result = set_peft_model_state_dict(model, load_file(str(adapter_dir / WEIGHTS)), NAME)
    if result.unexpected_keys:
        raise ValueError(f"{adapter_dir}: adapter weights that fit no module of the LM")
    return tuner.merge_and_unload()


def adapter_summary(adapter_dir: Path, lm_parameters: int | None = None) -> str | None:
    """One line on an LM directory's adapter (``musicgen info``), or None without one."""
    config_path, weights = adapter_dir / CONFIG, adapter_dir / WEIGHTS
    if not (config_path.is_file() and weights.is_file()):
        return None
    from safetensors import safe_open

    config = json.loads(config_path.read_text())
    with safe_open(str(weights), "pt") as f:
        n = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    base = json.loads((adapter_dir / BASE).read_text()) if (adapter_dir / BASE).is_file() else {}
    share = f" ({100 * n / lm_parameters:.2f} % of the LM)" if lm_parameters else ""
    targets = ", ".join(t for t, rx in ROLES.items() if rx in config.get("target_modules", ""))
    return (
        f"LoRA r {config.get('r')}, alpha {config.get('lora_alpha')}, on {targets or '?'}: "
        f"{n:,} parameters{share}, {weights.stat().st_size / 2**20:.1f} MiB; "
        f"merged into model.safetensors; base {base.get('init_from') or 'random init'}"
    )


def prepare(model: LM, settings: LoraSettings, init_from: str | None, sharding: str = "none"):
    """The train stage's LoRA set-up: the adapters injected into ``model`` (seeded by torch's
    global generator), or None when ``train.lora.r`` is 0.

    Raises:
        ValueError: LoRA with ``train.sharding: fsdp`` (LoRA is for a base that fits one device).
    """
    if not settings.enabled:
        return None
    if sharding != "none":
        raise ValueError(
            "train.lora with train.sharding fsdp is not supported: LoRA trains a few percent of "
            "the weights of a base that fits one device; use train.sharding none (DDP)"
        )
    if init_from is None:
        log.warning("train.lora without train.init_from adapts a randomly initialised LM")
    tuner = attach(model, settings, init_from)
    log.info(
        "LoRA r %d on %s: %d trainable parameters of %d",
        settings.r,
        ", ".join(settings.targets),
        trainable_parameters(model),
        sum(p.numel() for p in model.parameters()),
    )
    return tuner


def write_outputs(
    tuner, ema: dict[str, torch.Tensor], out_dir: Path, base: dict | None
) -> dict[str, torch.Tensor]:
    """The LM weights the train stage writes: ``ema`` itself without LoRA; with it, the base
    with the EMA adapters merged, after writing the adapters into ``out_dir/adapter``.

    Args:
        tuner: :func:`prepare`'s result (None: no LoRA; a stale adapter folder is removed).
        ema: the training loop's EMA (of the trainable weights).
        out_dir: the LM directory.
        base: what the adapters adapt, for ``base.json``.
    """
    if tuner is None:
        shutil.rmtree(out_dir / ADAPTER, ignore_errors=True)
        return ema
    frozen = {k: v.detach().cpu() for k, v in tuner.model.state_dict().items()}
    weights = frozen | {k: v.cpu() for k, v in ema.items()}
    save_adapter(tuner, weights, out_dir / ADAPTER, base)
    return merge(tuner, weights)
