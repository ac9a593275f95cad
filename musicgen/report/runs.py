"""A run's evaluate outputs, from a run directory or from a DVC experiment, for ``musicgen compare``.

A run is named either by a path (a directory holding a checkout of this pipeline with its outputs
in place) or by a revision of a DVC repository: an experiment's name as ``dvc exp show`` lists it,
or any git revision (branch, tag, commit); ``workspace`` is the repository's own folder.

An experiment's files are read through DVC's own file system (``dvc.api.DVCFileSystem`` at the
experiment's revision), not by taking git and the cache apart here: git-tracked files (params.yaml,
``metrics/*.json`` and ``reports/eval/per_clip.csv``, which are ``cache: false`` and so committed
into the experiment's commit) come from that commit, and each DVC-tracked file (the wavs under
``data/audio`` and ``data/generated/audio``) from the local cache by the hash in that commit's
dvc.lock. DVC resolves the name (``refs/exps/...``) and knows its cache layout, and only the
files a page needs are copied out. An experiment whose outputs are not in the local cache (e.g.
after ``dvc gc``) is an error that says so.

API::

    from musicgen.report.runs import load_run

    run = load_run("my-exp", repo=Path("."))  # or load_run("path/to/run")
    run.per_clip  # the per-clip table; run.metrics, run.params
    root = run.local_files([f"data/audio/{i}.wav" for i in ids], staging_dir)
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

import pandas as pd
from ruamel.yaml import YAML, YAMLError

from musicgen.report.gallery import flatten

PER_CLIP = "reports/eval/per_clip.csv"
EVAL_METRICS = "metrics/eval.json"
METRICS_GLOB = "metrics/*.json"
PARAMS = "params.yaml"
REFERENCE_AUDIO = "data/audio"
GENERATED_AUDIO = "data/generated/audio"
WORKSPACE = "workspace"  # the name `dvc exp show` gives the repository's own folder
MADE_BY = {  # a file (or the folder it is in) -> the stage that writes it
    PER_CLIP: "evaluate",
    EVAL_METRICS: "evaluate",
    GENERATED_AUDIO: "generate",
    REFERENCE_AUDIO: "resample",
}


class RunError(ValueError):
    """A run or experiment that cannot be read or lacks an output; the message names what is
    missing and the stage that makes it."""


def _maker(rel: str) -> str:
    for path, stage in MADE_BY.items():
        if rel == path or rel.startswith(path + "/"):
            return f"the {stage} stage"
    return "the pipeline" if rel != PARAMS else "the project (params.yaml)"


class RunFiles(ABC):
    """One run's files by their path in the project (``metrics/eval.json``), wherever they are:
    the base of :class:`DirectoryFiles` and :class:`RevisionFiles`.

    Attributes:
        name: how the user named the run.
        source: where it is read from, for people (a folder, or an experiment and its commit).
        remedy: what makes a missing output, said after the stage that writes it.
    """

    name: str
    source: str
    remedy: str

    def missing(self, rel: str) -> RunError:
        """The error for an output ``rel`` that the run lacks."""
        return RunError(f"{self.source}: no {rel} (written by {_maker(rel)}; {self.remedy})")

    @abstractmethod
    def read_text(self, rel: str) -> str:
        """The text of ``rel``.

        Raises:
            RunError: the run has no such file.
        """

    @abstractmethod
    def glob(self, pattern: str) -> list[str]:
        """The project paths matching ``pattern`` (e.g. ``metrics/*.json``), sorted."""

    @abstractmethod
    def local_files(self, rels: list[str], staging: Path) -> Path:
        """A local folder that holds each of ``rels`` at its project path (the run directory
        itself, or ``staging`` with the files copied there).

        Raises:
            RunError: a file is missing.
        """


class DirectoryFiles(RunFiles):
    """The files of a run directory (a checkout of the pipeline with its outputs in place)."""

    def __init__(self, name: str, root: Path) -> None:
        self.root = Path(root).resolve()
        self.name, self.source = name, f"run {self.root}"
        self.remedy = f"run `dvc repro` in {self.root}"

    def read_text(self, rel: str) -> str:
        try:
            return (self.root / rel).read_text(encoding="utf-8")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as err:
            raise self.missing(rel) from err

    def glob(self, pattern: str) -> list[str]:
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.glob(pattern))

    def local_files(self, rels: list[str], staging: Path) -> Path:
        for rel in rels:
            if not (self.root / rel).is_file():
                raise self.missing(rel)
        return self.root


class RevisionFiles(RunFiles):
    """The files of a revision (an experiment) of a DVC repository, through DVC's file system.

    Raises:
        RunError: ``rev`` is not a revision of the repository (or it is no DVC repository).
    """

    def __init__(self, name: str, repo: Path, rev: str) -> None:
        from dvc.api import DVCFileSystem
        from dvc.exceptions import DvcException

        try:
            self.fs = DVCFileSystem(str(repo), rev=rev)
            commit = self.fs.repo.get_rev()
        except (DvcException, OSError) as err:
            raise RunError(
                f"{name!r} is neither a run directory nor an experiment or revision of the DVC "
                f"repository {Path(repo).resolve()} (`dvc exp show` lists the experiments): {err}"
            ) from err
        self.name, self.source = name, f"experiment {name} (commit {commit[:7]})"
        self.remedy = f"`dvc exp apply {name}` and `dvc repro` make it"

    def read_text(self, rel: str) -> str:
        try:
            return self.fs.read_text(rel, encoding="utf-8")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as err:
            raise self.missing(rel) from err

    def glob(self, pattern: str) -> list[str]:
        return sorted(p.lstrip("/") for p in self.fs.glob(pattern))

    def local_files(self, rels: list[str], staging: Path) -> Path:
        for rel in rels:
            if not self.fs.isfile(rel):
                raise self.missing(rel)
            dst = Path(staging) / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.fs.get_file(rel, str(dst))
            except FileNotFoundError as err:  # in the experiment's dvc.lock, not in the cache
                raise RunError(
                    f"{self.source}: {rel} is not in the local DVC cache ({err}); fetch it with "
                    "`dvc exp pull` or `dvc pull`"
                ) from err
        return Path(staging)


def open_run(spec: str, repo: Path = Path(".")) -> RunFiles:
    """The files of the run named ``spec``: a directory, or a revision (an experiment's name) of
    the DVC repository at ``repo`` (``workspace``: the repository's folder).

    Raises:
        RunError: ``spec`` is neither a directory nor a revision of ``repo``.
    """
    if Path(spec).is_dir():
        return DirectoryFiles(spec, Path(spec))
    if spec == WORKSPACE:
        return DirectoryFiles(spec, Path(repo))
    return RevisionFiles(spec, Path(repo), spec)


@dataclass
class Run:
    """What the comparison shows of one run.

    Attributes:
        files: where its files are read from (its ``name`` and ``source`` too).
        per_clip: the evaluate stage's per-clip table: ``id``, ``caption`` and numeric scores.
        metrics: each ``metrics/*.json`` by file name (``eval.json`` -> its values).
        params: params.yaml with dotted keys (``train.lr``).
    """

    files: RunFiles
    per_clip: pd.DataFrame
    metrics: dict[str, dict]
    params: dict[str, object]

    @property
    def name(self) -> str:
        return self.files.name


def _read_json(files: RunFiles, rel: str) -> dict:
    try:
        value = json.loads(files.read_text(rel))
    except ValueError as err:
        raise RunError(f"{files.source}: {rel} is not JSON: {err}") from err
    return value if isinstance(value, dict) else {"value": value}


def load_run(spec: str, repo: Path = Path(".")) -> Run:
    """Reads a run's per-clip table, metrics and params (see :func:`open_run` for ``spec``).

    Raises:
        RunError: the run does not exist, or lacks the evaluate stage's outputs or params.yaml.
    """
    files = open_run(spec, repo)
    text = files.read_text(PER_CLIP)
    try:
        per_clip = pd.read_csv(StringIO(text), dtype={"id": str, "caption": str})
    except (ValueError, pd.errors.ParserError) as err:
        raise RunError(f"{files.source}: unreadable {PER_CLIP}: {err}") from err
    if not {"id", "caption"} <= set(per_clip.columns):
        raise RunError(f"{files.source}: {PER_CLIP} has no id and caption columns")
    files.read_text(EVAL_METRICS)  # evaluate's metrics must be there (an error names them)
    metrics = {Path(rel).name: _read_json(files, rel) for rel in files.glob(METRICS_GLOB)}
    try:  # a YAML 1.2 loader, as musicgen.params reads it
        params = YAML(typ="safe", pure=True).load(files.read_text(PARAMS))
    except YAMLError as err:
        raise RunError(f"{files.source}: unreadable {PARAMS}: {err}") from err
    if not isinstance(params, dict):
        raise RunError(f"{files.source}: {PARAMS} is not a mapping")
    return Run(files, per_clip, metrics, flatten(params))
