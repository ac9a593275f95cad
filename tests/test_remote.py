"""Sharing a run through DVC remotes (README, Share a run), against real storage on localhost.

The run is ``pipeline_repo``'s (the small embedded default, run once per session). The machine
that ran it is a git clone of it that uses its DVC cache: it sets a remote, commits the remote's
config, ``git push`` es to a bare repository (the team's git server) and ``dvc push`` es. A teammate
clones that, ``dvc pull`` s, and must find the run complete: ``dvc status`` clean, ``dvc repro``
running no stage, every output byte for byte the run's, ``musicgen generate --model .`` working.
The remotes: a directory (a NAS mount), SSH through OpenSSH's sshd started by the test on a free
port with generated keys (tests/remote_servers.py), whose push is killed mid-transfer, and S3
through moto's S3 server, with an endpoint URL as for MinIO or Ceph.
"""

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from pipeline_repo import ran_stages, restore_baseline, run
from remote_servers import S3_BUCKET, S3_CREDENTIALS, SSHD, S3Server, SshServer, Throttle
from ruamel.yaml import YAML

REMOTE = "storage"
UP_TO_DATE = "Data and pipelines are up to date."


@dataclass
class Remote:
    """A DVC remote as the README sets it up.

    Attributes:
        url: Its URL (``dvc remote add -d``).
        credentials: Per-machine options (``dvc remote modify --local``: keys), set in every clone.
    """

    url: str
    credentials: dict[str, str] = field(default_factory=dict)

    def add(self, repo: Path) -> None:
        """The first machine: the remote as the default, in the committed .dvc/config."""
        run(["dvc", "remote", "add", "-d", REMOTE, self.url], repo)
        self.login(repo)

    def login(self, repo: Path) -> None:
        for key, value in self.credentials.items():
            run(["dvc", "remote", "modify", "--local", REMOTE, key, value], repo)


def first_machine(pipeline_repo: Path, tmp: Path, remote: Remote) -> tuple[Path, Path]:
    """The machine of the run: a clone of ``pipeline_repo`` with its DVC cache, the remote added
    and committed, pushed to a bare git repository.

    Returns:
        the bare repository (the git server) and the machine's clone, not yet ``dvc push`` ed.
    """
    restore_baseline(pipeline_repo)
    origin, machine = tmp / "origin.git", tmp / "machine"
    run(["git", "clone", "-q", "--bare", str(pipeline_repo), str(origin)], tmp)
    run(["git", "clone", "-q", str(origin), str(machine)], tmp)
    run(["dvc", "cache", "dir", "--local", str(pipeline_repo / ".dvc" / "cache")], machine)
    remote.add(machine)
    run(["git", "commit", "-qm", "DVC remote", ".dvc/config"], machine)
    run(["git", "push", "-q", "origin", "HEAD"], machine)
    return origin, machine


def teammate(origin: Path, dst: Path, remote: Remote) -> Path:
    """Another machine: ``git clone``, the keys, ``dvc pull``."""
    run(["git", "clone", "-q", str(origin), str(dst)], dst.parent)
    remote.login(dst)
    run(["dvc", "pull"], dst)
    return dst


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def cached_outputs(repo: Path) -> dict[str, str]:
    """Path -> md5 in dvc.lock of every output DVC caches (git holds the ``cache: false`` ones)."""
    lock = YAML(typ="safe").load(repo / "dvc.lock")
    tracked = run(["git", "ls-files"], repo).split()
    outs = [out for stage in lock["stages"].values() for out in stage.get("outs", [])]
    return {
        o["path"]: o["md5"]
        for o in outs
        if not any(t == o["path"] or t.startswith(o["path"] + "/") for t in tracked)
    }


def assert_same_bytes(clone: Path, cache: Path) -> None:
    """Every cached output of ``clone`` holds the files the run's cache lists for it, hashed here
    from their bytes (DVC's own status trusts what it checked out)."""
    outs = cached_outputs(clone)
    assert {"data/raw", "data/downloads", "data/lm", "data/models/codec"} <= set(outs)
    for out, digest in outs.items():
        path = clone / out
        if digest.endswith(".dir"):
            manifest = json.loads((cache / "files/md5" / digest[:2] / digest[2:]).read_text())
            expected = {entry["relpath"]: entry["md5"] for entry in manifest}
            files = [p for p in path.rglob("*") if p.is_file()]
            assert {p.relative_to(path).as_posix(): md5(p) for p in files} == expected, out
        else:
            assert md5(path) == digest, out


