"""SIGKILL during tokenize and encode_text, then ``dvc repro`` again: the same bytes as a run that
was never interrupted (download and train have their own kill tests, in tests/data/test_download.py
and tests/test_train.py).

DVC deletes a stage's outputs before it runs it and records it in ``dvc.lock`` only when it exits
cleanly, and the stages write each file atomically (:func:`musicgen.io.atomic_path`), so a killed
stage leaves nothing a rerun could mistake for a result. The plain rerun may restore the outputs
from DVC's cache (they are the uninterrupted run's); a forced rerun runs the stage itself.
"""

import os
import signal
import subprocess
from pathlib import Path

import pytest
from pipeline_repo import SMALL, copy_project, ran_stages, run
from test_pipeline import digest

KILLED = {  # stage -> (its outputs, what its progress bar prints once it has started work)
    "tokenize": (["data/tokens"], b"tokenize:"),
    "encode_text": (["data/text"], b"encode_text:"),
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A copy of the project with the small params, its data stages run once without a break."""
    dst = copy_project(tmp_path_factory.mktemp("interrupt"), SMALL)
    run(["dvc", "repro", *KILLED], dst)
    return dst


def kill_once_started(repo: Path, args: list[str], marker: bytes) -> None:
    """Runs ``args`` in ``repo`` and SIGKILLs it, and every process it started, once ``marker``
    appears on its stderr."""
    proc = subprocess.Popen(
        args,
        cwd=repo,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    seen = b""
    try:
        while marker not in seen:
            chunk = os.read(proc.stderr.fileno(), 65536)
            if not chunk:  # it exited before starting work
                break
            seen += chunk
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    assert marker in seen, seen.decode(errors="replace")[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(KILLED))
def test_a_killed_stage_reruns_to_the_same_bytes(repo, stage):
    outs, marker = KILLED[stage]
    uninterrupted = {out: digest(repo / out) for out in outs}
    lock = (repo / "dvc.lock").read_text()

    kill_once_started(repo, ["dvc", "repro", "--force", "--single-item", stage], marker)

    assert not (repo / outs[0] / "index.csv").exists()  # killed before it finished
    run(["dvc", "repro", stage], repo)
    assert {out: digest(repo / out) for out in outs} == uninterrupted
    assert (repo / "dvc.lock").read_text() == lock
    assert "up to date" in run(["dvc", "status", stage], repo)
    assert not [p for out in outs for p in (repo / out).rglob("*.part")]

    kill_once_started(repo, ["dvc", "repro", "--force", "--single-item", stage], marker)
    out = run(["dvc", "repro", "--force", "--single-item", stage], repo)  # the stage itself, again
    assert stage in ran_stages(out)
    assert {out: digest(repo / out) for out in outs} == uninterrupted
