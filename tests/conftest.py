"""Puts tests/ on sys.path (pytest does for a conftest's folder): shared helpers import from it.

``pipeline_repo`` is the one full ``dvc repro`` of the small embedded default that every test
needing a finished run shares (a pipeline run costs about a minute on 2 cores): a git + DVC copy
of the project, committed as "baseline". A test that changes its workspace (``dvc exp run``
applies the experiment there) calls ``restore_baseline`` first when it needs the baseline.
"""

import pytest
from pipeline_repo import DATA_STAGES, SMALL, copy_project, ran_stages, run


@pytest.fixture(scope="session")
def pipeline_repo(tmp_path_factory):
    """A git + DVC copy of the project with the small params, after one full `dvc repro`."""
    dst = copy_project(tmp_path_factory.mktemp("pipeline"), SMALL)
    first = run(["dvc", "repro"], dst)
    assert ran_stages(first) == DATA_STAGES | {"train", "generate", "evaluate"}
    run(["git", "add", "-A"], dst)
    run(["git", "commit", "-qm", "baseline"], dst)
    return dst
