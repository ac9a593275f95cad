"""The DVC pipeline end to end on a scaled-down embedded default, in a temporary git repository.

Guards the project's contracts: every stage runs offline; changing a training knob reruns only
train, generate and evaluate; ``dvc repro --force`` gives byte-identical data artifacts and equal
training metrics.
"""

import hashlib
import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pipeline_repo import ROOT, SMALL, ran_stages, run
from reference_metrics import UPDATE, committed_metrics, load_reference, out_of_tolerance
from safetensors.torch import load_file

from musicgen.pipeline.evaluation import headline_keys

EMBEDDERS = ["mel", "vggish", "clap", "passt"]  # params.yaml's evaluate.embedders


def digest(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if p.is_file():
            h.update(p.relative_to(path).as_posix().encode() if path.is_dir() else b"")
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def repo(pipeline_repo):
    """The session's shared run of the small embedded default (tests/conftest.py)."""
    return pipeline_repo


def test_every_stage_writes_its_outputs(repo):
    train = json.loads((repo / "metrics/train.json").read_text())
    evaluation = json.loads((repo / "metrics/eval.json").read_text())
    details = json.loads((repo / "reports/eval/details.json").read_text())
    codec = json.loads((repo / "metrics/tokens.json").read_text())
    assert {"val_ce", "val_ce_init", "train_token_entropy"} <= set(train)
    assert sorted(evaluation) == sorted(headline_keys(EMBEDDERS))  # the DVC metrics: headlines
    assert details["fd_clips"] == 6
    weights = {
        "mel": "none (weight-free)",
        "vggish": "random(seed=0)",
        "clap": "tiny-random(seed=0)",
        "passt": "random(seed=0, depth=2)",
    }
    n_test = len((repo / "data/split/test.txt").read_text().split())
    for name, source in weights.items():  # every number names its embedder, weights and n
        assert evaluation[f"fad_{name}"] >= 0 and evaluation[f"fad_inf_{name}"] >= 0
        assert np.isfinite(evaluation[f"kad_{name}"])
        info = details["embedders"][name]
        assert info["embedder"] == name and info["weights"] == source
        assert info["clips_gen"] == 6 and info["clips_ref"] == n_test
        assert info["n_gen"] >= info["clips_gen"] and info["n_ref"] >= info["clips_ref"]
        assert {"fad_inf_slope", "fad_inf_r2", "kad_bandwidth", "dim"} <= set(info)
    assert -1 <= evaluation["clap_score"] <= 1 and -1 <= evaluation["clap_score_reference"] <= 1
    # KL with PaSST: the 2 s clips are one segment each (shorter than 10 s: not padded)
    assert details["kl_passt"] == {
        "weights": weights["passt"],
        "n_segments": 6,
        "segments_per_clip": 1,
        "generated_segments_per_clip": 1,
        "segment_s": 10.0,
    }
    assert evaluation["kl_passt"] > 0 and evaluation["kl_passt_qp"] > 0
    assert evaluation["kl_passt_both"] == pytest.approx(
        evaluation["kl_passt"] + evaluation["kl_passt_qp"]
    )
    reference = np.load(repo / "data/reference/passt.npz")
    assert reference["probs"].shape == (n_test, 1, 527)  # the reference side of KL, stored once
    per_clip = pd.read_csv(repo / "reports/eval/per_clip.csv")
    assert list(per_clip.columns) == ["id", "caption", "fd_mel", "fd_vggish", "clap", "kl_passt"]
    assert len(per_clip) == 6
    assert per_clip["clap"].mean() == pytest.approx(evaluation["clap_score"], rel=1e-4)
    assert per_clip["kl_passt"].mean() == pytest.approx(evaluation["kl_passt"], rel=1e-4)
    assert (repo / "reports/gallery/index.html").is_file()
    assert "kl_passt" in (repo / "reports/gallery/index.html").read_text()
    pngs = sorted(p.stem for p in (repo / "plots/spectrograms").glob("*.png"))
    items = sorted({stem.rsplit("_", 1)[0] for stem in pngs})
    assert len(items) == 4  # evaluate.spectrogram_plots of the small run
    assert pngs == sorted(
        f"{i}_{kind}" for i in items for kind in ("reference", "roundtrip", "generated")
    )
    assert {"valid_ce_cb0", "valid_ppl_cb3", "test_ppl"} <= set(details)
    assert codec["distinct_mean"] > 1  # the k-means fit made more than one code
    assert len(list((repo / "data/generated/audio").glob("*.wav"))) == 6
    live = json.loads((repo / "plots/train/metrics.json").read_text())  # dvclive's summary
    assert live["step"] == SMALL[("train", "steps")] and "ce" in live["val"]
    plots = json.JSONDecoder().raw_decode(run(["dvc", "plots", "show", "--json"], repo))[0]
    curves = {f"plots/train/plots/metrics/{n}.tsv" for n in ("train/loss", "val/ce", "train/lr")}
    assert curves <= set(plots["data"])  # dvc plots show renders the training curves


def test_metrics_are_within_the_cross_machine_tolerance_of_the_reference(repo):
    """README, Reproducibility: every metric of the small run within its tolerance
    (tests/reference_metrics.py) of tests/reference/small_metrics.json."""
    problems = out_of_tolerance(committed_metrics(repo), load_reference())
    assert problems == [], f"after a deliberate change: {UPDATE}\n" + "\n".join(problems)


def test_train_with_two_processes_writes_what_one_process_does(repo):
    """train.nproc_per_node: 2 makes the stage relaunch itself under torchrun (2 gloo ranks):
    the same weights and metrics as one process, up to float rounding."""
    run(["git", "checkout", "-q", "--", "params.yaml"], repo)
    run(["dvc", "repro"], repo)
    one = load_file(repo / "data/lm/model.safetensors")
    one_metrics = json.loads((repo / "metrics/train.json").read_text())
    # else the finished run's final state is reused (a test before may have removed it already)
    shutil.rmtree(repo / "data/checkpoint", ignore_errors=True)
    out = run(["dvc", "exp", "run", "-S", "train.nproc_per_node=2"], repo)
    assert "train" in ran_stages(out) and "relaunching under torchrun" in out
    two = load_file(repo / "data/lm/model.safetensors")
    assert all(torch.allclose(one[k], two[k], rtol=0, atol=1e-5) for k in one)
    assert json.loads((repo / "metrics/train.json").read_text()) == pytest.approx(
        one_metrics, rel=1e-5
    )
    run(["git", "checkout", "-q", "--", "params.yaml"], repo)
    shutil.rmtree(repo / "data/checkpoint")


def test_the_gallery_dvc_wrote_opens_in_chromium(repo, tmp_path):
    """The gallery of the embedded default's run, served on localhost and from the file system."""
    from report.browsercheck import open_gallery

    gallery = repo / "reports/gallery"
    assert (gallery / "images/curves.png").is_file()  # the chart of dvclive's curves
    with open_gallery(gallery / "index.html", tmp_path) as (page, _log):
        assert page.locator("audio").count() == 3 * 6  # reference, codec round trip, generated
        assert "Training curves" in page.content()


def test_a_training_knob_reruns_only_train_generate_evaluate(repo):
    reference = digest(repo / "data/reference")
    out = run(["dvc", "exp", "run", "-S", "train.lr=5.0e-3"], repo)
    assert ran_stages(out) == {"train", "generate", "evaluate"}
    assert "reference_stats" not in ran_stages(out)  # the real side is embedded once
    assert digest(repo / "data/reference") == reference
    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], repo))
    assert "val_ce" in diff.get("metrics/train.json", {})
    status = run(["dvc", "status"], repo)
    assert "up to date" in status


