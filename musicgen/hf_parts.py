"""The EnCodec and the T5 encoder inside a Hugging Face ``MusicgenForConditionalGeneration``.

A published MusicGen (``facebook/musicgen-small``, or a ``save_pretrained`` directory) holds three
models in one state dict: ``audio_encoder.*`` (an ``EncodecModel``), ``text_encoder.*`` (a
``T5EncoderModel``) and ``decoder.*``, with one ``config.json`` (``model_type: musicgen``) whose
``audio_encoder`` and ``text_encoder`` entries are the parts' own configs. The codec and text
stages take one part each (``codec.source`` / ``text.source`` = the MusicGen), so that a published
checkpoint is evaluated with its own codec and text encoder.

:func:`load_part` builds the part from its sub-config and reads only the part's tensors from the
safetensors file (or only the shards that hold them, per ``model.safetensors.index.json``): taking
EnCodec (57 M parameters) out of ``facebook/musicgen-large`` (3.3 B) reads its 0.2 GB, not the
whole checkpoint. Local directories and hub ids go through the same ``cached_file`` calls.
"""

from __future__ import annotations

import json

import torch

CONDITIONAL = "musicgen"  # config.json model_type of a MusicgenForConditionalGeneration
PARTS = ("audio_encoder", "text_encoder")  # the sub-models a stage takes out of one
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
TOKENIZER = "tokenizer_config.json"  # written by tokenizer.save_pretrained, as by MusicgenProcessor


def checkpoint_file(src: str, name: str) -> str | None:
    """The local path of file ``name`` of a directory or hub id (downloaded once), or None."""
    from transformers.utils import cached_file

    return cached_file(
        src,
        name,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )


def musicgen_config(src: str):
    """The ``MusicgenConfig`` of ``src`` if it is a ``MusicgenForConditionalGeneration``, else None.

    Args:
        src: a ``save_pretrained`` directory or a hub id.

    Returns:
        The composite config, or None when ``src`` has no ``config.json`` that can be read (the
        caller's own loading then says why) or it is another kind of model.
    """
    from transformers import MusicgenConfig

    path = checkpoint_file(src, "config.json")
    if path is None:
        return None
    with open(path) as f:
        if json.load(f).get("model_type") != CONDITIONAL:
            return None
    return MusicgenConfig.from_pretrained(src)


def part_state_dict(src: str, part: str) -> dict[str, torch.Tensor]:
    """The tensors of one part of a MusicGen checkpoint, their names without ``<part>.``.

    Only the safetensors files that hold the part are opened (one file, or the shards that
    ``model.safetensors.index.json`` maps the part's names to), and of them only its tensors read.

    Args:
        src: a ``save_pretrained`` directory or a hub id of a ``MusicgenForConditionalGeneration``.
        part: ``audio_encoder`` or ``text_encoder``.

    Raises:
        FileNotFoundError: if ``src`` has no safetensors weights or none of the part's tensors.
    """
    from safetensors import safe_open

    prefix = f"{part}."
    index = checkpoint_file(src, INDEX)
    if index is not None:
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        files = sorted({file for key, file in weight_map.items() if key.startswith(prefix)})
    else:
        files = [WEIGHTS]
    tensors = {}
    for name in files:
        path = checkpoint_file(src, name)
        if path is None:
            raise FileNotFoundError(
                f"{src} has no {name}: a MusicGen's {part} is read from its safetensors weights "
                "(save the model with save_pretrained)"
            )
        with safe_open(path, framework="pt") as f:
            for key in f.keys():
                if key.startswith(prefix):
                    tensors[key[len(prefix) :]] = f.get_tensor(key)
    if not tensors:
        raise FileNotFoundError(f"{src} holds no '{prefix}*' weights")
    return tensors


def load_part(src: str, part: str, model_class, config=None):
    """One part of a MusicGen checkpoint as a model of its own, float32, in eval mode.

    Args:
        src: a ``save_pretrained`` directory or a hub id of a ``MusicgenForConditionalGeneration``.
        part: ``audio_encoder`` (give ``EncodecModel``) or ``text_encoder`` (``T5EncoderModel``).
        model_class: the part's ``PreTrainedModel`` class.
        config: the composite config (:func:`musicgen_config`), if already read.

    Returns:
        The model, with every weight from the checkpoint (legacy names such as weight-norm
        ``weight_g``/``weight_v`` mapped as ``from_pretrained`` maps them).

    Raises:
        ValueError: if ``src`` is not a MusicGen, or the part's tensors do not fill the model.
    """
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    config = config if config is not None else musicgen_config(src)
    if config is None:
        raise ValueError(f"{src} is not a MusicgenForConditionalGeneration checkpoint")
    model, info = model_class.from_pretrained(
        None,
        config=getattr(config, part),
        state_dict=part_state_dict(src, part),
        dtype=torch.float32,
        output_loading_info=True,
    )
    bad = {k: sorted(v) for k, v in info.items() if k != "error_msgs" and v}
    if bad or info.get("error_msgs"):
        raise ValueError(f"{src}: its {part} weights do not fit {model_class.__name__}: {info}")
    return model.eval()
