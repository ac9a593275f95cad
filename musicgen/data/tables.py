"""Reading the tables people hand the pipeline (MusicCaps CSVs, folder manifests), row by row.

Nothing in such a table stops a stage midway: each row is parsed on its own, and what is wrong with
it becomes a :class:`Problem` (file, row, field, reason) that the stage records. A row that still
names a clip becomes that clip with status ``invalid`` and the reason; a row that names none (no
id, or an id an earlier row has) goes to the download stage's ``rejected.csv``.

Row numbers are the file's line numbers, the header being row 1 (what a spreadsheet shows; a row
whose quoted caption spans several lines is numbered by its first line).
"""

from __future__ import annotations

import csv
import html
import json
import math
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

REJECTED = "rejected.csv"  # the download stage's table of listed rows that became no clip
REJECTED_COLUMNS = ["file", "row", "ytid", "field", "reason"]
TRUE_WORDS = {"true", "t", "yes", "y", "1", "1.0"}
FALSE_WORDS = {"false", "f", "no", "n", "0", "0.0", ""}
_TAG = re.compile(r"</?[A-Za-z][^<>]*>")  # an HTML tag such as <br>, <b>, </p>, <a href="...">
_WHITESPACE_CONTROLS = {"\t", "\n", "\r"}


@dataclass(frozen=True)
class Problem:
    """What is wrong with one field of one row of a table (row 0: the file has no rows)."""

    file: str
    row: int
    field: str
    reason: str

    def __str__(self) -> str:
        row = f" row {self.row}" if self.row else ""
        return f"{Path(self.file).name}{row}, {self.field}: {self.reason}"


def rejected_table(problems: list[Problem], ids: list[str]) -> pd.DataFrame:
    """The ``rejected.csv`` table: one row per problem, with the id the row had ("" if none)."""
    rows = [
        {"file": p.file, "row": p.row, "ytid": y, "field": p.field, "reason": p.reason}
        for p, y in zip(problems, ids, strict=True)
    ]
    return pd.DataFrame(rows, columns=REJECTED_COLUMNS)


def read_csv_rows(path: str | Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The header and every non-blank row of a CSV, as strings, with its row number.

    Short rows get ``""`` for their missing fields and a ``__problem__`` key saying so; long rows
    keep their first fields and say so too. Bytes that are not UTF-8 are replaced (U+FFFD).

    Raises:
        ValueError: the file is empty (no header).
    """
    rows = []
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        if not any(header):
            raise ValueError(f"{path}: empty file, no header row")
        start = reader.line_num + 1
        for fields in reader:
            row, start = start, reader.line_num + 1
            if not any(v.strip() for v in fields):
                continue
            record = dict(zip(header, fields + [""] * (len(header) - len(fields)), strict=False))
            if len(fields) != len(header):
                short = len(fields) < len(header)
                record["__problem__"] = f"{len(fields)} fields, the header has {len(header)}" + (
                    f": no {', '.join(header[len(fields) :])}" if short else ""
                )
            rows.append((row, record))
    return header, rows


def read_jsonl_rows(path: str | Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Every non-blank line of a JSONL file as a dict of strings, with its line number.

    A line that is not a JSON object becomes ``{"__problem__": ...}``. The header is the keys seen,
    in order of first appearance.
    """
    header: dict[str, None] = {}
    rows = []
    lines = Path(path).read_text(encoding="utf-8-sig", errors="replace").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            rows.append((number, {"__problem__": f"not JSON ({e.msg})"}))
            continue
        if not isinstance(value, dict):
            rows.append((number, {"__problem__": "not a JSON object"}))
            continue
        header.update(dict.fromkeys(value))
        rows.append((number, {k: "" if v is None else str(v) for k, v in value.items()}))
    return list(header), rows


def clean_caption(text: str) -> str:
    """A caption as plain text: HTML tags dropped and entities decoded, control and invisible
    format characters (zero-width spaces, bidi marks, NUL, ...) made spaces, NFC, ends stripped.

    Line breaks and tabs stay (words are split on any whitespace later); other scripts stay as
    they are. Where something was removed, runs of spaces become one.
    """
    given = str(text)
    text = html.unescape(_TAG.sub(" ", given))
    text = "".join(
        " " if unicodedata.category(c) in ("Cc", "Cf") and c not in _WHITESPACE_CONTROLS else c
        for c in text
    )
    if text != given:  # what was removed leaves one space; a clean caption keeps its spacing
        text = re.sub(" {2,}", " ", text)
    return unicodedata.normalize("NFC", text).strip()


def parse_bool(value: object) -> bool | None:
    """``true/false``, ``yes/no``, ``t/f``, ``y/n``, ``1/0`` in any case, or a bool; ``""`` is
    False (an absent flag); anything else None."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    return None


def parse_seconds(value: object) -> float | None:
    """A finite, non-negative number of seconds, or None."""
    try:
        seconds = float(str(value).strip())
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


@dataclass
class SourceTables:
    """What a source gives the download stage.

    Attributes:
        metadata: MusicCaps columns, one row per clip (ids unique).
        status: One row per clip of ``metadata``, in its order (see :mod:`musicgen.data.download`).
        rejected: Listed rows that became no clip (:data:`REJECTED_COLUMNS`).
    """

    metadata: pd.DataFrame
    status: pd.DataFrame
    rejected: pd.DataFrame
