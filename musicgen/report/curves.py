"""Training curves as a static PNG line chart (numpy only), for the gallery.

``dvc plots show`` writes HTML that loads Vega from a CDN and renders blank offline; the gallery
draws its own chart. The image holds the lines and a light grid only (no text: there is no font
renderer); :func:`curve_summary` gives the axis ranges and the colour of each series, which the
page prints beside the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

SERIES_COLOURS = [  # one per series, in column order
    (31, 119, 180),
    (214, 39, 40),
    (44, 160, 44),
    (148, 103, 189),
    (255, 127, 14),
    (23, 190, 207),
]
GRID_COLOUR = (225, 225, 225)
AXIS_COLOUR = (120, 120, 120)


@dataclass
class CurveSummary:
    """What the page prints beside the chart: axis ranges and each series' colour (hex)."""

    x_column: str
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    colours: dict[str, str]  # series name -> "#rrggbb"


def _series(curves: pd.DataFrame, x_column: str) -> dict[str, pd.DataFrame]:
    """Each numeric column other than ``x_column`` with its finite points, sorted by x."""
    if x_column not in curves.columns:
        raise ValueError(f"curves: no '{x_column}' column (columns: {list(curves.columns)})")
    out = {}
    for name in curves.columns:
        if name == x_column or not pd.api.types.is_numeric_dtype(curves[name]):
            continue
        points = curves[[x_column, name]].astype(np.float64)
        points = points[np.isfinite(points).all(axis=1)].sort_values(x_column)
        if len(points):
            out[str(name)] = points
    return out


def _ranges(series: dict[str, pd.DataFrame], x_column: str) -> tuple[tuple, tuple]:
    xs = np.concatenate([p[x_column].to_numpy() for p in series.values()])
    ys = np.concatenate([p.iloc[:, 1].to_numpy() for p in series.values()])
    x_lo, x_hi, y_lo, y_hi = xs.min(), xs.max(), ys.min(), ys.max()
    if x_hi == x_lo:
        x_hi = x_lo + 1.0
    if y_hi == y_lo:
        y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
    return (float(x_lo), float(x_hi)), (float(y_lo), float(y_hi))


def curve_summary(curves: pd.DataFrame, x_column: str = "step") -> CurveSummary:
    """The axis ranges and series colours of :func:`curves_image` on the same frame."""
    series = _series(curves, x_column)
    if not series:
        raise ValueError("curves: no numeric series with finite values to draw")
    x_range, y_range = _ranges(series, x_column)
    colours = {
        name: "#{:02x}{:02x}{:02x}".format(*SERIES_COLOURS[i % len(SERIES_COLOURS)])
        for i, name in enumerate(series)
    }
    return CurveSummary(x_column, x_range, y_range, colours)


def _draw_line(canvas: np.ndarray, p0: np.ndarray, p1: np.ndarray, colour: tuple) -> None:
    """Draws a 2-pixel-wide segment between (row, col) points by dense sampling."""
    steps = int(np.ceil(np.abs(p1 - p0).max())) + 1
    t = np.linspace(0.0, 1.0, steps)[:, None]
    points = np.round(p0 + t * (p1 - p0)).astype(np.int64)  # (steps, 2)
    height, width = canvas.shape[:2]
    for dr, dc in ((0, 0), (1, 0), (0, 1)):
        rows = np.clip(points[:, 0] + dr, 0, height - 1)
        cols = np.clip(points[:, 1] + dc, 0, width - 1)
        canvas[rows, cols] = colour


def curves_image(
    curves: pd.DataFrame, x_column: str = "step", width: int = 640, height: int = 240
) -> np.ndarray:
    """A line chart of every numeric column of ``curves`` against ``x_column``.

    NaN values (e.g. a validation curve logged every few steps in a per-step table) are skipped:
    each series connects its own finite points. All series share one y axis.

    Returns:
        (height, width, 3) uint8, white background, light grid at tenths of each axis.
    """
    summary = curve_summary(curves, x_column)
    series = _series(curves, x_column)
    margin = 8
    canvas = np.full((height, width, 3), 255, np.uint8)
    for frac in np.linspace(0.0, 1.0, 11):
        row = round(margin + frac * (height - 1 - 2 * margin))
        col = round(margin + frac * (width - 1 - 2 * margin))
        canvas[row, margin : width - margin] = GRID_COLOUR
        canvas[margin : height - margin, col] = GRID_COLOUR
    canvas[height - 1 - margin, margin : width - margin] = AXIS_COLOUR
    canvas[margin : height - margin, margin] = AXIS_COLOUR
    (x_lo, x_hi), (y_lo, y_hi) = summary.x_range, summary.y_range
    for i, (_, points) in enumerate(series.items()):
        x = (points.iloc[:, 0].to_numpy() - x_lo) / (x_hi - x_lo)
        y = (points.iloc[:, 1].to_numpy() - y_lo) / (y_hi - y_lo)
        rows = margin + (1.0 - y) * (height - 1 - 2 * margin)
        cols = margin + x * (width - 1 - 2 * margin)
        pixels = np.stack([rows, cols], axis=1)  # (n, 2)
        colour = SERIES_COLOURS[i % len(SERIES_COLOURS)]
        for p0, p1 in zip(pixels[:-1], pixels[1:], strict=True):
            _draw_line(canvas, p0, p1, colour)
        if len(pixels) == 1:
            _draw_line(canvas, pixels[0], pixels[0], colour)
    return canvas
