"""The listening gallery: a self-contained HTML page of the test items, their audio and scores.

API (called by the evaluate stage)::

    from musicgen.report.gallery import (
        GalleryItem, gallery_params, items_from_table, write_gallery, write_spectrogram_pairs)

    items = [GalleryItem(id, caption, reference_wav, generated_wav, {"fad": 1.2, "clap": 0.3},
                         roundtrip_wav), ...]  # roundtrip_wav: optional, the codec's round trip
    # or from a per-clip table (columns ytid + numeric scores) and the wav folders:
    items = items_from_table(per_clip, captions, Path("data/audio"), Path("data/generated/audio"))
    write_gallery(Path("reports/gallery"), metrics=metrics, params=gallery_params(params),
                  items=items, curves=curves)  # -> reports/gallery/index.html
    write_spectrogram_pairs(Path("plots/spectrograms"), items[:4])

``write_gallery`` replaces ``out_dir`` as a whole (it is a DVC output): ``index.html``, the wavs copied
into ``audio/`` and the images into ``images/``, under safe file names. The page uses no network
(no CDN, font or external script) and refers only to files inside ``out_dir``, so it opens from the
file system. It shows the run's ``metrics`` and ``params`` (nested dicts are shown with dotted keys;
:func:`gallery_params` picks :data:`GALLERY_PARAMS` from the whole params.yaml, so the evaluate stage
lists those keys in its dvc.yaml ``params:``), an optional training-curve chart (``curves``: a
column ``step`` and numeric series on one scale, e.g. ``train_loss`` and ``val_ce``; NaN where a
series has no point), and per item its caption, both players, both spectrograms and its scores,
sortable by each score. An item may carry its reference's codec round trip (``roundtrip_wav``:
decode(encode(reference))): the page then shows three clips per item, reference, round trip and
generated, so a listener tells what the codec loses from what the LM gets wrong. All text (captions, ids, keys, values) is HTML-escaped, and a
Content-Security-Policy lets only the page's own script run.

Every item's wavs are copied: for a large test set pass a subset (the page holds them all).

dvc.yaml, in the evaluate stage (``reports/gallery`` cached: it holds the audio)::

    outs:
    - reports/gallery
    plots:
    - plots/spectrograms:
        cache: false

``dvc plots show`` renders every PNG in ``plots/spectrograms`` (``<id>_reference.png``,
``<id>_roundtrip.png`` when the item has one, ``<id>_generated.png``).
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import soundfile as sf

from musicgen.report.curves import curve_summary, curves_image
from musicgen.report.png import write_png
from musicgen.report.spectrogram import SpectrogramConfig, write_spectrogram

# The params the page shows at the top: data source, LM preset and pattern, steps, sampling.
GALLERY_PARAMS = (
    "data.source",
    "lm.preset",
    "lm.pattern",
    "train.steps",
    "generate.cfg_coef",
    "generate.top_k",
    "generate.top_p",
    "generate.temperature",
)


@dataclass
class GalleryItem:
    """One test item of the gallery.

    Attributes:
        id: the clip's id (any text; file names are derived safely from it).
        caption: its text prompt (untrusted: shown escaped).
        reference_wav: the real clip.
        generated_wav: the model's output for the caption.
        scores: per-clip scores, name -> value (e.g. ``fad``, ``clap``); the table sorts by each.
        roundtrip_wav: the reference through the codec, decode(encode(reference)), or None.
    """

    id: str
    caption: str
    reference_wav: Path
    generated_wav: Path
    scores: dict[str, float] = field(default_factory=dict)
    roundtrip_wav: Path | None = None

    def clips(self) -> list[tuple[str, Path]]:
        """(kind, wav) of the item's clips in page order: reference, round trip (if any),
        generated."""
        clips = [("reference", self.reference_wav)]
        if self.roundtrip_wav is not None:
            clips.append(("roundtrip", self.roundtrip_wav))
        return clips + [("generated", self.generated_wav)]


# The column header of each clip kind.
CLIP_HEADERS = {"reference": "reference", "roundtrip": "codec round trip", "generated": "generated"}


def items_from_table(
    table: pd.DataFrame,
    captions: dict[str, str],
    reference_dir: Path,
    generated_dir: Path,
    id_column: str = "ytid",
) -> list[GalleryItem]:
    """Gallery items from a per-clip score table, in its row order.

    Args:
        table: one row per clip: ``id_column`` and numeric score columns (other columns are
            ignored); NaN scores are kept (shown as ``nan``, sorted last).
        captions: id -> caption.
        reference_dir: holds ``<id>.wav`` of each reference clip.
        generated_dir: holds ``<id>.wav`` of each generated clip.
        id_column: the id column's name.

    Returns:
        one :class:`GalleryItem` per row.
    """
    if id_column not in table.columns:
        raise ValueError(
            f"per-clip table: no '{id_column}' column (columns: {list(table.columns)})"
        )
    score_columns = [
        c for c in table.columns if c != id_column and pd.api.types.is_numeric_dtype(table[c])
    ]
    items = []
    for row in table.to_dict("records"):
        clip_id = str(row[id_column])
        if clip_id not in captions:
            raise KeyError(f"per-clip table: no caption for id {clip_id!r}")
        scores = {c: float(row[c]) for c in score_columns}
        wav = f"{clip_id}.wav"
        items.append(
            GalleryItem(
                clip_id, captions[clip_id], reference_dir / wav, generated_dir / wav, scores
            )
        )
    return items


def safe_name(text: str, max_len: int = 48) -> str:
    """A file-name fragment of ``text``: ASCII letters, digits, ``-`` and ``_`` only."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")[:max_len]
    return name or "item"


