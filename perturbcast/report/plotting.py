"""Building blocks of the report's Plotly figures (plain JSON dicts): colours, the score axis and its clipping,
error bars, and the grid of facets the per-slice figures share."""
from __future__ import annotations

import html
import math

from .markup import finite, fmt

# Calibrated scores beyond this range are drawn at the edge as triangles (the value is in the label/hover):
# one far-off control must not squash the methods that sit between 0 and 1.
SCORE_CLIP = (-1.0, 2.0)
KIND_COLOURS = {"method": "#1f5fa8", "baseline": "#6b6b6b", "positive control": "#2a8c3c",
                "negative control": "#c0392b", "control": "#8e44ad"}
OUTCOME_COLOURS = {"win": "#1a9850", "tie": "#8c8c8c", "loss": "#d73027", "": "#333333"}
STRATUM_COLOURS = ["#222222", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf",
                   "#bcbd22", "#d62728"]
PLOT_FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"
# Width of a plot in the page at its widest (report.css: .wrap 1320px less the section's padding), less the
# facet grid's side margins: what the facet titles are wrapped to. Narrower windows shrink the facets; the
# wrapped titles then still fit far better than one long line.
PLOT_WIDTH_PX = 1226
# Average glyph width of the plot font per pixel of font size (Helvetica-like fonts: about 0.55).
GLYPH_WIDTH = 0.56


def clip(values, low=SCORE_CLIP[0], high=SCORE_CLIP[1]):
    return [None if not finite(v) else min(max(float(v), low), high) for v in values]


def symbols(values, low=SCORE_CLIP[0], high=SCORE_CLIP[1]):
    return ["triangle-left" if finite(v) and v < low else "triangle-right" if finite(v) and v > high else "circle"
            for v in values]


def edge_text(values, low=SCORE_CLIP[0], high=SCORE_CLIP[1]):
    return [fmt(v, 2) if finite(v) and (v < low or v > high) else "" for v in values]


def edge_position(values, low=SCORE_CLIP[0]):
    return ["middle right" if finite(v) and v < low else "middle left" for v in values]


def error_bars(values, lows, highs, clipped: bool):
    """error_x arrays (plus and minus) for points with intervals; clipped to the drawn range if asked."""
    plus, minus = [], []
    for v, lo, hi in zip(values, lows, highs):
        if not (finite(v) and finite(lo) and finite(hi)):
            plus.append(None)
            minus.append(None)
            continue
        if clipped:
            v, lo, hi = (min(max(float(x), SCORE_CLIP[0]), SCORE_CLIP[1]) for x in (v, lo, hi))
        plus.append(max(float(hi) - float(v), 0.0))
        minus.append(max(float(v) - float(lo), 0.0))
    return {"type": "data", "symmetric": False, "array": plus, "arrayminus": minus, "thickness": 1.6, "width": 4}


def score_range(values) -> list[float]:
    finite_values = [float(v) for v in values if finite(v)]
    low = min([0.0] + finite_values)
    high = max([1.0] + finite_values)
    low, high = max(low, SCORE_CLIP[0]), min(high, SCORE_CLIP[1])
    pad = 0.06 * (high - low)
    return [low - pad, high + pad]


def base_layout(height: int, left: int = 170) -> dict:
    return {"height": height, "margin": {"l": left, "r": 30, "t": 40, "b": 50},
            "font": {"family": PLOT_FONT, "size": 13, "color": "#1d2329"},
            "paper_bgcolor": "white", "plot_bgcolor": "#fbfbfc", "hovermode": "closest",
            "legend": {"orientation": "h", "x": 0, "y": 1.0, "yanchor": "bottom", "xanchor": "left",
                       "font": {"size": 12}}}


def wrap(text: str, width: int) -> list[str]:
    """Words of `text` in lines of at most `width` characters (a longer word keeps a line of its own)."""
    lines: list[str] = []
    for word in str(text).split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines or [""]


def _chars(px: float, font_size: int) -> int:
    return max(int(px / (GLYPH_WIDTH * font_size)), 8)


