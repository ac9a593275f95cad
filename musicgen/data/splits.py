"""Filters and train / valid / test splits that stay put when other clips come and go.

A clip's split is a function of its id, the seed and (in ``audioset_eval`` mode) its own MusicCaps
flag alone: a seeded hash maps the id to [0, 1), cut at the cumulative fractions. So a clip that
fails to download or is filtered out never moves another clip to a different split.

Caption filters match whole words and phrases and ignore negated mentions: with ``vocals`` excluded,
"a male vocal sings" is dropped but "there are no vocals", "an instrumental piece without any
singing" and "the vocals are absent" are kept (see :func:`mentions`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

import pandas as pd

SPLITS = ("train", "valid", "test")
SPLIT_MODES = ("hash", "audioset_eval")

VOCAL_WORDS = (
    "vocal", "vocals", "vocalist", "vocalists", "vocalise", "vocalises", "vocalising",
    "vocalize", "vocalizes", "vocalizing", "vocalisation", "vocalisations", "vocalization",
    "vocalizations", "voice", "voices", "singer", "singers", "sing", "sings", "singing", "sang",
    "sung", "choir", "choirs", "chant", "chants", "chanting", "rap", "raps", "rapping", "rapper",
    "rappers", "lyrics", "humming", "a cappella", "acapella",
)  # fmt: skip
NEGATORS = {
    "no", "not", "without", "none", "never", "nor", "nobody", "non", "lacks", "lacking", "lack",
    "absence", "zero", "neither", "cannot",
}  # fmt: skip
NEGATED_AFTER = {"absent", "missing", "none", "lacking"}  # "the vocals are absent"
PRESENCE = {"present", "audible", "heard", "there", "included", "featured", "used", "found"}
# words that may stand between a negator and what it negates: "no male or female vocals",
# "does not have any vocals", "there is no one singing"
NEGATION_FILLERS = {
    "a", "an", "any", "the", "of", "or", "and", "male", "female", "lead", "backing", "background",
    "human", "other", "real", "audible", "clear", "discernible", "kind", "sort", "form", "type",
    "one", "is", "are", "be", "been", "has", "have", "had", "does", "do", "contain", "contains",
    "feature", "features", "include", "includes", "there", "evident", "present", "heard",
    "sign", "signs", "trace", "completely", "entirely", "totally", "at", "all", "in", "this",
    "song", "piece", "track", "recording", "it",
}  # fmt: skip
CLAUSE_BREAKS = {"but", "while", "whereas", "although", "though", "yet", "however", "instead"}
TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[.,;:!?()\[\]\"/]")


@dataclass
class SplitConfig:
    """Which clips are kept, and how they are split.

    Attributes:
        fractions: (train, valid, test), summing to 1.
        seed: Seed of the id hash.
        mode: ``hash`` (every kept clip by its hash) or ``audioset_eval`` (clips with MusicCaps'
            ``is_audioset_eval`` go to test; the rest are hashed into train and valid in the ratio
            of their fractions).
        exclude_keywords: Captions that mention any of these words or phrases are left out.
        exclude_vocals: Also leave out captions that mention singing or voices (:data:`VOCAL_WORDS`).
        balanced_only: Keep only MusicCaps' genre-balanced subset (``is_balanced_subset``).
        min_duration_s: Leave out clips whose source audio is shorter (0: keep all).
    """

    fractions: tuple[float, float, float] = (0.65, 0.15, 0.20)
    seed: int = 0
    mode: str = "hash"
    exclude_keywords: list[str] = field(default_factory=list)
    exclude_vocals: bool = False
    balanced_only: bool = False
    min_duration_s: float = 0.0

    def __post_init__(self) -> None:
        self.fractions = tuple(self.fractions)
        self.exclude_keywords = list(self.exclude_keywords or [])
        check_fractions(self.fractions)
        if self.mode not in SPLIT_MODES:
            raise ValueError(f"split mode must be one of {SPLIT_MODES}, got {self.mode!r}")

    @property
    def keywords(self) -> list[str]:
        return self.exclude_keywords + (list(VOCAL_WORDS) if self.exclude_vocals else [])


def check_fractions(fractions: tuple[float, ...]) -> None:
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(
            f"split fractions must be three non-negative numbers summing to 1, got {fractions}"
        )


def unit_hash(key: str, seed: int) -> float:
    """Maps ``key`` to a number in [0, 1) by a seeded SHA-256."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(ytid: str, fractions: tuple[float, float, float], seed: int) -> str:
    """The split of one id for the given (train, valid, test) fractions."""
    check_fractions(fractions)
    u = unit_hash(ytid, seed)
    edge = 0.0
    for name, frac in zip(SPLITS, fractions, strict=True):
        edge += frac
        if u < edge:
            return name
    return SPLITS[-1]