def item_stems(items: list[GalleryItem]) -> list[str]:
    """Unique file stems for the items: ``<index>_<safe id>``."""
    width = max(3, len(str(len(items))))
    return [f"{i:0{width}d}_{safe_name(item.id)}" for i, item in enumerate(items)]


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """Nested dicts -> one level with dotted keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``)."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def gallery_params(params: dict, keys: tuple[str, ...] = GALLERY_PARAMS) -> dict[str, object]:
    """Picks dotted ``keys`` from the whole params dict; a missing key is an error naming it."""
    flat = flatten(params)
    missing = [k for k in keys if k not in flat]
    if missing:
        raise KeyError(f"params: no {', '.join(missing)} (the gallery shows these keys)")
    return {k: flat[k] for k in keys}


def format_value(value: object) -> str:
    """A metric or param as short text: floats to 4 significant digits, None (a metric left
    out) as "n/a", the rest as str."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def esc(value: object) -> str:
    """:func:`format_value` as HTML text (quotes escaped too, so it may go in an attribute)."""
    return html.escape(format_value(value), quote=True)


def score_attr(value: object) -> str:
    """The sortable value of a score cell: a finite number, or empty (sorted last)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return ""
    return repr(number) if math.isfinite(number) else ""


def key_value_table(title: str, rows: dict[str, object], table_class: str) -> str:
    """A titled two-column table: each key as a row header, its value escaped."""
    body = "".join(
        f"<tr><th scope='row'>{html.escape(str(k))}</th><td>{esc(v)}</td></tr>"
        for k, v in rows.items()
    )
    return (
        f"<section class='kv'><h3>{html.escape(title)}</h3>"
        f"<table class='{table_class}'><tbody>{body}</tbody></table></section>"
    )


def _grouped_tables(title: str, tree: dict, table_class: str) -> str:
    """The top-level scalars of ``tree`` in one table, then one table per nested dict, side by
    side (e.g. the run's metrics, then each embedder's)."""
    scalars = {k: v for k, v in tree.items() if not isinstance(v, dict)}
    tables = [key_value_table(title, scalars, table_class)] if scalars else []
    tables += [
        key_value_table(f"{title}: {key}", flatten(value), table_class)
        for key, value in tree.items()
        if isinstance(value, dict)
    ]
    return "".join(tables)


# Sorts the items table by a score column; clicking again reverses. Missing scores sort last.
SORT_SCRIPT = """
document.querySelectorAll("button.sort").forEach(function (button) {
  button.addEventListener("click", function () {
    var col = Number(button.dataset.col);
    var descending = button.dataset.order === "asc";
    document.querySelectorAll("button.sort").forEach(function (b) {
      b.dataset.order = ""; b.textContent = b.dataset.label;
    });
    button.dataset.order = descending ? "desc" : "asc";
    button.textContent = button.dataset.label + (descending ? " \\u25bc" : " \\u25b2");
    var tbody = document.querySelector("#items tbody");
    var rows = Array.prototype.slice.call(tbody.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.value, y = b.cells[col].dataset.value;
      if (x === "" || y === "") { return (x === "") - (y === ""); }
      return descending ? Number(y) - Number(x) : Number(x) - Number(y);
    });
    rows.forEach(function (row) { tbody.appendChild(row); });
  });
});
"""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { margin: 0 0 0.5em; }
.top { display: flex; flex-wrap: wrap; gap: 0 2.5em; align-items: flex-start; }
.kv h3 { margin: 0.8em 0 0.3em; }
.kv table { border-collapse: collapse; }
.kv th { text-align: left; font-weight: normal; color: #555; padding: 1px 1em 1px 0; }
.kv td { font-family: monospace; }
#items { border-collapse: collapse; margin-top: 1em; }
#items th, #items td { border-top: 1px solid #ddd; padding: 6px; vertical-align: top; }
#items td.item { min-width: 18em; max-width: 26em; }
#items .id { font-family: monospace; color: #555; margin-bottom: 0.3em; }
#items td.score { font-family: monospace; text-align: right; }
.clip audio { display: block; width: 360px; }
.clip img { display: block; margin-top: 4px; width: 360px; height: 115px; }
button.sort { font: inherit; cursor: pointer; white-space: nowrap; }
.legend span { display: inline-block; width: 1em; height: 0.6em; margin: 0 0.3em 0 1em; }
"""


