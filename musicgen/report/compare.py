"""A/B listening page: two runs' clips for the same test captions, side by side with their scores.

API (``musicgen compare`` calls it)::

    from musicgen.report.compare import write_compare
    from musicgen.report.runs import load_run

    a, b = load_run("exp-a", repo), load_run("path/to/run-b", repo)
    write_compare(Path("compare"), a, b)  # -> compare/index.html

The page is built from the gallery's pieces (:mod:`musicgen.report.gallery`: the same page shell,
Content-Security-Policy, escaping, players, spectrograms and sorting script), so it is as
self-contained: ``out_dir`` is replaced as a whole and holds ``index.html``, the wavs in ``audio/``
and the spectrograms in ``images/``; it opens from the file system. At the top: the two runs and
where they come from, their metrics side by side (every ``metrics/*.json``, with B - A) and the
params that differ. Then one row per test caption both runs generated (in A's order): the caption,
the reference clip (A's), A's and B's clips, each with its spectrogram, and per score column of the
per-clip tables (any numeric column: ``fd_<embedder>``, ``clap``, ``kl_passt``, ...) A's value, B's
and B - A; every column sorts.
"""

from __future__ import annotations

import html
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from musicgen.report.gallery import (
    SPECTROGRAM_NOTE,
    GalleryItem,
    clip_cell,
    copy_clip,
    esc,
    flatten,
    html_page,
    item_stems,
    items_from_table,
    replacing_dir,
    score_cell,
    sort_header,
)
from musicgen.report.runs import GENERATED_AUDIO, REFERENCE_AUDIO, Run, RunError
from musicgen.report.spectrogram import SpectrogramConfig

SIDES = ("A", "B")
MISSING = object()  # a key one run lacks
FIRST_SCORE_COL = 5  # after #, id and caption, reference, A, B
EXTRA_STYLE = """
.runs th { text-align: left; padding-right: 1em; }
.runs td { font-family: monospace; }
.kv td { text-align: right; padding: 1px 0 1px 1.2em; }
.kv thead th { font-weight: bold; color: #222; }
.kv tr.same td, .kv tr.same th { color: #999; }
"""


@dataclass
class ComparedClip:
    """One test caption of the comparison: the same id in both runs.

    Attributes:
        a: A's gallery item (its caption, the reference clip, A's clip and scores).
        b: B's gallery item for the same id (its reference is not used: the page plays A's).
    """

    a: GalleryItem
    b: GalleryItem

    @property
    def id(self) -> str:
        return self.a.id


def paired_clips(
    a: Run, b: Run, staging: Path, max_items: int = 0
) -> tuple[list[ComparedClip], list[str], list[str]]:
    """The clips of the test ids both runs scored, in A's order, with local wav paths.

    Args:
        a: run A.
        b: run B.
        staging: an empty folder to copy an experiment's wavs into (a run directory's are used
            where they are).
        max_items: at most this many clips (0: all).

    Returns:
        the pairs, and the ids only A scored and only B scored.

    Raises:
        RunError: no id in common, or a wav is missing.
    """
    ids_a, ids_b = list(a.per_clip["id"]), list(b.per_clip["id"])
    common = [i for i in ids_a if i in set(ids_b)]
    only_a = [i for i in ids_a if i not in set(common)]
    only_b = [i for i in ids_b if i not in set(common)]
    if not common:
        raise RunError(
            f"{a.files.source} and {b.files.source} have no test clip in common (per_clip ids "
            f"{ids_a[:3]}... and {ids_b[:3]}...)"
        )
    shown = common[:max_items] if max_items else common
    items = []
    for side, run in zip(SIDES, (a, b), strict=True):
        rows = run.per_clip.set_index("id").loc[shown]
        rels = [f"{GENERATED_AUDIO}/{i}.wav" for i in shown]
        rels += [f"{REFERENCE_AUDIO}/{i}.wav" for i in shown] if run is a else []
        root = run.files.local_files(rels, Path(staging) / side)
        captions = dict(zip(rows.index, rows["caption"], strict=True))
        reference, generated = root / REFERENCE_AUDIO, root / GENERATED_AUDIO
        items.append(items_from_table(rows.reset_index(), captions, reference, generated, "id"))
    return [ComparedClip(x, y) for x, y in zip(*items, strict=True)], only_a, only_b


def difference(a: object, b: object) -> float | None:
    """``b - a`` of two numbers (NaN where either is NaN); None where either is not a number."""
    numbers = [v for v in (a, b) if isinstance(v, int | float) and not isinstance(v, bool)]
    return float(b) - float(a) if len(numbers) == 2 else None  # type: ignore[arg-type]


def _side_by_side(title: str, a: dict, b: dict, *, diff: bool) -> str:
    """A table of the keys of ``a`` and ``b``: A's value, B's (and B - A); rows where the values
    are equal are greyed."""
    keys = list(a) + [k for k in b if k not in a]
    rows = []
    for key in keys:
        x, y = a.get(key, MISSING), b.get(key, MISSING)
        cells = [esc("(none)" if v is MISSING else v) for v in (x, y)]
        if diff:
            cells.append(esc(difference(x, y)) if difference(x, y) is not None else "")
        same = " class='same'" if x == y or (_is_nan(x) and _is_nan(y)) else ""
        rows.append(
            f"<tr{same}><th scope='row'>{html.escape(str(key))}</th>"
            + "".join(f"<td>{c}</td>" for c in cells)
            + "</tr>"
        )
    head = "<th></th><th>A</th><th>B</th>" + ("<th>B - A</th>" if diff else "")
    return (
        f"<section class='kv'><h3>{html.escape(title)}</h3><table><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></section>"
    )


