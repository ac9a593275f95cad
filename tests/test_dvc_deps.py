"""dvc.yaml lists, for every stage, its script and each library module that script runs.

The imports are read from the code (every ``import`` statement, also inside functions), followed
transitively within ``musicgen/``, so a module that a stage starts to import without its ``deps``
entry fails here: DVC would otherwise leave that stage's outputs stale after a change to it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "musicgen"


def module_file(name: str) -> Path | None:
    """The source file of a ``musicgen`` module name (a package's ``__init__.py``), or None."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    base = ROOT / Path(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_modules(path: Path) -> set[str]:
    """Names of the ``musicgen`` modules that ``path`` imports (absolute imports only).

    ``from musicgen.x import y`` counts ``musicgen.x`` and, when ``y`` is itself a module,
    ``musicgen.x.y``; every package on the way is imported too (its ``__init__.py`` runs).
    """
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    out = set()
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if module_file(prefix) is not None:
                out.add(prefix)
    return out


def code_deps(script: Path) -> set[str]:
    """Paths (relative to the project) of the script and every module it runs, transitively."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo.extend(module_file(m) for m in imported_modules(path))
    return {p.relative_to(ROOT).as_posix() if p.is_relative_to(ROOT) else str(p) for p in seen}


def stage_scripts(dvc_yaml: dict) -> dict[str, tuple[Path, set[str]]]:
    """Each stage's script (from its ``cmd``) and its declared deps."""
    out = {}
    for name, stage in dvc_yaml["stages"].items():
        found = re.search(r"\bpython3?\s+(\S+\.py)", stage["cmd"])
        assert found, f"stage {name}: no 'python <script>.py' in its cmd"
        deps = {d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])}
        out[name] = (ROOT / found.group(1), deps)
    return out


def missing_deps(dvc_yaml: dict) -> dict[str, list[str]]:
    """Stage -> code files it runs that its deps do not list (a listed folder covers its files)."""
    missing = {}
    for name, (script, deps) in stage_scripts(dvc_yaml).items():
        lacking = sorted(
            f
            for f in code_deps(script)
            if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps)
        )
        if lacking:
            missing[name] = lacking
    return missing


def load_dvc_yaml() -> dict:
    return YAML(typ="safe", pure=True).load(ROOT / "dvc.yaml")


def test_every_stage_lists_the_code_it_runs():
    assert missing_deps(load_dvc_yaml()) == {}


def test_stage_deps_name_no_code_the_stage_does_not_run():
    """Extra code deps rerun a stage for nothing; each listed .py must be run by the stage."""
    extra = {}
    for name, (script, deps) in stage_scripts(load_dvc_yaml()).items():
        listed = {d for d in deps if d.endswith(".py")}
        if listed - code_deps(script):
            extra[name] = sorted(listed - code_deps(script))
    assert extra == {}


@pytest.mark.parametrize("stage", ["train", "generate", "evaluate", "tokenize"])
def test_the_check_sees_a_missing_dep(stage):
    dvc_yaml = load_dvc_yaml()
    deps = dvc_yaml["stages"][stage]["deps"]
    module = next(d for d in deps if isinstance(d, str) and d.startswith("musicgen/"))
    deps.remove(module)
    assert module in missing_deps(dvc_yaml)[stage]


def test_the_import_reader_follows_imports_inside_functions(tmp_path, monkeypatch):
    script = tmp_path / "s.py"
    script.write_text("def main():\n    from musicgen.pipeline import training\n")
    found = code_deps(script)
    assert "musicgen/pipeline/training.py" in found
    assert "musicgen/lm.py" in found  # through training
    assert "musicgen/kernels.py" in found  # through lm
