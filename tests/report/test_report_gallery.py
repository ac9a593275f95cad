"""The gallery page: escaped text, files only inside its folder, scores, params, errors."""

from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pandas as pd
import pytest
from reporthelpers import (
    HOSTILE_CAPTIONS,
    HOSTILE_IDS,
    SCRIPT_CAPTION,
    decode_png,
    gallery_dir,
    parse_page,
)

from musicgen.report.gallery import (
    GALLERY_PARAMS,
    GalleryItem,
    gallery_params,
    items_from_table,
    safe_name,
    write_gallery,
    write_spectrogram_pairs,
)


def page_refs(index: Path) -> list[str]:
    """Every URL the page refers to (src and href attributes)."""
    parser = parse_page(index.read_text(encoding="utf-8"))
    return [v for _, attrs in parser.tags for k, v in attrs.items() if k in ("src", "href") and v]


def test_hostile_text_is_shown_as_text(gallery):
    parser = parse_page(gallery.read_text(encoding="utf-8"))
    text = "".join(parser.text)
    for caption in HOSTILE_CAPTIONS:
        assert caption in text
    for item_id in HOSTILE_IDS:
        assert item_id in text
    for shown in ("vggish<script>", "<em>k</em>", "<i>tiny</i>"):  # metric and param text
        assert shown in text
    tags = [tag for tag, _ in parser.tags]
    assert tags.count("script") == 1  # the page's own sorting script only
    assert "b" not in tags and "i" not in tags and "em" not in tags
    assert [t for t in tags if t == "img"] == ["img"] * 10  # curves + 3 per item, no injected one
    assert not any(k.startswith("on") for _, attrs in parser.tags for k in attrs)


def test_page_refers_only_to_files_inside_its_folder(gallery):
    out_dir = gallery.parent.resolve()
    refs = page_refs(gallery)
    local = [r for r in refs if r != "data:,"]  # the empty favicon, so no favicon request
    assert len(local) == 1 + 6 * 3  # curves, and 3 wavs + 3 images per item
    for ref in local:
        parts = urlsplit(ref)
        assert not parts.scheme and not parts.netloc and not ref.startswith("/"), ref
        target = (out_dir / unquote(parts.path)).resolve()
        assert target.is_relative_to(out_dir) and target.is_file(), ref
    files = {p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file()}
    assert files == {"index.html", *local}  # nothing else in the folder


def test_gallery_copies_audio_and_writes_spectrograms(gallery, hostile_items):
    out_dir = gallery.parent
    for i, item in enumerate(hostile_items):
        stem = f"{i:03d}_{safe_name(item.id)}"
        for kind, src in item.clips():
            copy = out_dir / "audio" / f"{stem}_{kind}.wav"
            assert copy.read_bytes() == src.read_bytes()
            assert decode_png((out_dir / "images" / f"{stem}_{kind}.png").read_bytes()).ndim == 3
    assert safe_name("../../etc/passwd") == "etc_passwd"


def test_scores_carry_sortable_values(gallery):
    parser = parse_page(gallery.read_text(encoding="utf-8"))
    values = [a["data-value"] for t, a in parser.tags if t == "td" and a.get("class") == "score"]
    assert values == ["2.0", "0.1", "0.5", "0.3", "1.25", ""]  # NaN: empty, sorted last
    buttons = [a["data-label"] for t, a in parser.tags if t == "button"]
    assert buttons == ["fad", "clap"]


def test_rewrite_replaces_the_folder(tmp_path, hostile_items, run_info):
    out_dir = gallery_dir(tmp_path)
    write_gallery(out_dir, items=hostile_items, **run_info)
    index = write_gallery(out_dir, metrics={}, params={}, items=hostile_items[:1])
    assert sorted(p.name for p in (out_dir / "audio").iterdir()) == [
        "000_etc_passwd_generated.wav",
        "000_etc_passwd_reference.wav",
        "000_etc_passwd_roundtrip.wav",
    ]
    assert not (out_dir / "images" / "curves.png").exists()
    assert "curves.png" not in index.read_text(encoding="utf-8")
    assert [p.name for p in out_dir.parent.iterdir()] == ["gallery"]  # no temporary folder
    index = write_gallery(out_dir, metrics={}, params={}, items=[])
    assert list((out_dir / "audio").iterdir()) == []
    assert "<tbody></tbody>" in index.read_text(encoding="utf-8")


def test_missing_wav_names_the_item_and_keeps_the_old_gallery(tmp_path, hostile_items, run_info):
    out_dir = gallery_dir(tmp_path)
    index = write_gallery(out_dir, items=hostile_items, **run_info)
    before = index.read_bytes()
    broken = GalleryItem(
        "lost", SCRIPT_CAPTION, tmp_path / "nope.wav", hostile_items[0].generated_wav
    )
    with pytest.raises(FileNotFoundError, match=r"'lost': no reference wav at .*nope\.wav"):
        write_gallery(out_dir, metrics={}, params={}, items=[broken])
    assert index.read_bytes() == before
    assert [p.name for p in out_dir.parent.iterdir()] == ["gallery"]


