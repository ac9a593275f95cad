"""Reading params.yaml: the only source of settings.

The file is read with a YAML 1.2 loader, so ``1e-4`` is a float (PyYAML's 1.1 resolver reads it as a
string). Stage scripts take the sections they need and nothing else.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from musicgen.io import atomic_path


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Loads a params file into plain dicts and lists.

    Args:
        path: the YAML file.

    Returns:
        The parsed mapping.
    """
    yaml = YAML(typ="safe", pure=True)
    with open(path, encoding="utf-8") as f:
        params = yaml.load(f)
    if not isinstance(params, dict):
        raise ValueError(
            f"{path}: expected a mapping at the top level, got {type(params).__name__}"
        )
    return params


def config_hash(obj: Any) -> str:
    """A stable short hash of a JSON-serialisable config (sorted keys)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def write_json(path: str | Path, obj: Any) -> None:
    """Writes JSON with sorted keys and a trailing newline, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
