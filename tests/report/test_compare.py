"""``musicgen compare``: the A/B page of two run directories (synthetic, small), its errors, the
page in headless Chromium, and (slow) the page of two DVC experiments of the embedded default."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pandas as pd
import pytest
from browsercheck import open_gallery
from pipeline_repo import restore_baseline, run
from reporthelpers import SAMPLE_RATE, SCRIPT_CAPTION, parse_page, tone
from ruamel.yaml import YAML

from musicgen.cli import main
from musicgen.data.audio import write_wav
from musicgen.report.gallery import safe_name

IDS = ["clip-1", "clip 2 ✓", "x&y", "only-a"]
CAPTIONS = [SCRIPT_CAPTION, "<img src=x onerror=alert(2)> drums & 'quotes'", "calm", "solo"]
A_SCORES = {"fd_mel": [3.0, 1.0, 2.0, 9.0], "clap": [0.1, 0.2, float("nan"), 0.0]}
B_SCORES = {  # B - A of fd_mel: -2.5, 1.5, 0.0; B alone has kl_passt
    "fd_mel": [0.5, 2.5, 2.0],
    "clap": [0.3, 0.1, 0.2],
    "kl_passt": [1.5, 0.5, 1.0],
}
SECONDS = [1.0, 1.25, 1.5, 1.0]  # distinct, so that each player's duration is checked


def make_run(root: Path, ids: list[str], scores: dict, lr: float, freq: float) -> Path:
    """A run directory with what compare reads: per-clip table, metrics, params and wavs."""
    n = len(ids)
    table = pd.DataFrame({"id": ids, "caption": CAPTIONS[:n], **scores})
    (root / "reports/eval").mkdir(parents=True)
    table.to_csv(root / "reports/eval/per_clip.csv", index=False)
    (root / "metrics").mkdir()
    fad = sum(scores["fd_mel"]) / n
    (root / "metrics/eval.json").write_text(
        json.dumps({"fad_mel": fad, "embedders": {"mel": {"n_gen": n}}})
    )
    (root / "metrics/train.json").write_text(json.dumps({"val_ce": 5.0 + lr}))
    params = {"train": {"lr": lr, "steps": 12}, "generate": {"top_k": 250}}
    YAML().dump(params, root / "params.yaml")
    for i, clip in enumerate(ids):
        write_wav(root / f"data/audio/{clip}.wav", tone(220.0, SECONDS[i], i), SAMPLE_RATE)
        gen = tone(freq * (i + 1), SECONDS[i], 10 + i)
        write_wav(root / f"data/generated/audio/{clip}.wav", gen, SAMPLE_RATE)
    return root


@pytest.fixture
def runs(tmp_path) -> tuple[Path, Path]:
    a = make_run(tmp_path / "run-a", IDS, A_SCORES, 1e-3, 330.0)
    b = make_run(tmp_path / "run-b", IDS[:3], B_SCORES, 5e-3, 440.0)
    return a, b


@pytest.fixture
def page(runs, tmp_path) -> Path:
    out = tmp_path / "compare"
    main(["compare", str(runs[0]), str(runs[1]), "--out", str(out)])
    return out / "index.html"


def score_rows(index: Path) -> list[list[str]]:
    """Per item row, the sortable values of its score cells (as the sorting script reads them)."""
    rows: list[list[str]] = []
    for tag, attrs in parse_page(index.read_text(encoding="utf-8")).tags:
        if tag == "tr" and (attrs.get("id") or "").startswith("item-"):
            rows.append([])
        elif tag == "td" and attrs.get("class") == "score":
            rows[-1].append(attrs["data-value"])
    return rows


def expected_row(i: int) -> list[str]:
    """A's, B's and B - A per score column (A's columns first, then B's), as the page sorts."""
    cells = []
    for name in ("fd_mel", "clap", "kl_passt"):
        a = A_SCORES.get(name, [None] * 4)[i]
        b = B_SCORES[name][i]
        diff = None if a is None else b - a
        cells += ["" if v is None or math.isnan(v) else repr(float(v)) for v in (a, b, diff)]
    return cells


def test_page_shows_both_runs_scores_and_their_difference(page):
    assert score_rows(page) == [expected_row(i) for i in range(3)]
    parser = parse_page(page.read_text(encoding="utf-8"))
    text = "".join(parser.text)
    buttons = [a["data-label"] for t, a in parser.tags if t == "button"]
    assert [f"{n} {w}" for n in ("fd_mel", "clap", "kl_passt") for w in ("A", "B", "B - A")] == (
        buttons
    )
    assert "3 test captions both runs generated" in text
    assert "Only in A's per-clip table (1): only-a." in text
    for caption in CAPTIONS[:3]:  # shown as text, not markup
        assert caption in text
    tags = [t for t, _ in parser.tags]
    assert tags.count("script") == 1 and tags.count("audio") == 9 and tags.count("img") == 9
    assert not any(k.startswith("on") for _, attrs in parser.tags for k in attrs)


def test_metrics_side_by_side_and_only_the_params_that_differ(page):
    text = "".join(parse_page(page.read_text(encoding="utf-8")).text)
    assert "Metrics: eval.json" in text and "Metrics: train.json" in text
    assert "fad_mel3.751.667-2.083" in text  # A, B, B - A (4 significant digits)
    assert "embedders.mel.n_gen43-1" in text
    assert "val_ce5.0015.0050.004" in text
    assert "Params that differ" in text and "train.lr0.0010.005" in text
    assert "train.steps" not in text and "generate.top_k" not in text


def test_clips_are_copied_with_their_spectrograms(page, runs):
    out = page.parent
    a, b = runs
    for i, clip in enumerate(IDS[:3]):
        stem = f"{i:03d}_{safe_name(clip)}"
        for kind, src in (
            ("reference", a / f"data/audio/{clip}.wav"),
            ("A", a / f"data/generated/audio/{clip}.wav"),
            ("B", b / f"data/generated/audio/{clip}.wav"),
        ):
            assert (out / f"audio/{stem}_{kind}.wav").read_bytes() == src.read_bytes()
            assert (out / f"images/{stem}_{kind}.png").stat().st_size > 0
    assert len(list((out / "audio").iterdir())) == 9


def test_items_limits_the_captions_and_a_rerun_replaces_the_page(runs, tmp_path):
    out = tmp_path / "compare"
    main(["compare", str(runs[0]), str(runs[1]), "--out", str(out)])
    main(["compare", str(runs[1]), str(runs[0]), "--out", str(out), "--items", "1"])
    assert len(score_rows(out / "index.html")) == 1
    assert len(list((out / "audio").iterdir())) == 3


def run_error(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", *argv])
    assert exit_info.value.code == 1
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("remove", "named"),
    [
        (
            "reports/eval/per_clip.csv",
            "no reports/eval/per_clip.csv (written by the evaluate stage",
        ),
        ("metrics/eval.json", "no metrics/eval.json (written by the evaluate stage"),
        (
            "data/generated/audio/x&y.wav",
            "no data/generated/audio/x&y.wav (written by the generate",
        ),
        ("data/audio/clip-1.wav", "no data/audio/clip-1.wav (written by the resample stage"),
    ],
)
def test_a_missing_output_is_named_with_the_stage_that_makes_it(
    runs, tmp_path, capsys, remove, named
):
    (runs[0] / remove).unlink()
    err = run_error(capsys, str(runs[0]), str(runs[1]), "--out", str(tmp_path / "out"))
    assert named in err and f"run `dvc repro` in {runs[0]}" in err
    assert not (tmp_path / "out").exists()


def test_a_run_that_does_not_exist_is_an_error(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no DVC repository here
    err = run_error(capsys, str(runs[0]), "no-such-exp", "--out", "out")
    assert "'no-such-exp' is neither a run directory nor an experiment" in err


def test_an_out_folder_holding_other_files_is_refused(runs, tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    err = run_error(capsys, str(runs[0]), str(runs[1]), "--out", str(tmp_path / "mine"))
    assert "holds other files (notes.txt)" in err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_runs_without_a_common_clip_are_an_error(tmp_path, capsys):
    a = make_run(tmp_path / "a", IDS[:2], {k: v[:2] for k, v in A_SCORES.items()}, 1e-3, 330.0)
    b = make_run(tmp_path / "b", IDS[2:3], {k: v[:1] for k, v in B_SCORES.items()}, 1e-3, 330.0)
    err = run_error(capsys, str(a), str(b), "--out", str(tmp_path / "out"))
    assert "no test clip in common" in err


COPY_STAGE = """
import shutil
from pathlib import Path
from ruamel.yaml import YAML