def _is_nan(value: object) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _runs_table(a: Run, b: Run) -> str:
    rows = "".join(
        f"<tr><th scope='row'>{side}</th><td>{html.escape(run.name)}</td>"
        f"<td>{html.escape(run.files.source)}</td></tr>"
        for side, run in zip(SIDES, (a, b), strict=True)
    )
    return f"<table class='runs'><tbody>{rows}</tbody></table>"


def _metrics_and_params(a: Run, b: Run) -> str:
    """The metrics files side by side (union of both runs'), then the params that differ."""
    names = list(a.metrics) + [n for n in b.metrics if n not in a.metrics]
    tables = [
        _side_by_side(
            f"Metrics: {name}",
            flatten(a.metrics.get(name, {})),
            flatten(b.metrics.get(name, {})),
            diff=True,
        )
        for name in names
    ]
    differ = [
        k for k in {**a.params, **b.params} if a.params.get(k, MISSING) != b.params.get(k, MISSING)
    ]
    if differ:
        a_params, b_params = ({k: p[k] for k in differ if k in p} for p in (a.params, b.params))
        tables.append(_side_by_side("Params that differ", a_params, b_params, diff=False))
    else:
        tables.append("<section class='kv'><h3>Params</h3><p>the same in both runs</p></section>")
    return "<div class='top'>" + "".join(tables) + "</div>"


def score_names(pairs: list[ComparedClip]) -> list[str]:
    """The score columns of both runs' per-clip tables, A's first."""
    names = dict.fromkeys(k for pair in pairs for k in pair.a.scores)
    names.update(dict.fromkeys(k for pair in pairs for k in pair.b.scores))
    return list(names)


def _items_table(pairs: list[ComparedClip], stems: list[str]) -> str:
    names = score_names(pairs)
    labels = [f"{name} {what}" for name in names for what in (*SIDES, "B - A")]
    headers = "".join(sort_header(FIRST_SCORE_COL + j, label) for j, label in enumerate(labels))
    rows = []
    for i, (pair, stem) in enumerate(zip(pairs, stems, strict=True)):
        cells = ""
        for name in names:
            x, y = pair.a.scores.get(name), pair.b.scores.get(name)
            cells += score_cell(x) + score_cell(y) + score_cell(difference(x, y))
        rows.append(
            f"<tr id='item-{i}'><td>{i}</td><td class='item'>"
            f"<div class='id'>{html.escape(pair.id)}</div>"
            f"<div class='caption'>{html.escape(pair.a.caption)}</div></td>"
            + "".join(
                clip_cell(f"audio/{stem}_{kind}.wav", f"images/{stem}_{kind}.png", kind)
                for kind in ("reference", "A", "B")
            )
            + cells
            + "</tr>"
        )
    return (
        "<table id='items'><thead><tr><th>#</th><th>id and caption</th><th>reference</th>"
        f"<th>A</th><th>B</th>{headers}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def render_compare(
    a: Run, b: Run, pairs: list[ComparedClip], stems: list[str], only: tuple[list, list]
) -> str:
    """The comparison page's HTML (files it refers to: ``audio/<stem>_*.wav``, ``images/*``)."""
    unpaired = "".join(
        f" Only in {side}'s per-clip table ({len(ids)}): "
        f"{html.escape(', '.join(map(str, ids[:5])))}{'...' if len(ids) > 5 else ''}."
        for side, ids in zip(SIDES, only, strict=True)
        if ids
    )
    intro = (
        f"<p>{len(pairs)} test captions both runs generated.{unpaired} The reference is A's clip. "
        f"{SPECTROGRAM_NOTE} Per score: A's, B's and B - A (for FD and KL lower is better, for "
        "CLAP higher); click a header to sort.</p>"
    )
    return html_page(
        "A/B comparison",
        _runs_table(a, b) + intro + _metrics_and_params(a, b) + _items_table(pairs, stems),
        EXTRA_STYLE,
    )


def write_compare(out_dir: Path, a: Run, b: Run, max_items: int = 0) -> Path:
    """Writes the comparison of runs ``a`` and ``b`` into ``out_dir`` (replaced as a whole).

    Args:
        out_dir: the page's folder.
        a: run A.
        b: run B.
        max_items: at most this many test captions (0: all both runs scored).

    Returns:
        the path of ``index.html``.

    Raises:
        RunError: the runs have no clip in common, or a wav is missing.
    """
    out_dir = Path(out_dir)
    cfg = SpectrogramConfig()
    with tempfile.TemporaryDirectory(prefix="musicgen-compare-") as staging:
        pairs, only_a, only_b = paired_clips(a, b, Path(staging), max_items)
        stems = item_stems([pair.a for pair in pairs])
        with replacing_dir(out_dir) as tmp:
            for pair, stem in zip(pairs, stems, strict=True):
                owner = f"clip {pair.id!r}"
                for kind, src in (
                    ("reference", pair.a.reference_wav),
                    ("A", pair.a.generated_wav),
                    ("B", pair.b.generated_wav),
                ):
                    copy_clip(src, tmp, f"{stem}_{kind}", owner, kind, cfg)
            page = render_compare(a, b, pairs, stems, (only_a, only_b))
            (tmp / "index.html").write_text(page, encoding="utf-8")
    return out_dir / "index.html"
