"""The library runs no code that comes with its data: no pickle, no eval, no shell.

What ``git grep`` would find, checked on every Python file of the library, the stages, the scripts
and the benchmarks: ``pickle``, ``shell=True``, ``eval(`` / ``exec(`` (the builtins, not
``model.eval()``), ``torch.load`` without ``weights_only=True``, ``np.load`` with
``allow_pickle=True``, and an unsafe YAML loader.
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "pickle": re.compile(r"\bc?pickle\b|\bdill\b|\bjoblib\.load\b"),
    "shell=True": re.compile(r"shell\s*=\s*True"),
    "eval/exec": re.compile(r"(?<![.\w])(?:eval|exec)\s*\("),
    "allow_pickle": re.compile(r"allow_pickle\s*=\s*True"),
    "unsafe yaml": re.compile(
        r"typ\s*=\s*['\"]unsafe['\"]|yaml\.unsafe_load|yaml\.load\([^)]*Loader"
    ),
    "os.system": re.compile(r"\bos\.(?:system|popen)\s*\("),
}
TORCH_LOAD = re.compile(r"torch\.load\s*\(")


def library_files() -> list[Path]:
    files = [
        p for d in ("musicgen", "stages", "scripts", "benchmarks") for p in (ROOT / d).rglob("*.py")
    ]
    assert len(files) > 20
    return sorted(files)


def call_text(text: str, start: int) -> str:
    """The text of the call whose ``(`` is at or after ``start``, up to its closing bracket."""
    depth, i = 0, text.index("(", start)
    for j in range(i, len(text)):
        depth += {"(": 1, ")": -1}.get(text[j], 0)
        if depth == 0:
            return text[i : j + 1]
    return text[i:]


def test_no_pickle_eval_shell_or_unguarded_torch_load():
    found = []
    for path in library_files():
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(ROOT)
        for name, pattern in FORBIDDEN.items():
            found += [f"{rel}: {name}: {m.group()}" for m in pattern.finditer(text)]
        for m in TORCH_LOAD.finditer(text):
            if not re.search(r"weights_only\s*=\s*True", call_text(text, m.start())):
                found.append(f"{rel}: torch.load without weights_only=True")
    assert found == []


def test_the_checks_see_what_they_look_for():
    bad = 'x = eval("1")\nsubprocess.run(c, shell=True)\nimport pickle\ntorch.load(f, map_location="cpu")\n'
    hits = [n for n, p in FORBIDDEN.items() if p.search(bad)]
    assert hits == ["pickle", "shell=True", "eval/exec"]
    assert "weights_only" not in call_text(bad, bad.index("torch.load"))
    assert not FORBIDDEN["eval/exec"].search("model.eval()\nself.evaluate(x)\nretrieval(x)")