def assert_complete(clone: Path, run_cache: Path) -> None:
    """A pulled clone is the run: status clean, repro runs nothing, same bytes, generate works."""
    assert UP_TO_DATE in run(["dvc", "status"], clone)
    out = run(["dvc", "repro"], clone)
    assert ran_stages(out) == set() and UP_TO_DATE in out
    assert_same_bytes(clone, run_cache)
    assert (clone / "data/downloads").is_dir()  # the store: empty for the synthetic source
    wav = clone / "piano.wav"
    run(
        ["musicgen", "generate", "--model", ".", "--out", wav.name, "--seconds", "1", "calm piano"],
        clone,
    )
    audio, sr = sf.read(wav)
    assert audio.shape[0] == pytest.approx(sr, rel=0.05)
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0


def assert_consistent(store: Path) -> None:
    """Every object of a DVC remote (``files/md5/ab/cdef...``) hashes to its name; what an
    interrupted upload leaves is a hidden temporary file, never an object."""
    objects = [p for p in (store / "files/md5").rglob("*") if p.is_file() and p.name[0] != "."]
    assert objects
    for p in objects:
        assert md5(p) == p.parent.name + p.name.removesuffix(".dir"), p


def shown_experiments(repo: Path) -> dict[str, dict]:
    """Name -> what ``dvc exp show`` shows of each experiment (params, metrics)."""
    rows = json.loads(subprocess.check_output(["dvc", "exp", "show", "--json"], cwd=repo))
    return {
        exp["name"]: exp["revs"][0]["data"] for row in rows for exp in row.get("experiments") or []
    }


@pytest.fixture(scope="module")
def directory_remote(pipeline_repo, tmp_path_factory):
    """The run pushed to a directory remote (a NAS): the git server and the remote."""
    tmp = tmp_path_factory.mktemp("directory_remote")
    remote = Remote(str(tmp / "nas" / "musicgen-dvc"))
    origin, machine = first_machine(pipeline_repo, tmp, remote)
    run(["dvc", "push"], machine)
    return origin, remote


@pytest.fixture(scope="module")
def pulled(directory_remote, pipeline_repo, tmp_path_factory):
    """A teammate's clone after ``dvc pull`` from the directory remote."""
    origin, remote = directory_remote
    return teammate(origin, tmp_path_factory.mktemp("teammate") / "clone", remote)


@pytest.mark.slow
def test_a_run_pulled_from_a_directory_remote_is_complete(pulled, pipeline_repo):
    assert_complete(pulled, pipeline_repo / ".dvc" / "cache")


@pytest.mark.slow
def test_an_experiment_pushed_from_one_clone_is_pulled_and_shown_in_another(
    pulled, directory_remote, tmp_path
):
    origin, remote = directory_remote
    out = run(["dvc", "exp", "run", "-n", "seed-7", "-S", "generate.seed=7", "generate"], pulled)
    assert ran_stages(out) == {"generate"}
    generated = {p.name: md5(p) for p in (pulled / "data/generated").rglob("*") if p.is_file()}
    run(["dvc", "exp", "push", "origin", "seed-7"], pulled)

    other = tmp_path / "other"
    run(["git", "clone", "-q", str(origin), str(other)], tmp_path)
    remote.login(other)
    run(["dvc", "exp", "pull", "origin", "seed-7"], other)
    shown = shown_experiments(other)
    assert shown["seed-7"]["params"]["params.yaml"]["data"]["generate"]["seed"] == 7
    assert "metrics/eval.json" in shown["seed-7"]["metrics"]
    table = run(["dvc", "exp", "show", "--no-pager", "--md", "--only-changed"], other)
    row = next(line for line in table.splitlines() if "[seed-7]" in line)
    assert [cell.strip() for cell in row.split("|")][-2] == "7"  # the generate.seed column
    run(["dvc", "exp", "apply", "seed-7"], other)
    assert {p.name: md5(p) for p in (other / "data/generated").rglob("*") if p.is_file()} == (
        generated
    )