def _curves_section(curves: pd.DataFrame, out_dir: Path) -> str:
    summary = curve_summary(curves)
    write_png(out_dir / "images" / "curves.png", curves_image(curves))
    legend = "".join(
        f"<span style='background:{colour}'></span>{html.escape(name)}"
        for name, colour in summary.colours.items()
    )
    (x_lo, x_hi), (y_lo, y_hi) = summary.x_range, summary.y_range
    return (
        "<section><h2>Training curves</h2>"
        "<img src='images/curves.png' width='640' height='240' alt='training curves'>"
        f"<p class='legend'>{html.escape(summary.x_column)} {esc(x_lo)} to {esc(x_hi)}; "
        f"y {esc(y_lo)} to {esc(y_hi)}.{legend}</p></section>"
    )


def clip_cell(audio_src: str, image_src: str, label: str) -> str:
    """A table cell with a clip's player and its spectrogram (both relative URLs)."""
    return (
        f"<td class='clip'><audio controls preload='metadata' src='{audio_src}'></audio>"
        f"<img src='{image_src}' width='400' height='128' alt='{label} spectrogram'></td>"
    )


def sort_header(col: int, label: str) -> str:
    """A header cell whose button sorts the ``#items`` table by column ``col`` (SORT_SCRIPT)."""
    name = html.escape(label, quote=True)
    return (
        f"<th><button class='sort' type='button' data-col='{col}' data-label='{name}'>"
        f"{html.escape(label)}</button></th>"
    )


def score_cell(value: object) -> str:
    """A score's cell: its text and sortable value; None (no score) is an empty cell."""
    text = "" if value is None else esc(value)
    return f"<td class='score' data-value='{score_attr(value)}'>{text}</td>"


