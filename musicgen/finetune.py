"""Fine-tuning: the checkpoint a run starts from (``train.init_from``) and the checks that it fits.

``train.init_from`` names one of:

- an LM directory in this project's format (``config.json`` + ``model.safetensors``, as the train
  stage and ``musicgen convert-hf`` write), used in place;
- a Hugging Face MusicGen ``save_pretrained`` directory, or
- a hub id such as ``facebook/musicgen-small``; both are converted once with
  :func:`musicgen.convert.convert_hf` into a cache directory (the train stage's checkpoint
  directory) named by the source's content hash (a directory) or by the id (a hub id).

The checkpoint defines the architecture (width, layers, heads, feed-forward width, card, codebooks,
text width, pattern): ``lm.preset`` and ``lm.overrides`` are not used, and ``lm.pattern`` and
``lm.delays`` must agree with it. ``lm.dropout`` (a training knob) applies. A checkpoint that does
not fit the run's data (codec card, codebooks, text width, and for a Hugging Face MusicGen its
codec's sample rate and hop) is refused with an :class:`IncompatibleCheckpoint` that says which.

Host memory under torchrun: the ranks of a node convert one at a time (a lock file beside the
cache entry: the first converts, the others find its result), and each rank's model is the
checkpoint file memory-mapped (:func:`load_init_lm`), so the node holds one copy, in the page
cache, instead of one per rank.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
from safetensors.torch import load_file

from musicgen.io import content_hash
from musicgen.lm import LM, LMConfig

log = logging.getLogger(__name__)

SOURCE = "source.json"  # beside a converted checkpoint: where it came from, its codec when known
ARCHITECTURE = ("d_model", "n_heads", "n_layers", "ffn_dim")


class IncompatibleCheckpoint(ValueError):
    """``train.init_from`` cannot start this run: it does not fit the data or the LM params."""


@dataclass
class CodecSpec:
    """What an LM's tokens depend on: the codec's card, sample rate and hop (samples per frame)."""

    codebook_size: int
    sampling_rate: int | None = None
    hop_length: int | None = None

    @classmethod
    def from_encodec_config(cls, config: dict) -> CodecSpec:
        """From an ``EncodecConfig`` (``config.json`` of a codec directory, or its dict)."""
        hop = 1
        for r in config["upsampling_ratios"]:
            hop *= int(r)
        return cls(int(config["codebook_size"]), int(config["sampling_rate"]), hop)


@dataclass
class InitCheckpoint:
    """A resolved ``train.init_from``.

    Attributes:
        source: ``train.init_from`` as given.
        lm_dir: the LM directory (``config.json`` + ``model.safetensors``).
        config: its LM config.
        codec: the codec the checkpoint was trained with, when its source says (Hugging Face
            MusicGen does; a bare decoder or an LM directory does not).
        digest: the content hash of ``lm_dir`` (part of the run's resume key).
    """

    source: str
    lm_dir: Path
    config: LMConfig
    codec: CodecSpec | None
    digest: str


def is_lm_dir(path: Path) -> bool:
    """True for a directory that :func:`musicgen.lm.load_lm` reads."""
    config = path / "config.json"
    if not (config.is_file() and (path / "model.safetensors").is_file()):
        return False
    names = {f.name for f in fields(LMConfig)}
    keys = set(json.loads(config.read_text()))
    return "model_type" not in keys and keys <= names


def hf_model_type(path: Path) -> str | None:
    """The ``model_type`` of a Hugging Face directory's ``config.json``, or None."""
    config = path / "config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text()).get("model_type")


def resolve_init(init_from: str, cache_dir: Path) -> InitCheckpoint:
    """The LM checkpoint ``init_from`` names, converted into ``cache_dir`` when needed.

    Args:
        init_from: an LM directory, a Hugging Face MusicGen directory, or a hub id.
        cache_dir: where converted checkpoints are kept (one subdirectory each).

    Raises:
        IncompatibleCheckpoint: a local path that is neither kind of checkpoint.
        OSError: a hub id that cannot be fetched (e.g. offline).
    """
    from musicgen.convert import CAUSAL, CONDITIONAL

    path = Path(init_from).expanduser()
    if path.is_dir() and is_lm_dir(path):
        lm_dir = path
    elif path.is_dir() and hf_model_type(path) in (CONDITIONAL, CAUSAL):
        lm_dir = cache_dir / f"hf-{content_hash([path])[:16]}"
        convert_once(str(path.resolve()), lm_dir)
    elif not path.exists() and init_from.startswith((".", "/", "~")):
        raise IncompatibleCheckpoint(f"train.init_from {init_from!r}: no such directory")
    elif path.exists():
        raise IncompatibleCheckpoint(
            f"train.init_from {init_from!r} is neither an LM directory (config.json + "
            "model.safetensors, as `musicgen convert-hf` writes) nor a Hugging Face MusicGen "
            f"directory (config.json with model_type '{CONDITIONAL}' or '{CAUSAL}')"
        )
    else:
        lm_dir = cache_dir / f"hub-{re.sub(r'[^A-Za-z0-9._-]+', '--', init_from)}"
        convert_once(init_from, lm_dir)
    config = LMConfig(**json.loads((lm_dir / "config.json").read_text()))
    codec = None
    if (lm_dir / SOURCE).is_file():
        spec = json.loads((lm_dir / SOURCE).read_text()).get("codec")
        codec = CodecSpec(**spec) if spec else None
    files = [lm_dir / "config.json", lm_dir / "model.safetensors"]
    return InitCheckpoint(init_from, lm_dir, config, codec, content_hash(files))


@contextlib.contextmanager
def exclusive(lock: Path):
    """Holds an exclusive ``flock`` on the file ``lock`` (made if missing) inside the block."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def convert_once(src: str, dst: Path) -> None:
    """Converts a Hugging Face MusicGen into ``dst`` unless it is there; a stopped conversion
    leaves nothing under ``dst``.

    One process at a time (a lock on ``.<dst name>.lock`` beside ``dst``): the ranks of a torchrun
    launch wait for the first one's conversion instead of each loading the whole Hugging Face
    model into host memory at once.
    """
    with exclusive(dst.parent / f".{dst.name}.lock"):
        _convert_once(src, dst)


def _convert_once(src: str, dst: Path) -> None:
    from transformers import AutoConfig

    from musicgen.convert import CONDITIONAL, convert_hf

    if is_lm_dir(dst):
        log.info("init_from %s: using the converted checkpoint in %s", src, dst)
        return
    try:
        hf_config = AutoConfig.from_pretrained(src)
    except OSError as e:
        raise OSError(
            f"train.init_from {src!r}: not a local checkpoint and not loadable from the hub "
            "(offline? set HF_HUB_OFFLINE=0, or give a directory)"
        ) from e
    codec = None
    if hf_config.model_type == CONDITIONAL:
        codec = asdict(CodecSpec.from_encodec_config(hf_config.audio_encoder.to_dict()))
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}."))
    try:
        log.info("init_from %s: converting to %s", src, dst)
        convert_hf(src, tmp)
        (tmp / SOURCE).write_text(json.dumps({"init_from": src, "codec": codec}, indent=2) + "\n")
        if dst.exists() and not is_lm_dir(dst):
            shutil.rmtree(dst)
        try:
            os.replace(tmp, dst)
        except OSError:  # another process converted it first (a filesystem without flock)
            if not is_lm_dir(dst):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_compatible(
    init: InitCheckpoint,
    codec: CodecSpec,
    n_codebooks: int,
    text_dim: int,
    lm_params: dict,
) -> None:
    """Refuses a checkpoint that does not fit the run's data or ``lm`` params.

    Args:
        init: the resolved checkpoint.
        codec: the run's codec (from its ``config.json``).
        n_codebooks: K of the run's tokens.
        text_dim: width of the run's text states.
        lm_params: the ``lm`` section (``pattern``, ``delays``).

    Raises:
        IncompatibleCheckpoint: naming every mismatch.
    """
    cfg = init.config
    problems = []
    if cfg.card != codec.codebook_size:
        problems.append(f"card {cfg.card} but the codec has {codec.codebook_size}")
    if cfg.n_codebooks != n_codebooks:
        problems.append(f"{cfg.n_codebooks} codebooks but the tokens have {n_codebooks}")
    if cfg.text_dim != text_dim:
        problems.append(f"text width {cfg.text_dim} but the text states are {text_dim} wide")
    if init.codec is not None:
        for name, unit in (("sampling_rate", "Hz"), ("hop_length", "samples per frame")):
            theirs, ours = getattr(init.codec, name), getattr(codec, name)
            if theirs != ours:
                problems.append(f"codec {name} {theirs} {unit} but the codec has {ours}")
    if cfg.pattern != lm_params["pattern"]:
        problems.append(f"pattern '{cfg.pattern}' but lm.pattern is '{lm_params['pattern']}'")
    elif cfg.pattern == "delay" and list(cfg.delays) != list(lm_params["delays"]):
        problems.append(f"delays {list(cfg.delays)} but lm.delays is {list(lm_params['delays'])}")
    if problems:
        raise IncompatibleCheckpoint(
            f"train.init_from {init.source!r} does not fit this run: it has "
            + "; it has ".join(problems)
        )


def init_lm_config(init: InitCheckpoint, lm_params: dict) -> LMConfig:
    """The LM config of a fine-tuning run: the checkpoint's architecture, ``lm.dropout``."""
    cfg = replace(init.config, dropout=lm_params["dropout"])
    log.info(
        "init_from %s sets the architecture (%s); lm.preset and lm.overrides are not used",
        init.source,
        ", ".join(f"{k} {getattr(cfg, k)}" for k in ARCHITECTURE),
    )
    return cfg


def load_init_lm(init: InitCheckpoint, cfg: LMConfig) -> LM:
    """The LM of a fine-tuning run, its parameters the checkpoint's tensors memory-mapped.

    The model is built on the meta device (no random initialisation, no second copy) and takes
    the tensors that safetensors maps from ``model.safetensors`` (a private, copy-on-write
    mapping: training on the CPU never writes the file). The ranks of a node then share one copy
    of the weights in the page cache, from which ``model.to(cuda)`` reads; a tensor stored in
    another dtype than the model's is converted (a copy).

    Args:
        init: the resolved checkpoint.
        cfg: the run's LM config (:func:`init_lm_config`).
    """
    with torch.device("meta"):
        model = LM(cfg)
    expected = model.state_dict()
    weights = load_file(str(init.lm_dir / "model.safetensors"))
    for name, value in weights.items():
        if name in expected and value.dtype != expected[name].dtype:
            weights[name] = value.to(expected[name].dtype)
    model.load_state_dict(weights, assign=True)  # strict: every parameter, the right shapes
    return model