src = Path(YAML(typ="safe").load(Path("params.yaml"))["src"])
for out in ("data/audio", "data/generated", "metrics"):
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(src / out, out)
Path("reports/eval").mkdir(parents=True, exist_ok=True)
shutil.copyfile(src / "reports/eval/per_clip.csv", "reports/eval/per_clip.csv")
"""
COPY_DVC_YAML = """
stages:
  copy:
    cmd: python stage.py
    deps: [stage.py]
    params: [src, train.lr]
    outs: [data/audio, data/generated, {reports/eval/per_clip.csv: {cache: false}}]
    metrics: [{metrics/eval.json: {cache: false}}, {metrics/train.json: {cache: false}}]
"""


@pytest.fixture
def experiments(runs, tmp_path) -> Path:
    """A DVC repository with experiments ``exp-a`` and ``exp-b``: a stage that copies run A's or
    B's files (wavs into the DVC cache, the rest committed); the workspace is left at B's."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "stage.py").write_text(COPY_STAGE)
    (repo / "dvc.yaml").write_text(COPY_DVC_YAML)
    (repo / "params.yaml").write_text("src: none\ntrain:\n  lr: 0.0\n  steps: 12\n")
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "init"], repo)
    for name, src, lr in (("exp-a", runs[0], 1e-3), ("exp-b", runs[1], 5e-3)):
        run(
            ["dvc", "exp", "run", "-q", "-n", name, "-S", f"src={src}", "-S", f"train.lr={lr}"],
            repo,
        )
    return repo