def clip_columns(index: Path) -> list[str]:
    """The headers of the items table between "id and caption" and the first score."""
    parser = parse_page(index.read_text(encoding="utf-8"))
    headers, in_header = [], False
    for text in parser.text:
        in_header = in_header or text == "id and caption"
        if in_header and text in ("reference", "codec round trip", "generated"):
            headers.append(text)
    return headers


def test_round_trips_are_a_column_between_reference_and_generated(tmp_path, hostile_items):
    index = write_gallery(gallery_dir(tmp_path), metrics={}, params={}, items=hostile_items)
    assert clip_columns(index) == ["reference", "codec round trip", "generated"]
    assert "codec round trip is the reference encoded" in index.read_text(encoding="utf-8")
    parser = parse_page(index.read_text(encoding="utf-8"))
    sources = [a["src"] for t, a in parser.tags if t == "audio"]
    assert [s.rsplit("_", 1)[1] for s in sources[:3]] == [
        "reference.wav",
        "roundtrip.wav",
        "generated.wav",
    ]
    # without round trips (e.g. a gallery of older runs): two clip columns, scores after them
    plain = [
        GalleryItem(i.id, i.caption, i.reference_wav, i.generated_wav, i.scores)
        for i in hostile_items
    ]
    index = write_gallery(gallery_dir(tmp_path / "plain"), metrics={}, params={}, items=plain)
    assert clip_columns(index) == ["reference", "generated"]
    parser = parse_page(index.read_text(encoding="utf-8"))
    assert [a["data-col"] for t, a in parser.tags if t == "button"] == ["4", "5"]
    assert len([t for t, _ in parser.tags if t == "audio"]) == 2 * len(plain)
    # one item with a round trip: every row gets the column, the others an empty cell
    mixed = [hostile_items[0], *plain[1:]]
    index = write_gallery(gallery_dir(tmp_path / "mixed"), metrics={}, params={}, items=mixed)
    assert clip_columns(index) == ["reference", "codec round trip", "generated"]
    parser = parse_page(index.read_text(encoding="utf-8"))
    assert [a["data-col"] for t, a in parser.tags if t == "button"] == ["5", "6"]
    assert len([t for t, _ in parser.tags if t == "audio"]) == 2 * len(mixed) + 1


def test_gallery_params_pick_the_key_settings():
    params = {
        "data": {"source": "musiccaps", "synthetic": {"n_clips": 240}},
        "lm": {"preset": "small", "pattern": "delay", "delays": [0, 1, 2, 3]},
        "train": {"steps": 1000, "lr": 1e-3},
        "generate": {"cfg_coef": 3.0, "top_k": 250, "top_p": 0.0, "temperature": 1.0},
    }
    picked = gallery_params(params)
    assert list(picked) == list(GALLERY_PARAMS)
    assert picked["data.source"] == "musiccaps" and picked["generate.top_k"] == 250
    del params["lm"]["pattern"]
    with pytest.raises(KeyError, match="lm.pattern"):
        gallery_params(params)


def test_spectrogram_pairs_for_dvc_plots(tmp_path, hostile_items):
    paths = write_spectrogram_pairs(tmp_path / "plots", hostile_items[:2])
    assert [p.name for p in paths] == [
        "etc_passwd_reference.png",
        "etc_passwd_roundtrip.png",
        "etc_passwd_generated.png",
        "b_id_b_reference.png",
        "b_id_b_roundtrip.png",
        "b_id_b_generated.png",
    ]
    twin = GalleryItem("b/id/b", "", hostile_items[0].reference_wav, hostile_items[0].generated_wav)
    paths = write_spectrogram_pairs(tmp_path / "twins", [hostile_items[1], twin])
    assert len({p.name for p in paths}) == 5  # ids equal once made safe: index-prefixed names


def test_items_from_a_per_clip_table(tmp_path):
    table = pd.DataFrame(
        {
            "ytid": ["b", "a"],
            "fd_vggish": [1.5, 0.25],
            "clap-score": [0.2, np.nan],
            "note": ["x", "y"],
        }
    )
    items = items_from_table(
        table, {"a": "cap a", "b": "cap b"}, tmp_path / "ref", tmp_path / "gen"
    )
    assert [(i.id, i.caption) for i in items] == [("b", "cap b"), ("a", "cap a")]
    assert items[0].reference_wav == tmp_path / "ref" / "b.wav"
    assert items[1].generated_wav == tmp_path / "gen" / "a.wav"
    assert items[0].scores == {"fd_vggish": 1.5, "clap-score": 0.2}  # numeric columns only
    assert np.isnan(items[1].scores["clap-score"])
    with pytest.raises(KeyError, match="no caption for id 'b'"):
        items_from_table(table, {"a": "cap a"}, tmp_path, tmp_path)
    with pytest.raises(ValueError, match="no 'ytid' column"):
        items_from_table(table.drop(columns="ytid"), {}, tmp_path, tmp_path)