def clip_kinds(items: list[GalleryItem]) -> list[str]:
    """The clip columns of the page: reference, codec round trip (when any item has one),
    generated."""
    with_roundtrip = any(item.roundtrip_wav is not None for item in items)
    return ["reference", *(["roundtrip"] if with_roundtrip else []), "generated"]


def item_clip_cell(item: GalleryItem, stem: str, kind: str) -> str:
    """The cell of one of ``item``'s clips; an item without that clip gets an empty cell."""
    if kind not in dict(item.clips()):
        return "<td class='clip'>none</td>"
    return clip_cell(f"audio/{stem}_{kind}.wav", f"images/{stem}_{kind}.png", CLIP_HEADERS[kind])


def _items_table(items: list[GalleryItem], stems: list[str]) -> str:
    score_names: list[str] = []
    for item in items:
        score_names += [k for k in item.scores if k not in score_names]
    kinds = clip_kinds(items)
    first_score_col = 2 + len(kinds)  # after #, item and the clips
    headers = "".join(sort_header(first_score_col + j, name) for j, name in enumerate(score_names))
    rows = []
    for i, (item, stem) in enumerate(zip(items, stems, strict=True)):
        scores = "".join(score_cell(item.scores.get(name)) for name in score_names)
        rows.append(
            f"<tr id='item-{i}'><td>{i}</td><td class='item'>"
            f"<div class='id'>{html.escape(item.id)}</div>"
            f"<div class='caption'>{html.escape(item.caption)}</div></td>"
            + "".join(item_clip_cell(item, stem, kind) for kind in kinds)
            + scores
            + "</tr>"
        )
    clip_headers = "".join(f"<th>{CLIP_HEADERS[kind]}</th>" for kind in kinds)
    return (
        "<table id='items'><thead><tr><th>#</th><th>id and caption</th>"
        f"{clip_headers}{headers}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def copy_clip(
    src: Path, out_dir: Path, name: str, owner: str, kind: str, cfg: SpectrogramConfig
) -> None:
    """Copies a wav to ``out_dir/audio/<name>.wav`` and draws ``out_dir/images/<name>.png``.

    Raises:
        FileNotFoundError: no file at ``src`` (the message names ``owner`` and ``kind``).
        ValueError: ``src`` is not a readable sound file.
    """
    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"{owner}: no {kind} wav at {src}")
    try:
        sf.info(str(src))
    except (RuntimeError, sf.LibsndfileError) as e:
        raise ValueError(f"{owner}: unreadable {kind} wav {src}: {e}") from e
    shutil.copyfile(src, out_dir / "audio" / f"{name}.wav")
    write_spectrogram(src, out_dir / "images" / f"{name}.png", cfg)


def _copy_item(item: GalleryItem, stem: str, out_dir: Path, cfg: SpectrogramConfig) -> None:
    for kind, src in item.clips():
        copy_clip(src, out_dir, f"{stem}_{kind}", f"gallery item {item.id!r}", kind, cfg)


SPECTROGRAM_NOTE = (
    "Spectrograms: 0 Hz (bottom) to Nyquist on a mel scale, colours from -80 dBFS (dark) to "
    "0 dBFS (light)."
)


ROUNDTRIP_NOTE = (
    "The codec round trip is the reference encoded to tokens and decoded again by the run's "
    "codec: what the codec keeps of it, the best a generated clip can sound. "
)


def roundtrip_note(items: list[GalleryItem]) -> str:
    """:data:`ROUNDTRIP_NOTE` when the page shows round trips, else nothing."""
    return ROUNDTRIP_NOTE if "roundtrip" in clip_kinds(items) else ""