@pytest.mark.slow
def test_an_ssh_push_killed_mid_transfer_resumes_to_a_consistent_remote(pipeline_repo, tmp_path):
    """sshd (with every session) is SIGKILLed while ``dvc push`` uploads through a throttled
    relay; after a restart a second ``dvc push`` completes, every object on the server is whole,
    and a fresh clone pulls the run's bytes over SSH."""
    require_sshd()
    (tmp_path / "sshd").mkdir()
    server = SshServer(tmp_path / "sshd").start()
    relay = Throttle(server.port, rate=4e6)
    try:
        store = tmp_path / "ssh-storage"
        remote = Remote(server.url(store, port=relay.port), {"keyfile": str(server.key)})
        origin, machine = first_machine(pipeline_repo, tmp_path, remote)
        push = subprocess.Popen(
            ["dvc", "push"], cwd=machine, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            partial = wait_for_partial_upload(store, push)
            server.kill()
        finally:
            said = push.communicate(timeout=120)[0].decode(errors="replace")
        assert push.returncode != 0, said
        assert partial.exists()  # the killed upload: a temporary name, never the object's

        relay.rate = None
        server.start()
        run(["dvc", "push"], machine)
        assert_consistent(store)
        clone = teammate(origin, tmp_path / "teammate", remote)
        assert_complete(clone, pipeline_repo / ".dvc" / "cache")
    finally:
        relay.close()
        server.kill()


@pytest.mark.slow
def test_a_run_pushed_to_an_s3_remote_is_pulled_complete(pipeline_repo, tmp_path):
    """The README's S3 lines against moto's S3 server (a real HTTP endpoint on localhost): the
    remote ``s3://bucket/path`` with its ``endpointurl`` (as for MinIO or Ceph) and keys; the push
    stores one object per cached file under the path, and a fresh clone pulls the run whole."""
    require_module("moto", "moto_server")
    require_module("dvc_s3", "dvc-s3")
    (tmp_path / "s3").mkdir()
    server = S3Server(tmp_path / "s3").start()
    try:
        keys = {
            "endpointurl": server.endpoint,
            "access_key_id": S3_CREDENTIALS["aws_access_key_id"],
            "secret_access_key": S3_CREDENTIALS["aws_secret_access_key"],
            "region": S3_CREDENTIALS["region_name"],
        }
        remote = Remote(f"s3://{S3_BUCKET}/runs/musicgen-dvc", keys)
        origin, machine = first_machine(pipeline_repo, tmp_path, remote)
        run(["dvc", "push"], machine)
        assert "Cache and remote 'storage' are in sync" in run(["dvc", "status", "-c"], machine)
        import boto3

        s3 = boto3.client("s3", endpoint_url=server.endpoint, **S3_CREDENTIALS)
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=S3_BUCKET)
        names = [o["Key"] for page in pages for o in page.get("Contents", [])]
        assert names and all(n.startswith("runs/musicgen-dvc/files/md5/") for n in names)
        clone = teammate(origin, tmp_path / "teammate", remote)
        assert_complete(clone, pipeline_repo / ".dvc" / "cache")
    finally:
        server.kill()


def require_module(module: str, package: str) -> None:
    """A Python module of a test extra, or a skip (a failure under CI, which installs it)."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        hint = "pip install -c requirements/constraints.txt -e .[s3-test]"
        skip_or_fail(f"needs {package} ({hint})")


def skip_or_fail(message: str) -> None:
    """A skip where a test's server or plugin is missing; a failure under CI, which installs it."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def require_sshd() -> None:
    """sshd and dvc-ssh, or a skip (a failure under CI, whose .ci/run installs them)."""
    import importlib.util

    missing = [
        name
        for name, there in (
            ("sshd", Path(SSHD).is_file()),
            ("dvc-ssh", importlib.util.find_spec("dvc_ssh")),
        )
        if not there
    ]
    if missing:
        hint = "apt-get install openssh-server; pip install -e .[dev]"
        skip_or_fail(f"needs {', '.join(missing)} ({hint})")


def wait_for_partial_upload(store: Path, push: subprocess.Popen, timeout_s: float = 60) -> Path:
    """The first upload under way on the remote: a temporary file with some bytes in it."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and push.poll() is None:
        tmp = [p for p in store.rglob("*.tmp") if p.is_file() and p.stat().st_size > 0]
        if tmp:
            return tmp[0]
        time.sleep(0.02)
    raise AssertionError(f"no upload under way (push exited: {push.poll()})")