def test_experiments_by_name_are_read_through_dvc(experiments, runs, tmp_path, capsys):
    out = tmp_path / "compare"
    main(["compare", "exp-a", "exp-b", "--out", str(out), "--repo", str(experiments)])
    assert "A experiment exp-a (commit" in capsys.readouterr().out
    assert score_rows(out / "index.html") == [expected_row(i) for i in range(3)]
    text = "".join(parse_page((out / "index.html").read_text(encoding="utf-8")).text)
    assert "train.lr0.0010.005" in text and "fad_mel3.751.667-2.083" in text
    for side, src in (("A", runs[0]), ("B", runs[1])):  # A's wavs are not in the workspace
        copied = (out / f"audio/000_clip-1_{side}.wav").read_bytes()
        assert copied == (src / "data/generated/audio/clip-1.wav").read_bytes()
    assert (out / "audio/000_clip-1_reference.wav").read_bytes() == (
        runs[0] / "data/audio/clip-1.wav"
    ).read_bytes()


def test_an_unknown_experiment_or_one_out_of_the_cache_is_an_error(experiments, tmp_path, capsys):
    repo = ["--repo", str(experiments)]
    err = run_error(capsys, "exp-a", "exp-c", "--out", str(tmp_path / "out"), *repo)
    assert "'exp-c' is neither a run directory nor an experiment or revision" in err
    wav = (tmp_path / "run-a/data/generated/audio/x&y.wav").read_bytes()
    md5 = hashlib.md5(wav).hexdigest()
    (experiments / ".dvc/cache/files/md5" / md5[:2] / md5[2:]).unlink()
    err = run_error(capsys, "exp-a", "exp-b", "--out", str(tmp_path / "out"), *repo)
    assert "experiment exp-a (commit" in err
    assert "data/generated/audio/x&y.wav is not in the local DVC cache" in err


ROW_IDS = "() => Array.from(document.querySelectorAll('#items tbody .id')).map(c => c.textContent)"


def check_compare_page(page, n_items: int) -> None:
    """Both runs' players and scores shown, a ``<script>`` caption shown as text, and sorting by
    the first difference column (B - A) orders the rows by it, then reversed (on the second
    click)."""
    assert page.locator("audio").count() == 3 * n_items
    assert page.evaluate("document.scripts.length") == 1
    assert page.evaluate("document.querySelectorAll('#items .caption *').length") == 0
    labels = page.eval_on_selector_all("button.sort", "bs => bs.map(b => b.dataset.label)")
    assert {"clap A", "clap B", "clap B - A"} <= set(labels)
    diff = next(label for label in labels if label.endswith("B - A"))
    col = labels.index(diff) + 5  # after #, caption, reference, A, B
    values = (
        f"() => Array.from(document.querySelectorAll('#items tbody tr'))"
        f".map(r => r.cells[{col}].dataset.value).filter(v => v !== '').map(Number)"
    )
    page.click(f"button.sort[data-label='{diff}']")
    ascending = page.evaluate(values)
    assert ascending == sorted(ascending) and len(ascending) > 0
    page.click(f"button.sort[data-label='{diff}']")
    assert page.evaluate(values) == ascending[::-1]


