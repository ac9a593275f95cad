"""Writes requirements/constraints.txt: the exact version of every package the project installs.

The list is this environment's ``pip freeze``, kept to the dependency closure of the project's
requirements in ``pyproject.toml`` and those of the extras named on the command line (``dev``, ``s3``,
``ssh`` and ``s3-test`` by default: the tests and the DVC remotes): their requirements, theirs, and so on, with
environment markers evaluated here. torch is pinned by version without its local build label (``2.13.0``, not ``2.13.0+cpu``), so that pip takes the CPU or the
CUDA wheel of that version from whichever index it is given; the CUDA runtime packages torch pulls
in on Linux (``nvidia-*``, ``triton``) are left for torch to choose.

    python3 scripts/update_constraints.py            # after upgrading a dependency on purpose
    pip install -c requirements/constraints.txt -e ".[dev]"
"""

from __future__ import annotations

import argparse
import re
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
# torch's CUDA runtime (nvidia-cublas-cu12, ..., triton): the torch build chooses it; nvidia-ml-py
# (NVML bindings, pure Python) is an ordinary dependency
PLATFORM_CHOSEN = re.compile(r"^(nvidia-(?!ml-py$).*|triton|pytorch-triton.*)$")


def project_requirements(extras: set[str]) -> list[Requirement]:
    """The requirements ``pyproject.toml`` gives the project and the chosen extras."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in sorted(extras):
        lines += project.get("optional-dependencies", {})[extra]
    return [Requirement(line) for line in lines]


def closure(requirements: list[Requirement]) -> dict[str, str]:
    """Canonical name -> installed version of every package ``requirements`` need here, and theirs.

    Raises:
        PackageNotFoundError: a requirement that applies here is not installed.
    """
    seen: dict[str, str] = {}
    todo = [
        (r.name, frozenset(r.extras)) for r in requirements if not r.marker or r.marker.evaluate()
    ]
    done: set[tuple[str, frozenset]] = set()
    while todo:
        name, extras = todo.pop()
        if (canonicalize_name(name), extras) in done:
            continue
        done.add((canonicalize_name(name), extras))
        dist = distribution(name)
        seen[canonicalize_name(dist.metadata["Name"])] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                if _installed(req.name) or not req.marker:
                    todo.append((req.name, frozenset(req.extras)))
    return seen


def _installed(name: str) -> bool:
    try:
        distribution(name)
    except PackageNotFoundError:
        return False
    return True


def constraint(name: str, version: str) -> str:
    if name == "torch":
        version = version.split("+")[0]  # the platform picks the build (cpu, cu126, ...)
    return f"{name}=={version}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--extras",
        nargs="*",
        default=["dev", "s3", "ssh", "s3-test"],
        help="extras of the project to include",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "requirements/constraints.txt")
    args = ap.parse_args()
    pins = closure(project_requirements(set(args.extras)))
    lines = [constraint(n, v) for n, v in sorted(pins.items()) if not PLATFORM_CHOSEN.match(n)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    header = (
        "# Exact versions of musicgen-dvc's dependencies (extras: "
        + ", ".join(args.extras)
        + "), from `python3 scripts/update_constraints.py`.\n"
        "# scripts/install.sh installs with `pip install -c` this file. torch: the version is\n"
        "# pinned, the build (CPU or CUDA wheel) is the platform's; see README, Reproducibility.\n"
    )
    args.out.write_text(header + "".join(f"{line}\n" for line in lines))
    print(f"{args.out}: {len(lines)} packages")


if __name__ == "__main__":
    main()
