import pandas as pd
import pytest

from musicgen.data.splits import assign_split, keyword_mask, make_splits


def table(n=400):
    ids = [f"id{i:09d}" for i in range(n)]
    return pd.DataFrame({"ytid": ids, "caption": ["a calm piano piece"] * n})


def test_fractions_are_respected():
    meta = table(2000)
    splits = make_splits(meta, set(meta["ytid"]), (0.65, 0.15, 0.20), seed=0)
    sizes = {k: len(v) / 2000 for k, v in splits.items()}
    assert sizes["train"] == pytest.approx(0.65, abs=0.04)
    assert sizes["valid"] == pytest.approx(0.15, abs=0.03)
    assert sizes["test"] == pytest.approx(0.20, abs=0.03)
    assert sum(len(v) for v in splits.values()) == 2000


def test_removing_clips_leaves_every_other_clip_in_its_split():
    meta = table()
    full = make_splits(meta, set(meta["ytid"]), (0.65, 0.15, 0.20), seed=3)
    usable = set(meta["ytid"][::3])
    part = make_splits(meta, usable, (0.65, 0.15, 0.20), seed=3)
    for name, ids in part.items():
        assert set(ids) == set(full[name]) & usable


def test_seed_changes_the_assignment():
    assert [assign_split(f"x{i}", (0.5, 0.25, 0.25), 0) for i in range(50)] != [
        assign_split(f"x{i}", (0.5, 0.25, 0.25), 1) for i in range(50)
    ]


def test_bad_fractions():
    with pytest.raises(ValueError, match="fractions"):
        assign_split("x", (0.5, 0.5, 0.5), 0)


def test_keyword_filter_matches_whole_words():
    captions = pd.Series(["low quality recording", "a lowquality take", "vocals here", "no drums"])
    assert keyword_mask(captions, ["low quality", "vocals"]).tolist() == [False, True, False, True]