def html_page(title: str, body: str, extra_style: str = "") -> str:
    """A whole self-contained page: ``body`` (HTML) under an escaped ``title``, the gallery's
    STYLE (plus ``extra_style``) and SORT_SCRIPT; a Content-Security-Policy allows no network,
    and no script but SORT_SCRIPT (by its hash)."""
    script_hash = base64.b64encode(hashlib.sha256(SORT_SCRIPT.encode()).digest()).decode()
    csp = (
        "default-src 'none'; img-src 'self' data:; media-src 'self'; style-src 'unsafe-inline'; "
        f"script-src 'sha256-{script_hash}'"
    )
    title = html.escape(title)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{csp}\">"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<link rel='icon' href='data:,'>"  # no favicon request (a 404 on a plain server)
        f"<title>{title}</title><style>{STYLE}{extra_style}</style></head><body>"
        f"<h1>{title}</h1>{body}<script>{SORT_SCRIPT}</script></body></html>\n"
    )


def render_page(
    metrics: dict, params: dict, items: list[GalleryItem], stems: list[str], curves_html: str
) -> str:
    """The gallery's HTML (files it refers to: ``audio/<stem>_*.wav``, ``images/*.png``)."""
    return html_page(
        "Listening gallery",
        f"<p>{len(items)} test items. {roundtrip_note(items)}{SPECTROGRAM_NOTE} "
        "Click a score to sort.</p>"
        "<div class='top'>"
        + _grouped_tables("Metrics", metrics, "metrics")
        + _grouped_tables("Params", params, "params")
        + "</div>"
        + curves_html
        + _items_table(items, stems),
    )


@contextmanager
def replacing_dir(out_dir: Path) -> Iterator[Path]:
    """A new folder beside ``out_dir`` (with ``audio/`` and ``images/``) to fill; on success it
    replaces ``out_dir`` as a whole, on an error it is removed and ``out_dir`` is left as it was.

    Yields:
        the folder to fill.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".part"))
    try:
        (tmp / "audio").mkdir()
        (tmp / "images").mkdir()
        yield tmp
        tmp.chmod(0o755)  # mkdtemp makes 0700 folders
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_gallery(
    out_dir: Path,
    *,
    metrics: dict,
    params: dict,
    items: list[GalleryItem],
    curves: pd.DataFrame | None = None,
) -> Path:
    """Writes the gallery into ``out_dir`` (replaced as a whole); returns ``out_dir/index.html``.

    Args:
        out_dir: the gallery's folder.
        metrics: the run's metrics (nested dicts allowed).
        params: the params to show (e.g. :func:`gallery_params` of params.yaml).
        items: the test items, in page order.
        curves: optional training curves: ``step`` and numeric series on one scale.

    Returns:
        the path of ``index.html``.
    """
    out_dir = Path(out_dir)
    stems = item_stems(items)
    cfg = SpectrogramConfig()
    with replacing_dir(out_dir) as tmp:
        for item, stem in zip(items, stems, strict=True):
            _copy_item(item, stem, tmp, cfg)
        curves_html = _curves_section(curves, tmp) if curves is not None else ""
        page = render_page(metrics, params, items, stems, curves_html)
        (tmp / "index.html").write_text(page, encoding="utf-8")
    return out_dir / "index.html"


def write_spectrogram_pairs(
    plots_dir: Path, items: list[GalleryItem], cfg: SpectrogramConfig | None = None
) -> list[Path]:
    """Writes ``<safe id>_reference.png``, ``<safe id>_roundtrip.png`` (an item with a codec
    round trip) and ``<safe id>_generated.png`` per item (DVC plots).

    Returns:
        the PNG paths, two or three per item.
    """
    plots_dir = Path(plots_dir)
    names = [safe_name(item.id) for item in items]
    if len(set(names)) < len(names):
        names = item_stems(items)  # ids that collide once made safe: prefix the index
    paths = []
    for item, name in zip(items, names, strict=True):
        for kind, src in item.clips():
            paths.append(write_spectrogram(src, plots_dir / f"{name}_{kind}.png", cfg))
    return paths