def test_compare_page_in_headless_chromium(page, tmp_path):
    with open_gallery(page, tmp_path) as (browser_page, log):
        check_compare_page(browser_page, 3)
        captions = browser_page.eval_on_selector_all(
            "#items .caption", "cs => cs.map(c => c.textContent)"
        )
        assert SCRIPT_CAPTION in captions
        cells = browser_page.eval_on_selector_all(
            "#item-0 td.score", "cs => cs.map(c => c.textContent)"
        )
        assert cells[:3] == ["3", "0.5", "-2.5"]  # fd_mel of A and B, and B - A
        assert cells[-3:] == ["", "1.5", ""]  # kl_passt: B's only
        # sorted by fd_mel B - A, descending (check_compare_page clicked it twice)
        assert browser_page.evaluate(ROW_IDS) == [IDS[1], IDS[2], IDS[0]]
        assert log.dialogs == []


def locked_md5(repo: Path, exp: str, stage: str, out: str, relpath: str) -> str:
    """The md5 of file ``relpath`` of output ``out`` as the experiment's commit locks it (read
    from git and the cache's ``.dir`` listing by hand, not through DVC's API)."""
    refs = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], repo).split()
    (ref,) = [r for r in refs if r.endswith(f"/{exp}")]
    lock = YAML(typ="safe").load(run(["git", "show", f"{ref}:dvc.lock"], repo))
    (entry,) = [o for o in lock["stages"][stage]["outs"] if o["path"] == out]
    listing = json.loads(
        (repo / ".dvc/cache/files/md5" / entry["md5"][:2] / entry["md5"][2:]).read_text()
    )
    (md5,) = [f["md5"] for f in listing if f["relpath"] == relpath]
    return md5


def compare_two_experiments(repo: Path, tmp_path: Path) -> None:
    """Two experiments of a committed pipeline copy that differ in a sampling param (generate and
    evaluate rerun), compared by name with ``musicgen compare`` and checked in Chromium."""
    run(["git", "checkout", "-q", "--", "params.yaml"], repo)
    for name, setting in (("cfg-one", "generate.cfg_coef=1.0"), ("top-k-five", "generate.top_k=5")):
        run(["dvc", "exp", "run", "-n", name, "-S", setting], repo)
        run(["git", "checkout", "-q", "--", "params.yaml"], repo)
    n = len(pd.read_csv(repo / "reports/eval/per_clip.csv"))
    index = tmp_path / "compare/index.html"
    out = run(["musicgen", "compare", "cfg-one", "top-k-five", "--out", str(index.parent)], repo)
    assert "experiment cfg-one (commit" in out and "experiment top-k-five (commit" in out
    first = pd.read_csv(repo / "reports/eval/per_clip.csv")["id"][0]
    stem = f"000_{safe_name(first)}"
    for side, exp in (("A", "cfg-one"), ("B", "top-k-five")):  # each experiment's own clip
        wav = (index.parent / f"audio/{stem}_{side}.wav").read_bytes()
        expected = locked_md5(repo, exp, "generate", "data/generated", f"audio/{first}.wav")
        assert hashlib.md5(wav).hexdigest() == expected
    text = "".join(parse_page(index.read_text(encoding="utf-8")).text)
    assert "Params that differ" in text
    assert "generate.cfg_coef13" in text and "generate.top_k2505" in text  # A, then B
    with open_gallery(index, tmp_path) as (page, _log):
        check_compare_page(page, n)


@pytest.mark.slow
def test_compare_two_experiments_of_the_embedded_default(pipeline_repo, tmp_path):
    """On the session's shared run (tests/conftest.py); its experiments are removed after."""
    restore_baseline(pipeline_repo)
    try:
        compare_two_experiments(pipeline_repo, tmp_path)
    finally:
        run(["dvc", "exp", "remove", "cfg-one", "top-k-five"], pipeline_repo)
        restore_baseline(pipeline_repo)
