from dataclasses import replace

import pandas as pd
import pytest

from musicgen.data.splits import (
    VOCAL_WORDS,
    SplitConfig,
    assign_split,
    filter_clips,
    keyword_mask,
    make_splits,
    mentions,
)


def table(n=400):
    ids = [f"id{i:09d}" for i in range(n)]
    return pd.DataFrame(
        {
            "ytid": ids,
            "caption": ["a calm piano piece"] * n,
            "is_balanced_subset": [i % 4 == 0 for i in range(n)],
            "is_audioset_eval": [i % 2 == 0 for i in range(n)],
        }
    )


def splits_of(meta, usable, **cfg):
    kept, _ = filter_clips(meta, dict.fromkeys(usable, 10.0), SplitConfig(**cfg))
    return make_splits(kept, SplitConfig(**cfg))


def test_fractions_are_respected():
    meta = table(2000)
    splits = splits_of(meta, meta["ytid"], fractions=(0.65, 0.15, 0.20), seed=0)
    sizes = {k: len(v) / 2000 for k, v in splits.items()}
    assert sizes["train"] == pytest.approx(0.65, abs=0.04)
    assert sizes["valid"] == pytest.approx(0.15, abs=0.03)
    assert sizes["test"] == pytest.approx(0.20, abs=0.03)
    assert sum(len(v) for v in splits.values()) == 2000


@pytest.mark.parametrize("mode", ["hash", "audioset_eval"])
def test_removing_clips_leaves_every_other_clip_in_its_split(mode):
    meta = table()
    full = splits_of(meta, meta["ytid"], seed=3, mode=mode)
    usable = set(meta["ytid"][::3])  # two thirds failed to download
    part = splits_of(meta, usable, seed=3, mode=mode)
    for name, ids in part.items():
        assert set(ids) == set(full[name]) & usable
    # and the same when a filter removes clips instead
    meta.loc[meta.index % 5 == 0, "caption"] = "a low quality recording"
    filtered = splits_of(meta, meta["ytid"], seed=3, mode=mode, exclude_keywords=["low quality"])
    for name, ids in filtered.items():
        assert set(ids) == set(full[name]) - set(meta["ytid"][meta.index % 5 == 0])


def test_audioset_eval_mode_puts_eval_clips_in_test():
    meta = table(2000)
    splits = splits_of(meta, meta["ytid"], mode="audioset_eval")
    evals = set(meta.loc[meta["is_audioset_eval"], "ytid"])
    assert set(splits["test"]) == evals
    assert len(splits["train"]) / 1000 == pytest.approx(0.65 / 0.80, abs=0.04)
    assert not evals & (set(splits["train"]) | set(splits["valid"]))


def test_seed_changes_the_assignment():
    assert [assign_split(f"x{i}", (0.5, 0.25, 0.25), 0) for i in range(50)] != [
        assign_split(f"x{i}", (0.5, 0.25, 0.25), 1) for i in range(50)
    ]


def test_bad_config():
    with pytest.raises(ValueError, match="fractions"):
        assign_split("x", (0.5, 0.5, 0.5), 0)
    with pytest.raises(ValueError, match="mode"):
        SplitConfig(mode="random")


def test_keyword_filter_matches_whole_words():
    captions = pd.Series(["low quality recording", "a lowquality take", "vocals here", "no drums"])
    assert keyword_mask(captions, ["low quality", "vocals"]).tolist() == [False, True, False, True]
    assert keyword_mask(captions, []).all()


@pytest.mark.parametrize(
    "caption,has_vocals",
    [
        ("A male vocalist sings over a piano.", True),
        ("The song features passionate female vocals and a choir.", True),
        ("Someone is rapping over a trap beat.", True),
        ("There are no drums, but the vocals are great.", True),
        ("There is no percussion and the vocals are soft.", True),
        ("The male vocal is not very clear.", True),
        ("This is an instrumental break followed by female vocals.", True),
        ("There are no vocals in this song.", False),
        ("This is an instrumental piece.", False),
        ("There are no voices in this song. This is an instrumental song.", False),
        ("The song has no male or female vocals.", False),
        ("It does not have any singing.", False),
        ("This song doesn\u2019t have vocals.", False),
        ("There is no one singing.", False),
        ("No singer, just a guitar.", False),
        ("The vocals are absent.", False),
        ("The vocals cannot be heard.", False),
        ("A drum beat without any vocals.", False),
    ],
)
def test_vocal_filter_keeps_negated_mentions(caption, has_vocals):
    assert mentions(caption, list(VOCAL_WORDS)) == has_vocals
    kept, counts = filter_clips(
        pd.DataFrame({"ytid": ["a"], "caption": [caption], "is_balanced_subset": [True]}),
        {"a": 10.0},
        SplitConfig(exclude_vocals=True),
    )
    assert len(kept) == (not has_vocals) and counts["filtered_caption"] == has_vocals


def test_filters_and_their_counts():
    meta = table(8)
    meta.loc[1, "caption"] = "a low quality recording"
    meta.loc[2, "caption"] = "a female vocal"
    durations = {y: 10.0 for y in meta["ytid"]} | {meta.at[3, "ytid"]: 2.0}
    del durations[meta.at[7, "ytid"]]  # not usable
    cfg = SplitConfig(
        exclude_keywords=["low quality"],
        exclude_vocals=True,
        min_duration_s=5.0,
        balanced_only=True,
    )
    kept, counts = filter_clips(meta, durations, cfg)
    assert kept["ytid"].tolist() == [meta.at[0, "ytid"], meta.at[4, "ytid"]]
    assert counts == {"filtered_balanced": 5, "filtered_duration": 0, "filtered_caption": 0}
    kept, counts = filter_clips(meta, durations, replace(cfg, balanced_only=False))
    assert counts == {"filtered_balanced": 0, "filtered_duration": 1, "filtered_caption": 2}
    assert len(kept) == 4
