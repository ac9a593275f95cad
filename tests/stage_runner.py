"""The pipeline's stages called directly (``musicgen.pipeline.*``, no DVC) in a temporary folder.

Tests that check what a stage computes, not DVC's bookkeeping, run the stage functions the stage
scripts call, with the project's ``params.yaml`` and a few values changed, on the layout of
``dvc.yaml`` under ``root``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from musicgen.params import load_params
from musicgen.pipeline import captions, codes, prepare, sources

ROOT = Path(__file__).resolve().parents[1]


def project_params(overrides: dict[tuple[str, ...], object]) -> dict:
    """``params.yaml`` of the project with ``overrides`` (key path -> value) applied."""
    params = copy.deepcopy(load_params(ROOT / "params.yaml"))
    for keys, value in overrides.items():
        node = params
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    return params


@dataclass
class Layout:
    """The data folders of ``dvc.yaml`` under ``root``."""

    root: Path

    def __getattr__(self, name: str) -> Path:
        paths = {
            "raw": "data/raw",
            "store": "data/downloads",
            "audio": "data/audio",
            "split": "data/split",
            "codec": "data/models/codec",
            "text_model": "data/models/text",
            "tokens": "data/tokens",
            "text": "data/text",
            "lm": "data/lm",
            "checkpoint": "data/checkpoint",
            "generated": "data/generated",
            "metrics": "metrics",
            "plots": "plots",
        }
        if name not in paths:
            raise AttributeError(name)
        return self.root / paths[name]


def prepare_data(root: Path, params: dict) -> Layout:
    """download, resample and split; returns the layout."""
    d = Layout(root)
    sources.download(params["data"], d.raw, d.store, progress=False)
    prepare.resample(params["resample"], d.raw, d.audio, progress=False)
    prepare.split(params["split"], d.raw, d.audio, d.split, d.metrics / "split.json")
    return d


def build_models(d: Layout, params: dict) -> None:
    """codec_model and text_model."""
    sr = params["resample"]["sample_rate"]
    codes.codec_model(params["codec"], sr, d.audio, d.split, d.codec, progress=False)
    captions.text_model(params["text"], d.raw, d.split, d.text_model)


def tokenize(d: Layout, params: dict, out: Path, metrics: Path) -> None:
    """The tokenize stage into ``out``, with the stage's params."""
    codes.tokenize(
        params["tokenize"],
        params["resample"]["sample_rate"],
        params["codec"]["n_codebooks"],
        d.audio,
        d.codec,
        d.split,
        out,
        metrics,
        progress=False,
    )


def encode_text(d: Layout, params: dict, out: Path) -> None:
    """The encode_text stage into ``out``."""
    captions.encode_text(params["encode_text"], d.raw, d.split, d.text_model, out, progress=False)