def facet_layout(names: list, categories: list[str], row_height: int, left: int = 170,
                 x_titles: list[str] | None = None) -> tuple[dict, list[tuple[str, str]]]:
    """A grid of facets sharing the category (method) axis; returns the layout and the (xref, yref) pairs.

    `names` are facet titles, each a string or a (title, note) pair whose note is set smaller on the lines
    below. Titles, notes and x-axis titles are wrapped to the facet's width and the rows are spaced for the
    most lines any of them needs, so neighbouring titles never run into each other."""
    n = max(len(names), 1)
    rows = math.ceil(n / 4)
    cols = math.ceil(n / rows)
    gap_x = 0.04 if cols > 1 else 0.0
    # titles are centred on their facet: two neighbours meet only when a title is wider than the distance
    # between facet centres (a column), less a few pixels to keep them apart
    facet_px = (PLOT_WIDTH_PX - left - 30) / cols - 16
    titles = [(name, "") if isinstance(name, str) else (str(name[0]), str(name[1] or "")) for name in names]
    title_lines = [wrap(t, _chars(facet_px, 13)) for t, _ in titles]
    note_lines = [wrap(note, _chars(facet_px, 11)) if note else [] for _, note in titles]
    axis_lines = [wrap(t, _chars(facet_px, 12)) if t else [] for t in (x_titles or [""] * n)]
    facet_height = 60 + row_height * max(len(categories), 1)
    title_px = 10 + 17 * max([len(t) for t in title_lines] or [1]) + 14 * max([len(t) for t in note_lines] or [0])
    gap_px = 62 + 16 * max([len(t) for t in axis_lines] or [0]) + title_px
    height = rows * facet_height + (rows - 1) * gap_px + title_px + 60 + 16 * max([len(t) for t in axis_lines] or [0])
    layout = base_layout(height, left)
    layout["margin"]["t"] = title_px + 24
    layout["margin"]["b"] = 50 + 16 * max(max([len(t) for t in axis_lines] or [0]) - 1, 0)
    layout["annotations"] = []
    plot_height = height - layout["margin"]["t"] - layout["margin"]["b"]
    refs = []
    for i in range(len(names)):
        row, col = divmod(i, cols)
        x0 = col / cols + (gap_x / 2 if col > 0 else 0)
        x1 = (col + 1) / cols - (gap_x / 2 if col < cols - 1 else 0)
        top = 1 - row * (facet_height + gap_px) / plot_height
        bottom = max(top - facet_height / plot_height, 0)
        suffix = "" if i == 0 else str(i + 1)
        layout[f"xaxis{suffix}"] = {"domain": [x0, x1], "anchor": f"y{suffix}", "zeroline": False,
                                    "gridcolor": "#e3e6ea",
                                    "title": {"text": "<br>".join(html.escape(line) for line in axis_lines[i]),
                                              "font": {"size": 12}, "standoff": 8}}
        layout[f"yaxis{suffix}"] = {"domain": [bottom, top], "anchor": f"x{suffix}", "type": "category",
                                    "categoryorder": "array", "categoryarray": list(reversed(categories)),
                                    "range": [-0.6, len(categories) - 0.4],
                                    "showticklabels": col == 0, "gridcolor": "#eef0f2", "automargin": False}
        if i > 0:
            layout[f"yaxis{suffix}"]["matches"] = "y"
        text = "<br>".join(f"<b>{html.escape(line)}</b>" for line in title_lines[i])
        if note_lines[i]:
            text += "<br>" + "<br>".join(f"<span style='font-size:11px;color:#5b6570'>{html.escape(line)}</span>"
                                         for line in note_lines[i])
        layout["annotations"].append({"text": text, "x": (x0 + x1) / 2, "y": top,
                                      "xref": "paper", "yref": "paper", "xanchor": "center", "yanchor": "bottom",
                                      "yshift": 6, "showarrow": False, "font": {"size": 13}})
        refs.append((f"x{suffix}", f"y{suffix}"))
    layout["legend"]["y"] = 1 + (title_px + 4) / plot_height
    return layout, refs


def vline(x: float, xref: str, yref: str, colour: str, dash: str = "dash", label: str | None = None,
          layout: dict | None = None) -> dict:
    shape = {"type": "line", "x0": x, "x1": x, "y0": 0, "y1": 1, "xref": xref, "yref": f"{yref} domain",
             "line": {"color": colour, "width": 1.3, "dash": dash}, "layer": "below"}
    if label and layout is not None:
        layout.setdefault("annotations", []).append(
            {"text": label, "x": x, "y": 1, "xref": xref, "yref": f"{yref} domain", "yanchor": "bottom",
             "xanchor": "center", "yshift": 2, "showarrow": False, "font": {"size": 11, "color": colour}})
    return shape