def readme_exp_show() -> list[str]:
    """The README's ``dvc exp show`` call that fits a terminal, as arguments."""
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"^(dvc exp show --no-pager --only-changed [^#\n]*?)\s*(#|$)", readme, re.M)
    assert found, "README: no `dvc exp show --no-pager --only-changed ...` line"
    return shlex.split(found.group(1))


def test_exp_show_fits_a_terminal_and_metrics_diff_lists_headline_numbers(repo, monkeypatch):
    """Two experiments of the (small) embedded default: the README's `dvc exp show` call fits
    160 columns with every headline column shown (no column folded into "…"), and `dvc metrics
    diff` lists no diagnostic (they are in reports/eval/details.json, not a DVC metric)."""
    made = len(re.findall(r"^\w+-\w+$", run(["dvc", "exp", "list", "--name-only"], repo), re.M))
    for lr in ("4.0e-3", "6.0e-3")[: max(0, 2 - made)]:  # when run alone; else the earlier tests'
        run(["dvc", "exp", "run", "-S", f"train.lr={lr}"], repo)
    monkeypatch.setenv("COLUMNS", "160")
    table = run(readme_exp_show(), repo)
    lines = table.rstrip("\n").splitlines()
    assert max(map(len, lines)) <= 160, table
    header = next(line for line in lines if "Experiment" in line)
    assert "…" not in header, table
    shown = set(header.split())
    assert {f"fad_{e}" for e in EMBEDDERS} | {"kl_passt", "clap_score"} <= shown, table
    assert {"valid_ce", "test_ce", "train.lr"} <= shown, table
    assert len(lines) >= 3 + 3 + 2  # rules and header, workspace, baseline, two experiments

    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], repo))
    assert set(diff) <= {"metrics/eval.json", "metrics/train.json"}  # no dvclive summary
    assert set(diff["metrics/eval.json"]) <= set(headline_keys(EMBEDDERS))
    assert {"fad_vggish", "kl_passt", "valid_ce"} <= set(diff["metrics/eval.json"])
    listed = [k for file in diff.values() for k in file]
    assert not [k for k in listed if re.search(r"_cb\d|ppl|slope|_r2|bandwidth|weights|(^|_)n_", k)]


@pytest.mark.parametrize("pattern", ["parallel", "unroll", "coarse_first"])
def test_each_pattern_trains_through_an_experiment(repo, pattern):
    run(["git", "checkout", "-q", "--", "params.yaml"], repo)
    out = run(["dvc", "exp", "run", "-S", f"lm.pattern={pattern}"], repo)
    assert ran_stages(out) == {"train", "generate", "evaluate"}
    train = json.loads((repo / "metrics/train.json").read_text())
    assert train["val_ce_raw"] < train["val_ce_init"]  # it learned something
    details = json.loads((repo / "reports/eval/details.json").read_text())
    assert details["fd_clips"] == 6
    params = json.loads(run(["dvc", "params", "diff", "--json"], repo))
    assert params["params.yaml"]["lm.pattern"]["new"] == pattern


def test_repro_force_is_byte_identical(repo):
    run(["git", "checkout", "-q", "--", "params.yaml"], repo)
    run(["dvc", "repro"], repo)
    artifacts = [
        "data/raw",
        "data/audio",
        "data/split",
        "data/tokens",
        "data/text",
        "data/models/codec",
        "data/models/text",
        "data/models/eval",
        "data/reference",
    ]
    before = {a: digest(repo / a) for a in artifacts}
    train_before = json.loads((repo / "metrics/train.json").read_text())
    run(["dvc", "repro", "--force"], repo)
    after = {a: digest(repo / a) for a in artifacts}
    assert before == after
    assert json.loads((repo / "metrics/train.json").read_text()) == train_before