def assign_eval_split(
    ytid: str, is_eval: bool, fractions: tuple[float, float, float], seed: int
) -> str:
    """``audioset_eval`` mode: eval clips are test, the rest train or valid by the hash."""
    if is_eval:
        return "test"
    train, valid, _ = fractions
    if train + valid == 0:
        raise ValueError("audioset_eval mode needs a train or valid fraction above 0")
    return assign_split(ytid, (train / (train + valid), valid / (train + valid), 0.0), seed)


def tokens(text: str) -> list[str]:
    """Lower-case words (with their apostrophe, ``doesn't``) and punctuation marks."""
    return TOKEN.findall(text.lower().replace("\u2019", "'"))


def _breaks_clause(token: str) -> bool:
    return not token[0].isalnum() or token in CLAUSE_BREAKS


def _is_negator(token: str) -> bool:
    return token in NEGATORS or token.endswith("n't")


def negated(words: list[str], start: int, end: int, keyword_words: set[str]) -> bool:
    """Whether the mention ``words[start:end]`` is negated within its clause.

    Before it: a negator, then only filler words or other keywords ("no male or female vocals",
    "does not have any singing"). After it: fillers, then ``absent``, ``missing``, ``none`` or
    ``lacking`` ("the vocals are absent"), or a negator and a word of presence ("the vocals cannot
    be heard", "a voice is not present"); "the vocals are not clear" is not a negation.
    """
    skippable = NEGATION_FILLERS | keyword_words
    i = start - 1
    while i >= 0 and not _breaks_clause(words[i]):
        if _is_negator(words[i]):
            return True
        if words[i] not in skippable:
            break
        i -= 1
    after_negator = False
    for word in words[end:]:
        if _breaks_clause(word):
            break
        if word in NEGATED_AFTER or (after_negator and word in PRESENCE):
            return True
        after_negator = after_negator or _is_negator(word)
        if word not in skippable and not _is_negator(word):
            break
    return False


def mentions(caption: str, keywords: list[str]) -> bool:
    """Whether ``caption`` mentions any keyword (a word or phrase, whole words only) un-negated."""
    words = tokens(caption)
    phrases = [tokens(k) for k in keywords]
    keyword_words = {w for p in phrases for w in p}
    for phrase in filter(None, phrases):
        n = len(phrase)
        for i in range(len(words) - n + 1):
            if words[i : i + n] == phrase and not negated(words, i, i + n, keyword_words):
                return True
    return False


def keyword_mask(captions: pd.Series, keywords: list[str]) -> pd.Series:
    """True where a caption mentions none of ``keywords`` (whole words, negations ignored)."""
    if not keywords:
        return pd.Series(True, index=captions.index)
    return ~captions.fillna("").astype(str).map(lambda c: mentions(c, keywords)).astype(bool)


def filter_clips(
    metadata: pd.DataFrame, durations: dict[str, float], cfg: SplitConfig
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The usable clips that pass every filter, and how many each filter removed.

    Args:
        metadata: The MusicCaps-style table (``ytid``, ``caption``, ``is_balanced_subset``, ...).
        durations: Id -> duration in seconds of the source audio, for every usable clip.
        cfg: The filters.

    Returns:
        the kept rows, and counts ``filtered_balanced``, ``filtered_duration``,
        ``filtered_caption`` (applied in that order).
    """
    kept = metadata[metadata["ytid"].isin(set(durations))]
    counts = {}
    for name, active, mask_of in (
        ("balanced", cfg.balanced_only, lambda t: t["is_balanced_subset"].astype(bool)),
        (
            "duration",
            cfg.min_duration_s > 0,
            lambda t: t["ytid"].map(durations) >= cfg.min_duration_s,
        ),
        ("caption", bool(cfg.keywords), lambda t: keyword_mask(t["caption"], cfg.keywords)),
    ):
        before = len(kept)
        if active:
            kept = kept[mask_of(kept).to_numpy(bool)]
        counts[f"filtered_{name}"] = before - len(kept)
    return kept, counts


def make_splits(kept: pd.DataFrame, cfg: SplitConfig) -> dict[str, list[str]]:
    """Assigns each kept clip to a split.

    Returns:
        split name -> sorted ids.
    """
    out: dict[str, list[str]] = {name: [] for name in SPLITS}
    for row in kept.itertuples():
        if cfg.mode == "audioset_eval":
            name = assign_eval_split(row.ytid, bool(row.is_audioset_eval), cfg.fractions, cfg.seed)
        else:
            name = assign_split(row.ytid, cfg.fractions, cfg.seed)
        out[name].append(row.ytid)
    return {name: sorted(ids) for name, ids in out.items()}
