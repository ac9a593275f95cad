"""Queued sweeps: ``dvc exp run --queue -S ...`` then ``dvc queue start -j 2`` from a committed
workspace. The queue runs each experiment in a temporary clone (``.dvc/tmp/exps``) that checks
the data stages' outputs out of the local DVC cache by the committed ``dvc.lock`` (no run-cache,
no remote): nothing upstream is recomputed, and the metrics are those of the same experiments
run one after another. The experiments stop at ``train`` (the knob's metrics, in
``metrics/train.json``) to keep the test to a few minutes."""

import json
import re
import time

from pipeline_repo import DATA_STAGES, restore_baseline, run

KNOBS = ["train.steps=4", "train.eval_every=2", "train.checkpoint_every=2"]
LRS = ["2.0e-3", "4.0e-3", "6.0e-3"]


def train_metrics(repo, name: str) -> dict:
    """``metrics/train.json`` of the experiment ``name``, as ``dvc exp show`` reads it."""
    shown = json.loads(run(["dvc", "exp", "show", "--no-pager", "--json"], repo))
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for rev in exp["revs"]:
                if rev["name"] == name:
                    return rev["data"]["metrics"]["metrics/train.json"]["data"]
    raise AssertionError(f"no experiment {name}")


def wait_for_queue(repo, timeout_s: float = 900) -> str:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        status = run(["dvc", "queue", "status"], repo)
        if not re.search(r"Running|Queued", status):
            return status
        time.sleep(3)
    raise AssertionError(f"the queue did not finish in {timeout_s} s:\n{status}")


def test_queued_experiments_reuse_the_data_stages_and_match_sequential_runs(pipeline_repo):
    repo = pipeline_repo
    restore_baseline(repo)
    try:
        for lr in LRS:
            sets = [a for k in [*KNOBS, f"train.lr={lr}"] for a in ("-S", k)]
            run(["dvc", "exp", "run", "--queue", *sets, "-n", f"queued-{lr}", "train"], repo)
        run(["dvc", "queue", "start", "-j", "2"], repo)
        status = wait_for_queue(repo)
        assert status.count("Success") == 3, status
        for lr in LRS:
            log = run(["dvc", "queue", "logs", f"queued-{lr}"], repo)
            ran = set(re.findall(r"Running stage '([^']+)'", log))
            assert ran == {"train"}, log[-3000:]
            assert not ran & DATA_STAGES
        queued = {lr: train_metrics(repo, f"queued-{lr}") for lr in LRS}
        for lr in LRS:
            restore_baseline(repo)
            sets = [a for k in [*KNOBS, f"train.lr={lr}"] for a in ("-S", k)]
            out = run(["dvc", "exp", "run", *sets, "-n", f"serial-{lr}", "train"], repo)
            assert set(re.findall(r"Running stage '([^']+)'", out)) == {"train"}
            assert train_metrics(repo, f"serial-{lr}") == queued[lr]
        assert len({json.dumps(m, sort_keys=True) for m in queued.values()}) == 3
    finally:
        run(["dvc", "queue", "remove", "--all"], repo)
        names = [f"{kind}-{lr}" for kind in ("queued", "serial") for lr in LRS]
        listed = run(["dvc", "exp", "list", "--name-only"], repo)
        made = [n for n in names if n in listed.split()]
        if made:
            run(["dvc", "exp", "remove", *made], repo)
        restore_baseline(repo)
