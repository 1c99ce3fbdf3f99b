"""`report.html`: one self-contained file that a reader opens offline to see who wins, by how much, with what
certainty and at what cost.

The report reads only the files of a results directory (`results.parquet`, `summary.parquet`, `trace.tsv`,
the OpenProblems yaml files and the step logs of failed steps); it never imports the engine or the runner, so
it works the same on the output of `perturbcast benchmark` and of `nextflow run .` followed by
`perturbcast aggregate`. Plots are Plotly figures described as plain JSON; plotly.js is read from the
installed `plotly` Python package and inlined once, so the file needs no network (no CDN).
"""
from __future__ import annotations

import argparse
import datetime
import html
import json
import math
import os
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from .scoring import ALL_STRATA, BASELINE_METHOD, FAMILY_ALPHA, HEADLINE_CLAMP, HEADLINE_PANEL

REPORT_NAME = "report.html"
# Calibrated scores beyond this range are drawn at the edge as triangles (the value is in the label/hover):
# one far-off control must not squash the methods that sit between 0 and 1.
SCORE_CLIP = (-1.0, 2.0)
KIND_COLOURS = {"method": "#1f5fa8", "baseline": "#6b6b6b", "positive control": "#2a8c3c",
                "negative control": "#c0392b", "control": "#8e44ad"}
OUTCOME_COLOURS = {"win": "#1a9850", "tie": "#8c8c8c", "loss": "#d73027", "": "#333333"}
STRATUM_COLOURS = ["#222222", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf",
                   "#bcbd22", "#d62728"]
LOG_FOLDERS = {"dataset": "datasets", "split": "tasks", "predict": "predictions", "score": "scores"}
PLOT_FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"


# ----------------------------------------------------------------------------------------------- inputs

def _read_yaml(path: Path, default):
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return default
    return default if loaded is None else loaded


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError, ImportError):
        return pd.DataFrame()


def _read_trace(path: Path) -> pd.DataFrame:
    try:
        trace = pd.read_csv(path, sep="\t", keep_default_na=False, dtype=str)
    except (OSError, pd.errors.EmptyDataError, pd.errors.ParserError):
        return pd.DataFrame(columns=["step", "stage", "component", "status", "cached", "exit_code", "wall_seconds",
                                     "peak_rss_mib", "reason"])
    for column in ("wall_seconds", "peak_rss_mib"):
        if column in trace:
            trace[column] = pd.to_numeric(trace[column], errors="coerce")
    if "cached" in trace:
        trace["cached"] = trace["cached"].str.lower().isin(["true", "1", "yes"])
    return trace


class Inputs:
    """Everything the report shows, read from one results directory."""

    def __init__(self, results_dir: Path):
        self.dir = Path(results_dir)
        self.results = _read_parquet(self.dir / "results.parquet")
        self.summary = _read_parquet(self.dir / "summary.parquet")
        self.headline = _read_parquet(self.dir / "headline.parquet")
        self.trace = _read_trace(self.dir / "trace.tsv")
        self.task_info = _read_yaml(self.dir / "task_info.yaml", {}) or {}
        self.datasets = [d for d in _read_yaml(self.dir / "dataset_uns.yaml", []) or [] if isinstance(d, dict)]
        self.method_configs = [c for c in _read_yaml(self.dir / "method_configs.yaml", []) or [] if isinstance(c, dict)]
        self.metric_configs = [c for c in _read_yaml(self.dir / "metric_configs.yaml", []) or [] if isinstance(c, dict)]
        self.methods = {c.get("name"): c for c in self.method_configs if c.get("name")}
        self.metrics = {}
        for component in self.metric_configs:
            for metric in ((component.get("info") or {}).get("metrics") or []):
                if isinstance(metric, dict) and metric.get("name"):
                    self.metrics[metric["name"]] = {**metric, "component": component.get("name")}
        if not self.results.empty:
            self.results["seed"] = self.results["seed"].astype(int)

    # -- labels

    def kind(self, method_id: str, method_type: str | None = None) -> str:
        config = self.methods.get(method_id, {})
        info = config.get("info") or {}
        control_type = info.get("control_type")
        component_type = method_type or info.get("type") or config.get("namespace", "")
        if method_id == BASELINE_METHOD or control_type == "baseline":
            return "baseline"
        if control_type in ("positive", "negative"):
            return f"{control_type} control"
        if "control" in str(component_type):
            return "control"
        return "method"

    def method_label(self, method_id: str) -> str:
        return str(self.methods.get(method_id, {}).get("label") or method_id)

    def metric_label(self, metric_id: str) -> str:
        return str(self.metrics.get(metric_id, {}).get("label") or metric_id)

    def maximize(self, metric_id: str) -> bool | None:
        value = self.metrics.get(metric_id, {}).get("maximize")
        return None if value is None else bool(value)

    def method_order(self) -> list[str]:
        """Leaderboard order (best calibrated score first), then methods that have results but no summary."""
        order = list(self.summary["method_id"]) if not self.summary.empty else []
        if not self.results.empty:
            order += sorted(set(self.results["method_id"]) - set(order))
        return order

    def results_folds(self) -> int:
        """Folds per partition in these results (0 when the results carry no fold labels)."""
        per_condition = self.dir / "results_per_condition.parquet"
        if not per_condition.exists():
            return 0
        try:
            folds = pd.read_parquet(per_condition, columns=["fold"])["fold"]
        except (OSError, ValueError, KeyError, ImportError):
            return 0
        return int(folds.nunique()) if len(folds) else 0

    def replicate_kind(self, dataset_id: str) -> str:
        for uns in self.datasets:
            if uns.get("dataset_id") == dataset_id:
                return str(uns.get("replicate_kind") or (uns.get("dataset_report") or {}).get("replicate_kind")
                           or "random_half")
        return "unknown"

    def metric_order(self) -> list[str]:
        present = list(dict.fromkeys(self.results["metric_id"])) if not self.results.empty else []
        declared = [m for m in self.metrics if m in present]
        return declared + [m for m in present if m not in declared]


# ----------------------------------------------------------------------------------------------- helpers

def esc(value) -> str:
    return html.escape("" if value is None else str(value))


def _finite(value) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def fmt(value, digits: int = 3) -> str:
    return f"{float(value):.{digits}f}" if _finite(value) else "–"


def fmt_general(value) -> str:
    if isinstance(value, bool) or value is None:
        return esc(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        return f"{value:,.0f}" if value.is_integer() and abs(value) >= 1 else f"{value:.3g}"
    return esc(value)


def _clean(value):
    """JSON-safe: NaN and inf become null, numpy scalars plain."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray, pd.Series, pd.Index)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json_for_script(payload) -> str:
    text = json.dumps(_clean(payload), separators=(",", ":"), allow_nan=False)
    # inside <script> the only sequence that can end the element early is '</'
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


def _doi_links(references) -> str:
    if not isinstance(references, dict):
        return ""
    links = []
    for doi in references.get("doi") or []:
        doi = str(doi).strip()
        links.append(f'<a href="https://doi.org/{esc(doi)}">doi:{esc(doi)}</a>')
    for entry in references.get("bibtex") or []:
        links.append(_bibtex_link(str(entry)))
    return ", ".join(links)


def _bibtex_field(entry: str, name: str) -> str | None:
    """One field of a bibtex entry: `{...}` with nested braces, `"..."` or a bare word."""
    match = re.search(rf"(?:^|[,\s{{]){name}\s*=\s*", entry, re.IGNORECASE)
    if not match:
        return None
    rest = entry[match.end():]
    if rest.startswith("{"):
        depth = 0
        for index, char in enumerate(rest):
            depth += char == "{"
            depth -= char == "}"
            if depth == 0:
                return rest[1:index].strip()
        return None
    if rest.startswith('"'):
        end = rest.find('"', 1)
        return rest[1:end].strip() if end > 0 else None
    return re.split(r"[,}\s]", rest, maxsplit=1)[0].strip() or None


def _bibtex_link(entry: str) -> str:
    """A bibtex reference as its title (and year), linked through its doi or url when it has one."""
    title = _bibtex_field(entry, "title") or entry.strip().splitlines()[0][:100]
    title = re.sub(r"[{}]", "", title)
    year = _bibtex_field(entry, "year")
    label = esc(title) + (f" ({esc(year)})" if year else "")
    doi, url = _bibtex_field(entry, "doi"), _bibtex_field(entry, "url")
    href = f"https://doi.org/{doi}" if doi else url if url and url.startswith(("http://", "https://")) else None
    return f'<a href="{esc(href)}">{label}</a>' if href else label


def _links(links) -> str:
    if not isinstance(links, dict):
        return ""
    shown = []
    for name, url in links.items():
        if isinstance(url, str) and url.startswith(("http://", "https://")):
            shown.append(f'<a href="{esc(url)}">{esc(name.replace("_", " "))}</a>')
    return " · ".join(shown)


def _paragraphs(text) -> str:
    """Component descriptions: blank-line separated paragraphs, `code` spans kept as code."""
    if not text:
        return ""
    blocks = [" ".join(line.strip() for line in block.splitlines()) for block in str(text).strip().split("\n\n")]
    out = []
    for block in blocks:
        parts = esc(block).split("`")
        out.append("<p>" + "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts)) + "</p>")
    return "".join(out)


def _inline_code(text) -> str:
    parts = esc(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _slice_key(dataset_id, task_id, seed) -> str:
    return f"{dataset_id}|{task_id}|{seed}"


def _slice_name(dataset_id, task_id, seed, n_seeds: int) -> str:
    return f"{dataset_id} · {task_id}" + (f" · seed {seed}" if n_seeds > 1 else "")


def _clip(values, low=SCORE_CLIP[0], high=SCORE_CLIP[1]):
    return [None if not _finite(v) else min(max(float(v), low), high) for v in values]


def _symbols(values, low=SCORE_CLIP[0], high=SCORE_CLIP[1]):
    return ["triangle-left" if _finite(v) and v < low else "triangle-right" if _finite(v) and v > high else "circle"
            for v in values]


def _edge_text(values, low=SCORE_CLIP[0], high=SCORE_CLIP[1]):
    return [fmt(v, 2) if _finite(v) and (v < low or v > high) else "" for v in values]


def _edge_position(values, low=SCORE_CLIP[0]):
    return ["middle right" if _finite(v) and v < low else "middle left" for v in values]


def _error(values, lows, highs, clip: bool):
    """error_x arrays (plus and minus) for points with intervals; clipped to the drawn range if asked."""
    plus, minus = [], []
    for v, lo, hi in zip(values, lows, highs):
        if not (_finite(v) and _finite(lo) and _finite(hi)):
            plus.append(None)
            minus.append(None)
            continue
        if clip:
            v, lo, hi = (min(max(float(x), SCORE_CLIP[0]), SCORE_CLIP[1]) for x in (v, lo, hi))
        plus.append(max(float(hi) - float(v), 0.0))
        minus.append(max(float(v) - float(lo), 0.0))
    return {"type": "data", "symmetric": False, "array": plus, "arrayminus": minus, "thickness": 1.6, "width": 4}


def _score_range(values) -> list[float]:
    finite = [float(v) for v in values if _finite(v)]
    low = min([0.0] + finite)
    high = max([1.0] + finite)
    low, high = max(low, SCORE_CLIP[0]), min(high, SCORE_CLIP[1])
    pad = 0.06 * (high - low)
    return [low - pad, high + pad]


def _base_layout(height: int, left: int = 170) -> dict:
    return {"height": height, "margin": {"l": left, "r": 30, "t": 40, "b": 50},
            "font": {"family": PLOT_FONT, "size": 13, "color": "#1d2329"},
            "paper_bgcolor": "white", "plot_bgcolor": "#fbfbfc", "hovermode": "closest",
            "legend": {"orientation": "h", "x": 0, "y": 1.0, "yanchor": "bottom", "xanchor": "left",
                       "font": {"size": 12}}}


def _direction_note(text: str) -> str:
    """A facet title's second line (facet titles are escaped before this is appended)."""
    return f"<br><span style='font-size:11px;font-weight:normal;color:#5b6570'>{text}</span>"


def _facet_layout(names: list[str], categories: list[str], row_height: int, left: int = 170,
                  x_titles: list[str] | None = None) -> tuple[dict, list[tuple[str, str]]]:
    """A grid of facets sharing the category (method) axis; returns the layout and the (xref, yref) pairs."""
    n = max(len(names), 1)
    rows = math.ceil(n / 4)
    cols = math.ceil(n / rows)
    facet_height = 60 + row_height * max(len(categories), 1)
    title_px, gap_px = 46, 125
    height = rows * facet_height + (rows - 1) * gap_px + title_px + 60
    layout = _base_layout(height, left)
    layout["margin"]["t"] = title_px + 24
    layout["annotations"] = []
    plot_height = height - layout["margin"]["t"] - layout["margin"]["b"]
    refs = []
    gap_x = 0.04 if cols > 1 else 0.0
    for i, name in enumerate(names):
        row, col = divmod(i, cols)
        x0 = col / cols + (gap_x / 2 if col > 0 else 0)
        x1 = (col + 1) / cols - (gap_x / 2 if col < cols - 1 else 0)
        top = 1 - row * (facet_height + gap_px) / plot_height
        bottom = max(top - facet_height / plot_height, 0)
        suffix = "" if i == 0 else str(i + 1)
        layout[f"xaxis{suffix}"] = {"domain": [x0, x1], "anchor": f"y{suffix}", "zeroline": False,
                                    "gridcolor": "#e3e6ea", "title": {"text": (x_titles or [""] * n)[i],
                                                                       "font": {"size": 12}}}
        layout[f"yaxis{suffix}"] = {"domain": [bottom, top], "anchor": f"x{suffix}", "type": "category",
                                    "categoryorder": "array", "categoryarray": list(reversed(categories)),
                                    "range": [-0.6, len(categories) - 0.4],
                                    "showticklabels": col == 0, "gridcolor": "#eef0f2", "automargin": False}
        if i > 0:
            layout[f"yaxis{suffix}"]["matches"] = "y"
        title, _, note = name.partition("<br>")
        layout["annotations"].append({"text": f"<b>{html.escape(title)}</b>" + (f"<br>{note}" if note else ""),
                                      "x": (x0 + x1) / 2, "y": top,
                                      "xref": "paper", "yref": "paper", "xanchor": "center", "yanchor": "bottom",
                                      "yshift": 6, "showarrow": False, "font": {"size": 13}})
        refs.append((f"x{suffix}", f"y{suffix}"))
    layout["legend"]["y"] = 1 + (title_px + 4) / plot_height
    return layout, refs


def _vline(x: float, xref: str, yref: str, colour: str, dash: str = "dash", label: str | None = None,
           layout: dict | None = None) -> dict:
    shape = {"type": "line", "x0": x, "x1": x, "y0": 0, "y1": 1, "xref": xref, "yref": f"{yref} domain",
             "line": {"color": colour, "width": 1.3, "dash": dash}, "layer": "below"}
    if label and layout is not None:
        layout.setdefault("annotations", []).append(
            {"text": label, "x": x, "y": 1, "xref": xref, "yref": f"{yref} domain", "yanchor": "bottom",
             "xanchor": "center", "yshift": 2, "showarrow": False, "font": {"size": 11, "color": colour}})
    return shape


# ----------------------------------------------------------------------------------------------- figures

def leaderboard_figure(inputs: Inputs) -> dict | None:
    summary = inputs.summary
    if summary.empty:
        return None
    order = list(summary["method_id"])
    layout = _base_layout(110 + 34 * len(order))
    layout["xaxis"] = {"title": {"text": "calibrated score (0 = train_mean, 1 = replicate_ceiling)"},
                       "range": _score_range(list(summary["calibrated"]) + list(summary["calibrated_low"])
                                             + list(summary["calibrated_high"])),
                       "zeroline": False, "gridcolor": "#e3e6ea"}
    layout["yaxis"] = {"type": "category", "categoryorder": "array", "categoryarray": list(reversed(order)),
                       "gridcolor": "#eef0f2"}
    layout["shapes"] = [_vline(0, "x", "y", "#6b6b6b", label="train_mean", layout=layout),
                        _vline(1, "x", "y", "#2a8c3c", label="replicate ceiling", layout=layout)]
    layout["margin"]["b"] = 60
    layout["showlegend"] = False  # the kind badges of the table above carry the same colours
    traces = []
    for kind in ["method", "baseline", "positive control", "negative control", "control"]:
        rows = summary[[inputs.kind(m, t) == kind for m, t in zip(summary["method_id"], summary["method_type"])]]
        if rows.empty:
            continue
        values = list(rows["calibrated"])
        hover = [f"<b>{html.escape(inputs.method_label(m))}</b> ({html.escape(m)})<br>calibrated {fmt(v)} "
                 f"[{fmt(lo)}, {fmt(hi)}]<br>vs train_mean: {w} wins, {t} ties, {l} losses<br>{n} scores"
                 for m, v, lo, hi, w, t, l, n in zip(rows["method_id"], values, rows["calibrated_low"],
                                                      rows["calibrated_high"], rows["wins"], rows["ties"],
                                                      rows["losses"], rows["n_scores"])]
        traces.append({"type": "scatter", "mode": "markers+text", "name": kind, "y": list(rows["method_id"]),
                       "x": _clip(values), "error_x": {**_error(values, rows["calibrated_low"],
                                                                rows["calibrated_high"], True),
                                                       "color": KIND_COLOURS[kind]},
                       "marker": {"color": KIND_COLOURS[kind], "size": 10, "symbol": _symbols(values)},
                       "text": _edge_text(values), "textposition": _edge_position(values), "textfont": {"size": 11},
                       "hovertext": hover, "hoverinfo": "text"})
    return {"data": traces, "layout": layout}


def heatmap_figure(inputs: Inputs, by_stratum: bool = False) -> dict | None:
    """Mean over the headline panel of the clamped calibrated scores (and partitions): methods x dataset/task,
    or methods x task/stratum (then also over datasets)."""
    results = inputs.results
    if results.empty:
        return None
    rows = results[results["stratum"] != ALL_STRATA] if by_stratum else results[results["stratum"] == ALL_STRATA]
    rows = rows[rows["metric_id"].isin(HEADLINE_PANEL)].copy()
    if rows.empty or rows["score"].notna().sum() == 0:
        return None
    rows["score"] = rows["score"].clip(-HEADLINE_CLAMP, HEADLINE_CLAMP)
    keys = ["task_id", "stratum"] if by_stratum else ["dataset_id", "task_id"]
    table = rows.groupby(["method_id", *keys])["score"].agg(["mean", "count"])
    columns = sorted({key[1:] for key in table.index})
    names = ["<br>".join(column) for column in columns]
    order = inputs.method_order()
    what = "panel metrics x datasets x partitions" if by_stratum else "panel metrics x partitions"
    z, text, hover = [], [], []
    for method in order:
        z_row, text_row, hover_row = [], [], []
        for column in columns:
            value = table["mean"].get((method, *column), np.nan)
            count = table["count"].get((method, *column), 0)
            z_row.append(min(max(value, SCORE_CLIP[0]), SCORE_CLIP[1]) if _finite(value) else None)
            text_row.append(fmt(value, 2) if _finite(value) else "")
            hover_row.append(f"<b>{html.escape(method)}</b><br>{html.escape(' · '.join(column))}<br>mean calibrated "
                             f"score {fmt(value)}<br>mean of {count} score{'s' if count != 1 else ''} ({what})")
        z.append(z_row)
        text.append(text_row)
        hover.append(hover_row)
    low, high = SCORE_CLIP
    scale = [[0.0, "#b2182b"], [(0 - low) / (high - low) / 2, "#ef8a62"], [(0 - low) / (high - low), "#f7f7f7"],
             [(1 - low) / (high - low), "#4393c3"], [1.0, "#08306b"]]
    layout = _base_layout(110 + 34 * len(order))
    layout["margin"].update({"t": 34, "b": 20})
    layout["xaxis"] = {"type": "category", "side": "bottom", "automargin": True,
                       "tickangle": 0 if len(columns) <= 8 else -35,
                       "tickfont": {"size": 12 if len(columns) <= 5 else 11}}
    layout["yaxis"] = {"type": "category", "autorange": "reversed", "automargin": True}
    annotations = []
    for i, method in enumerate(order):
        for j in range(len(columns)):
            value = z[i][j]
            if value is None:
                continue
            dark = value < low + 0.25 * (high - low) or value > 1.2
            annotations.append({"x": names[j], "y": method, "text": text[i][j], "showarrow": False,
                                "font": {"size": 12, "color": "white" if dark else "#1d2329"}})
    layout["annotations"] = annotations
    trace = {"type": "heatmap", "z": z, "x": names, "y": order, "zmin": low, "zmax": high, "colorscale": scale,
             "hovertext": hover, "hoverinfo": "text", "xgap": 2, "ygap": 2,
             "colorbar": {"title": {"text": "calibrated", "side": "right"}, "thickness": 14,
                          "tickvals": [-1, 0, 1, 2], "ticktext": ["≤ −1", "0 train_mean", "1 ceiling", "≥ 2"]}}
    return {"data": [trace], "layout": layout}


def stratum_figure(inputs: Inputs, rows: pd.DataFrame, order: list[str], metrics: list[str]) -> dict:
    """Calibrated score per method and stratum; one facet per metric, the first the mean over metrics."""
    strata = [ALL_STRATA] + sorted(set(rows["stratum"]) - {ALL_STRATA})
    names = ["Mean over metrics"] + [inputs.metric_label(m) for m in metrics]
    layout, refs = _facet_layout(names, order, 13 * len(strata) + 12,
                                 x_titles=["calibrated score"] * len(names))
    traces, shapes, all_values = [], [], []
    for index, stratum in enumerate(strata):
        colour = STRATUM_COLOURS[index % len(STRATUM_COLOURS)]
        part = rows[rows["stratum"] == stratum]
        facets = [(None, part.groupby("method_id")["score"].mean())] + \
                 [(m, part[part["metric_id"] == m].set_index("method_id")) for m in metrics]
        for facet, ((metric, data), (xref, yref)) in enumerate(zip(facets, refs)):
            if metric is None:
                values = [data.get(m, np.nan) for m in order]
                lows = highs = [np.nan] * len(order)
                n = [None] * len(order)
            else:
                values = [data["score"].get(m, np.nan) for m in order]
                lows = [data["score_low"].get(m, np.nan) for m in order]
                highs = [data["score_high"].get(m, np.nan) for m in order]
                n = [data["n_conditions"].get(m, None) for m in order]
            all_values += values + lows + highs
            hover = [f"<b>{html.escape(m)}</b> · {html.escape(stratum)}<br>{html.escape(names[facet])}: {fmt(v)}"
                     + (f" [{fmt(lo)}, {fmt(hi)}]" if _finite(lo) else "") + (f"<br>{c} conditions" if c else "")
                     for m, v, lo, hi, c in zip(order, values, lows, highs, n)]
            traces.append({"type": "scatter", "orientation": "h", "mode": "markers+text", "name": stratum,
                           "legendgroup": stratum,
                           "showlegend": False, "xaxis": xref, "yaxis": yref, "y": order, "x": _clip(values),
                           "error_x": {**_error(values, lows, highs, True), "color": colour},
                           "marker": {"color": colour, "size": 8, "symbol": _symbols(values)},
                           "text": _edge_text(values), "textposition": _edge_position(values), "textfont": {"size": 10},
                           "hovertext": hover, "hoverinfo": "text"})
    for index, stratum in enumerate(strata):  # legend entries with a plain marker (the data may start with an arrow)
        traces.append({"type": "scatter", "mode": "markers", "name": stratum, "legendgroup": stratum, "x": [None],
                       "y": [None], "marker": {"color": STRATUM_COLOURS[index % len(STRATUM_COLOURS)], "size": 9},
                       "hoverinfo": "skip"})
    score_range = _score_range(all_values)
    for xref, yref in refs:
        layout["x" + ("axis" + xref[1:])]["range"] = score_range
        shapes += [_vline(0, xref, yref, "#6b6b6b"), _vline(1, xref, yref, "#2a8c3c", dash="dot")]
    layout["shapes"] = shapes
    layout["scattermode"] = "group"
    layout["scattergap"] = 0.5
    return {"data": traces, "layout": layout}


def raw_figure(inputs: Inputs, rows: pd.DataFrame, order: list[str], metrics: list[str]) -> dict:
    """Raw metric value per method (all strata) with its interval; train_mean and the ceiling as lines."""
    overall = rows[rows["stratum"] == ALL_STRATA]
    names = []
    for metric in metrics:
        better = inputs.maximize(metric)
        names.append(inputs.metric_label(metric) + ("" if better is None else _direction_note("higher is better")
                                                     if better else _direction_note("lower is better")))
    layout, refs = _facet_layout(names, order, 26, x_titles=[m for m in metrics])
    traces, shapes = [], []
    for metric, (xref, yref) in zip(metrics, refs):
        data = overall[overall["metric_id"] == metric].set_index("method_id")
        present = [m for m in order if m in data.index]
        values = [data["value"][m] for m in present]
        colours = [KIND_COLOURS[inputs.kind(m, data["method_type"][m])] for m in present]
        hover = [f"<b>{html.escape(m)}</b><br>{html.escape(metric)} = {fmt(v, 4)} [{fmt(data['value_low'][m], 4)}, "
                 f"{fmt(data['value_high'][m], 4)}]<br>{data['n_conditions'][m]} test conditions" for m, v in
                 zip(present, values)]
        traces.append({"type": "scatter", "mode": "markers", "showlegend": False, "xaxis": xref, "yaxis": yref,
                       "y": present, "x": values, "error_x": {**_error(values, [data["value_low"][m] for m in present],
                                                                      [data["value_high"][m] for m in present], False),
                                                              "color": "#555"},
                       "marker": {"color": colours, "size": 9}, "hovertext": hover, "hoverinfo": "text"})
        if present:
            baseline, ceiling = data["baseline"].iloc[0], data["ceiling"].iloc[0]
            if _finite(baseline):
                shapes.append(_vline(float(baseline), xref, yref, "#6b6b6b"))
            if _finite(ceiling):
                shapes.append(_vline(float(ceiling), xref, yref, "#2a8c3c", dash="dot"))
            dynamic = data["dynamic_range"].iloc[0]
            layout[f"xaxis{xref[1:]}"]["title"]["text"] = f"{metric} · dynamic range {fmt(dynamic, 4)}"
    layout["shapes"] = shapes
    # legend stand-ins for the line meanings and the marker colours
    for name, colour, dash in (("train_mean (b)", "#6b6b6b", "dash"), ("replicate ceiling (r)", "#2a8c3c", "dot")):
        traces.append({"type": "scatter", "mode": "lines", "name": name, "x": [None], "y": [None],
                       "line": {"color": colour, "dash": dash}, "hoverinfo": "skip"})
    for kind in sorted({inputs.kind(m) for m in order}, key=list(KIND_COLOURS).index):
        traces.append({"type": "scatter", "mode": "markers", "name": kind, "x": [None], "y": [None],
                       "marker": {"color": KIND_COLOURS[kind], "size": 9}, "hoverinfo": "skip"})
    return {"data": traces, "layout": layout}


def forest_figure(inputs: Inputs, rows: pd.DataFrame, order: list[str], metrics: list[str]) -> dict:
    """Difference from train_mean with its paired bootstrap interval, coloured by outcome; per metric."""
    overall = rows[(rows["stratum"] == ALL_STRATA) & (rows["method_id"] != BASELINE_METHOD)]
    shown = [m for m in order if m != BASELINE_METHOD]
    names = []
    for metric in metrics:
        better = inputs.maximize(metric)
        names.append(inputs.metric_label(metric) + ("" if better is None else _direction_note("better →")
                                                     if better else _direction_note("← better")))
    layout, refs = _facet_layout(names, shown, 26, x_titles=[f"{m} − train_mean" for m in metrics])
    traces, shapes = [], []
    for outcome in ("win", "tie", "loss", ""):
        for facet, (metric, (xref, yref)) in enumerate(zip(metrics, refs)):
            data = overall[(overall["metric_id"] == metric) & (overall["outcome"].fillna("") == outcome)]
            data = data.set_index("method_id")
            present = [m for m in shown if m in data.index]
            values = [data["diff_from_baseline"][m] for m in present]
            hover = [f"<b>{html.escape(m)}</b> vs train_mean<br>{html.escape(metric)} difference {fmt(v, 4)} "
                     f"[{fmt(data['diff_low'][m], 4)}, {fmt(data['diff_high'][m], 4)}]<br>"
                     f"{outcome or 'no outcome'}" for m, v in zip(present, values)]
            traces.append({"type": "scatter", "mode": "markers", "name": outcome or "no baseline",
                           "legendgroup": outcome, "showlegend": facet == 0 and bool(present), "xaxis": xref,
                           "yaxis": yref, "y": present, "x": values,
                           "error_x": {**_error(values, [data["diff_low"][m] for m in present],
                                                [data["diff_high"][m] for m in present], False),
                                       "color": OUTCOME_COLOURS[outcome]},
                           "marker": {"color": OUTCOME_COLOURS[outcome], "size": 9, "symbol": "diamond"},
                           "hovertext": hover, "hoverinfo": "text"})
    for xref, yref in refs:
        shapes.append(_vline(0, xref, yref, "#6b6b6b"))
    layout["shapes"] = shapes
    return {"data": traces, "layout": layout}


def cost_figure(inputs: Inputs, cost: pd.DataFrame) -> dict | None:
    if cost.empty:
        return None
    order = list(cost.index)
    layout, refs = _facet_layout(["Wall time per prediction step (median; total as label)",
                                  "Peak memory (largest step)"], order, 26,
                                 x_titles=["seconds", "MiB"])
    colours = [KIND_COLOURS[inputs.kind(m)] for m in order]
    traces = [
        {"type": "bar", "orientation": "h", "xaxis": refs[0][0], "yaxis": refs[0][1], "y": order,
         "x": list(cost["median_wall"]), "marker": {"color": colours}, "showlegend": False,
         "text": [f"total {fmt(t, 1)} s" for t in cost["total_wall"]], "textposition": "outside",
         "cliponaxis": False, "hovertemplate": "%{y}: median %{x:.2f} s<extra></extra>"},
        {"type": "bar", "orientation": "h", "xaxis": refs[1][0], "yaxis": refs[1][1], "y": order,
         "x": list(cost["peak_rss"]), "marker": {"color": colours}, "showlegend": False,
         "hovertemplate": "%{y}: %{x:.0f} MiB<extra></extra>"},
    ]
    high = float(np.nanmax(cost["median_wall"])) if cost["median_wall"].notna().any() else 1.0
    layout["xaxis"]["range"] = [0, high * 1.45 or 1]
    return {"data": traces, "layout": layout}


# ----------------------------------------------------------------------------------------------- sections

def _method_cell(inputs: Inputs, method: str, line_break: bool = False) -> str:
    return (f'<a href="#component-{esc(method)}" class="method">{esc(inputs.method_label(method))}</a>'
            f'{"<br>" if line_break else " "}<span class="id">{esc(method)}</span>')


def _kind_badge(kind: str) -> str:
    return f'<span class="badge" style="--badge:{KIND_COLOURS.get(kind, "#555")}">{esc(kind)}</span>'


def cost_table(inputs: Inputs) -> pd.DataFrame:
    trace = inputs.trace
    if trace.empty or "stage" not in trace:
        return pd.DataFrame()
    done = trace[(trace["stage"] == "predict") & (trace["status"] == "ok")]
    if done.empty:
        return pd.DataFrame()
    cost = done.groupby("component").agg(steps=("step", "count"), median_wall=("wall_seconds", "median"),
                                         total_wall=("wall_seconds", "sum"), peak_rss=("peak_rss_mib", "max"),
                                         cached=("cached", "sum"))
    order = [m for m in inputs.method_order() if m in cost.index] + sorted(set(cost.index) - set(inputs.method_order()))
    return cost.loc[order]


def section_header(inputs: Inputs) -> str:
    info = inputs.task_info
    title = info.get("task_name") or "Expression forecasting"
    results, trace = inputs.results, inputs.trace
    facts = []
    if not results.empty:
        methods = results[["method_id", "method_type"]].drop_duplicates()
        n_methods = sum(inputs.kind(m, t) == "method" for m, t in zip(methods["method_id"], methods["method_type"]))
        facts += [f"<b>{n_methods}</b> method{'s' if n_methods != 1 else ''}",
                  f"<b>{len(methods) - n_methods}</b> controls and baselines",
                  f"<b>{results['dataset_id'].nunique()}</b> dataset{'s' if results['dataset_id'].nunique() != 1 else ''}",
                  f"<b>{results['task_id'].nunique()}</b> task{'s' if results['task_id'].nunique() != 1 else ''}",
                  f"<b>{results['metric_id'].nunique()}</b> metrics",
                  f"<b>{results['seed'].nunique()}</b> partition{'s' if results['seed'].nunique() != 1 else ''}"
                  + (f" × <b>{inputs.results_folds()}</b> folds" if inputs.results_folds() else "")]
    if not trace.empty and "status" in trace:
        counts = trace["status"].value_counts()
        steps = f"<b>{len(trace)}</b> steps: {counts.get('ok', 0)} ok"
        for status, label in (("failed", "failed"), ("not_applicable", "not applicable"), ("skipped", "skipped")):
            if counts.get(status, 0):
                steps += f', <a href="#failures">{counts[status]} {label}</a>'
        facts.append(steps)
    headline = ""
    if not inputs.summary.empty:
        board = inputs.summary
        methods = board[[inputs.kind(m, t) == "method" for m, t in zip(board["method_id"], board["method_type"])]]
        methods = methods[methods["calibrated"].notna()]
        if not methods.empty:
            best = methods.iloc[0]
            beat = int((methods["calibrated_low"] > 0).sum())
            headline = (f'<p class="headline">Best method: <b>{esc(inputs.method_label(best["method_id"]))}</b> '
                        f'<span class="id">{esc(best["method_id"])}</span> with a headline score of '
                        f'<b>{fmt(best["calibrated"], 2)}</b> [{fmt(best["calibrated_low"], 2)}, '
                        f'{fmt(best["calibrated_high"], 2)}]. {beat} of {len(methods)} methods beat the training '
                        f'mean on average (interval above 0).</p>')
    return (f'<header><div class="wrap"><p class="kicker">perturbcast benchmark report</p>'
            f'<h1>{esc(title)}</h1><p class="summary">{esc(info.get("task_summary") or "")}</p>'
            f'<p class="facts">{" · ".join(facts)}</p>{headline}</div></header>')


def section_calibration(inputs: Inputs) -> str:
    dynamic = ""
    results = inputs.results
    if not results.empty:
        overall = results[results["stratum"] == ALL_STRATA].drop_duplicates(["dataset_id", "task_id", "seed", "metric_id"])
        if not overall.empty:
            table = overall.pivot_table(index="metric_id", columns=["dataset_id", "task_id"], values="dynamic_range",
                                        aggfunc="mean")
            head = "".join(f"<th>{esc(d)}<br><span class='id'>{esc(t)}</span></th>" for d, t in table.columns)
            body = "".join(f"<tr><th>{esc(inputs.metric_label(m))} <span class='id'>{esc(m)}</span></th>"
                           + "".join(f"<td class='num'>{fmt(v, 4)}</td>" for v in table.loc[m]) + "</tr>"
                           for m in table.index)
            dynamic = (f"<details><summary>Dynamic range r − b of every metric (all strata)</summary>"
                       f"<div class='scroll'><table class='data'><thead><tr><th>metric</th>{head}</tr></thead>"
                       f"<tbody>{body}</tbody></table></div></details>")
    kinds = sorted({f"{esc(d)}: {esc(inputs.replicate_kind(d))}" for d in
                    (inputs.results["dataset_id"].unique() if not inputs.results.empty else [])})
    panel = ", ".join(f"<code>{esc(m)}</code>" for m in HEADLINE_PANEL)
    return f"""
<section id="calibration" class="callout">
<h2>How to read the scores</h2>
<p><b>Folds.</b> Each task splits a dataset into K folds of held-out perturbations (a <i>partition</i>; its
seed reshuffles it): every fold trains on the rest, and across the folds every eligible perturbation is tested
exactly once. Results pool the folds, so a dataset's <i>n</i> is all its eligible perturbations, not one small
test set; several partitions (seeds) are averaged and their spread is shown.</p>
<p><b>Calibration.</b> Every raw metric value <i>u</i> is calibrated per dataset × task × partition × stratum × metric as
<b>(<i>u</i> − <i>b</i>) / (<i>r</i> − <i>b</i>)</b>, where <i>b</i> is the value of the
<code>train_mean</code> baseline (predict the mean training perturbation) and <i>r</i> that of the
<code>replicate_ceiling</code> control. So <b>0 = no better than the training mean</b>, <b>1 = as good as knowing the
true mean profile</b>, and negative scores are worse than the training mean.</p>
<p><b>The ceiling.</b> The observed profile of a held-out condition is its true mean plus measurement noise. The
ceiling estimates how well the true mean itself would score against that noisy observation: from the two
replicate halves it estimates each gene's noise, and it predicts draws of the true profile from its posterior
given the data, scored as the average over the draws. It never copies the noise it is scored against (the old
"predict one half" ceiling did, and looked perfect on rank metrics). <code>ground_truth</code> (the observed
profile itself) scores above 1 because it contains that noise exactly. Replicate halves follow biological replicates
where the source has them, else random halves of the cells ({'; '.join(kinds) or 'no datasets'}).</p>
<p><b>The headline</b> is the mean of the calibrated scores, each clamped to [−{HEADLINE_CLAMP:g}, {HEADLINE_CLAMP:g}], over a panel
fixed in advance with one metric per family: {panel} (error, correlation, top-100 DE genes, discrimination between
perturbations, and correlation relative to the average perturbation). It is averaged over partitions and then over
datasets × tasks. Stochastic controls (<code>random_perturbation</code>, the ceiling) are scored as their expectation over
many draws. A <span class="win">win</span> or <span class="loss">loss</span> against <code>train_mean</code> is a paired bootstrap test
with Holm's correction over each method's tests (family-wise level {FAMILY_ALPHA:g}); the rest are ties. Brackets are
paired bootstrap 95% intervals over test conditions. The dynamic range <i>r</i> − <i>b</i> is shown beside the raw
values: a metric whose ceiling does not beat the baseline beyond resampling noise gets no calibrated score there.
All metrics exclude the perturbed target genes.</p>
{dynamic}
</section>"""


def section_leaderboard(inputs: Inputs, figures: dict) -> str:
    summary = inputs.summary
    if summary.empty:
        return ('<section id="leaderboard"><h2>Leaderboard</h2><p class="empty">No scores yet: results.parquet '
                'or summary.parquet is missing or empty (see the failures below).</p></section>')
    overall = inputs.results[inputs.results["stratum"] == ALL_STRATA]
    metrics = inputs.metric_order()
    raw = overall.pivot_table(index="method_id", columns="metric_id", values="value", aggfunc="mean")
    cost = cost_table(inputs)
    metric_heads = "".join(
        f"<th class='num' title='{esc(inputs.metrics.get(m, {}).get('summary', ''))}'>{esc(m).replace('_', '_<wbr>')}"
        f"<br><span class='dir'>{'' if inputs.maximize(m) is None else '↑ higher better' if inputs.maximize(m) else '↓ lower better'}</span></th>"
        for m in metrics)
    rows = []
    for rank, row in enumerate(summary.itertuples(index=False), start=1):
        kind = inputs.kind(row.method_id, row.method_type)
        interval = f"[{fmt(row.calibrated_low, 2)}, {fmt(row.calibrated_high, 2)}]" if _finite(row.calibrated_low) else ""
        if row.method_id == BASELINE_METHOD:
            outcome = "<span class='id'>reference</span>"
        else:
            outcome = (f"<span class='win'>{row.wins}</span> / <span class='tie'>{row.ties}</span> / "
                       f"<span class='loss'>{row.losses}</span>")
        raws = "".join(f"<td class='num'>{fmt(raw.at[row.method_id, m], 3) if m in raw.columns and row.method_id in raw.index else '–'}</td>"
                       for m in metrics)
        wall = fmt(cost["median_wall"].get(row.method_id), 1) + " s" if row.method_id in cost.index else "–"
        rows.append(f"<tr class='{'ctrl' if kind != 'method' else ''}'><td class='num rank'>{rank}</td>"
                    f"<td class='who'>{_method_cell(inputs, row.method_id, True)} {_kind_badge(kind)}</td>"
                    f"<td class='num score'><b>{fmt(row.calibrated, 3)}</b><br><span class='interval'>{interval}</span></td>"
                    f"<td class='num'>{outcome}</td><td class='num'>{row.n_scores}</td>{raws}"
                    f"<td class='num'>{wall}</td></tr>")
    plot = '<div id="fig-leaderboard" class="plot"></div>' if "fig-leaderboard" in figures else ""
    return f"""
<section id="leaderboard">
<h2>Leaderboard</h2>
<p class="lead">Methods ranked by their headline score (the panel's clamped calibrated scores, averaged over
partitions and datasets × tasks; see above), with a bootstrap 95% interval. <b>W / T / L</b> counts the dataset ×
task × partition × panel-metric combinations where the method is significantly better than / indistinguishable from /
worse than <code>train_mean</code> (Holm-corrected). Raw columns are plain means of each metric. Controls and
baselines are shaded: they frame the scale, they do not compete.</p>
{_headline_slices(inputs)}
<div class="scroll"><table class="data board">
<thead><tr><th>#</th><th>method</th><th class="num">headline<br><span class="dir">95% interval</span></th>
<th class="num">W / T / L<br><span class="dir">vs train_mean</span></th><th class="num">scores</th>{metric_heads}
<th class="num">time<br><span class="dir">median / step</span></th></tr></thead>
<tbody>{''.join(rows)}</tbody></table></div>
{plot}
</section>"""


def _headline_slices(inputs: Inputs) -> str:
    """Headline per dataset x task: n test conditions, partitions, the score with its interval."""
    table = inputs.headline
    if table.empty:
        return ""
    slices = table[["dataset_id", "task_id"]].drop_duplicates().sort_values(["dataset_id", "task_id"])
    head = "".join(f"<th class='num'>{esc(d)}<br><span class='id'>{esc(t)}</span><br><span class='dir'>n = "
                   f"{int(table[(table.dataset_id == d) & (table.task_id == t)]['n_conditions'].max())}, "
                   f"{int(table[(table.dataset_id == d) & (table.task_id == t)]['n_partitions'].max())} partition(s)"
                   f"</span></th>" for d, t in slices.itertuples(index=False))
    rows = []
    for method in inputs.method_order():
        mine = table[table["method_id"] == method]
        if mine.empty:
            continue
        cells = []
        for d, t in slices.itertuples(index=False):
            hit = mine[(mine["dataset_id"] == d) & (mine["task_id"] == t)]
            if hit.empty:
                cells.append("<td class='num'>–</td>")
                continue
            h = hit.iloc[0]
            spread = (f"<br><span class='interval'>partitions {fmt(h['partition_min'], 2)} … {fmt(h['partition_max'], 2)}</span>"
                      if int(h["n_partitions"]) > 1 else "")
            cells.append(f"<td class='num'>{fmt(h['headline'], 2)}<br><span class='interval'>[{fmt(h['headline_low'], 2)}, "
                         f"{fmt(h['headline_high'], 2)}]</span>{spread}</td>")
        rows.append(f"<tr><td class='who'>{_method_cell(inputs, method, False)}</td>{''.join(cells)}</tr>")
    return (f"<details open><summary>Headline per dataset × task (n = test conditions, all folds pooled)</summary>"
            f"<div class='scroll'><table class='data compact'><thead><tr><th>method</th>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div></details>")


def section_heatmap(inputs: Inputs, figures: dict) -> str:
    if "fig-heatmap" not in figures:
        return ""
    strata = """<h3>By stratum</h3>
<p class="lead">The same per stratum of each task, averaged over datasets too: how the score changes as held-out
conditions get further from what training saw (for instance <code>combo_seen2</code> → <code>combo_seen0</code>).
The per dataset views below show each stratum with its interval.</p>
<div id="fig-heatmap-strata" class="plot"></div>""" if "fig-heatmap-strata" in figures else ""
    return f"""
<section id="heatmap">
<h2>Methods × datasets and tasks</h2>
<p class="lead">Mean over the headline panel of the clamped calibrated scores (all strata) of each method on each
dataset and task. Blue is better than the training mean (white = 0, mid-blue = the ceiling); red is worse.</p>
<div id="fig-heatmap" class="plot"></div>
{strata}
</section>"""


def _slice_table(inputs: Inputs, rows: pd.DataFrame, metrics: list[str]) -> str:
    """The numbers behind the slice: n conditions per stratum, baseline, ceiling and dynamic range per metric."""
    base = rows[rows["method_id"] == BASELINE_METHOD]
    if base.empty:
        base = rows.drop_duplicates(["metric_id", "stratum"])
    strata = [ALL_STRATA] + sorted(set(rows["stratum"]) - {ALL_STRATA})
    head = "".join(f"<th class='num'>{esc(s)}</th>" for s in strata)
    n_row = "".join(f"<td class='num'>{int(base[base['stratum'] == s]['n_conditions'].max()) if (base['stratum'] == s).any() else '–'}</td>"
                    for s in strata)
    body = [f"<tr><th>test conditions</th>{n_row}</tr>"]
    for metric in metrics:
        cells = []
        for stratum in strata:
            hit = base[(base["metric_id"] == metric) & (base["stratum"] == stratum)]
            if hit.empty:
                cells.append("<td class='num'>–</td>")
                continue
            h = hit.iloc[0]
            cells.append(f"<td class='num' title='b = {fmt(h['baseline'], 4)}, r = {fmt(h['ceiling'], 4)}'>"
                         f"{fmt(h['dynamic_range'], 4)}</td>")
        body.append(f"<tr><th>r − b of {esc(metric)}</th>{''.join(cells)}</tr>")
    return (f"<table class='data compact'><thead><tr><th></th>{head}</tr></thead><tbody>{''.join(body)}</tbody>"
            f"</table>")


def slices(inputs: Inputs) -> tuple[list[tuple[str, str]], dict, dict]:
    """Per dataset x task x seed: the stratum, raw value and forest figures and the slice table."""
    results = inputs.results
    if results.empty:
        return [], {}, {}
    n_seeds = results["seed"].nunique()
    keys = results[["dataset_id", "task_id", "seed"]].drop_duplicates().sort_values(["dataset_id", "task_id", "seed"])
    order_all = inputs.method_order()
    metrics_all = inputs.metric_order()
    options, figs, tables = [], {"fig-strata": {}, "fig-raw": {}, "fig-forest": {}}, {}
    for dataset_id, task_id, seed in keys.itertuples(index=False):
        rows = results[(results["dataset_id"] == dataset_id) & (results["task_id"] == task_id) & (results["seed"] == seed)]
        key = _slice_key(dataset_id, task_id, seed)
        options.append((key, _slice_name(dataset_id, task_id, seed, n_seeds)))
        order = [m for m in order_all if m in set(rows["method_id"])]
        metrics = [m for m in metrics_all if m in set(rows["metric_id"])]
        figs["fig-strata"][key] = stratum_figure(inputs, rows, order, metrics)
        figs["fig-raw"][key] = raw_figure(inputs, rows, order, metrics)
        figs["fig-forest"][key] = forest_figure(inputs, rows, order, metrics)
        tables[key] = _slice_table(inputs, rows, metrics)
    return options, figs, tables


def section_details(options: list[tuple[str, str]]) -> str:
    if not options:
        return ""
    select = "".join(f"<option value='{esc(k)}'>{esc(n)}</option>" for k, n in options)
    return f"""
<section id="details">
<h2>Per dataset and task</h2>
<div class="picker"><label for="slice-select">Dataset · task</label>
<select id="slice-select">{select}</select>
<span class="hint">the three views below follow this choice; hover a point for its numbers, drag to zoom,
double-click to reset</span></div>
<div id="slice-table" class="scroll"></div>
<h3 id="strata">Calibrated score per stratum</h3>
<p class="lead">Strata split the held-out conditions by how much the training data already saw of them (e.g.
<code>combo_seen2</code>: both single perturbations of a combination were in training; <code>combo_seen0</code>:
neither). <code>all</code> pools every test condition. Grey dashed line: train_mean (0); green dotted:
replicate ceiling (1).</p>
<div id="fig-strata" class="plot"></div>
<h3 id="raw">Raw metric values</h3>
<p class="lead">The metric's own value (mean over test conditions, all strata) with its 95% interval. The grey
dashed line is <code>train_mean</code> (<i>b</i>), the green dotted line the replicate ceiling (<i>r</i>); their
distance is the dynamic range in the axis title.</p>
<div id="fig-raw" class="plot"></div>
<h3 id="forest">Difference from train_mean</h3>
<p class="lead">Method minus <code>train_mean</code> on the same test conditions, with a paired bootstrap 95%
interval. Green: significantly better, red: significantly worse (in the metric's own direction), grey: a
tie.</p>
<div id="fig-forest" class="plot"></div>
</section>"""


def section_datasets(inputs: Inputs) -> str:
    if not inputs.datasets and inputs.results.empty:
        return ""
    results = inputs.results
    cards = []
    known = {d.get("dataset_id") for d in inputs.datasets}
    extra = sorted(set(results["dataset_id"]) - known) if not results.empty else []
    for uns in inputs.datasets + [{"dataset_id": d} for d in extra]:
        dataset_id = uns.get("dataset_id", "?")
        report = uns.get("dataset_report") if isinstance(uns.get("dataset_report"), dict) else None
        facts = []
        if report:
            types = report.get("perturbations_per_type") or {}
            facts += [
                ("modality", ", ".join(f"{k} ({v})" for k, v in types.items()) or "–"),
                ("profiles", fmt_general(report.get("n_profiles"))),
                ("conditions", fmt_general(report.get("n_conditions"))),
                ("perturbations", f"{fmt_general(report.get('n_perturbations'))} "
                                  f"({fmt_general(report.get('n_combinations'))} combinations)"),
                ("cell types", ", ".join(f"{k} ({v})" for k, v in (report.get("cell_types") or {}).items())
                 or fmt_general(report.get("n_cell_types"))),
                ("conditions (covariates)", ", ".join(f"{k} ({v})" for k, v in (report.get("conditions") or {}).items())
                 or "–"),
                ("genes", fmt_general(report.get("n_genes"))),
                ("cells", fmt_general(report.get("n_cells"))),
                ("cells per profile", f"median {fmt_general(report.get('cells_per_profile_median'))}, "
                                      f"min {fmt_general(report.get('cells_per_profile_min'))}"),
                ("replicate reproducibility", f"<b>{fmt(report.get('replicate_reproducibility'), 3)}</b> "
                                              "<span class='note'>mean Pearson of replicate deltas; near 0 = little "
                                              "signal beyond noise</span>"),
                ("median pairwise delta correlation",
                 f"<b>{fmt(report.get('median_pairwise_delta_correlation'), 3)}</b> <span class='note'>high = "
                 "perturbations look alike, the training mean is hard to beat</span>"),
            ]
        facts.append(("replicate halves", esc(inputs.replicate_kind(dataset_id))
                      + " <span class='note'>biological = whole replicates to each half; random_half = a seeded "
                        "random half of the cells</span>"))
        facts += [("organism", esc(uns.get("dataset_organism") or "–")),
                  ("normalization", esc(uns.get("normalization_id") or "–"))]
        url = str(uns.get("dataset_url") or "")
        if url:
            facts.append(("source", f'<a href="{esc(url)}">{esc(url)}</a>' if url.startswith("http") else esc(url)))
        reference = str(uns.get("dataset_reference") or "")
        if reference and reference != "none":
            facts.append(("reference", f'<a href="https://doi.org/{esc(reference)}">doi:{esc(reference)}</a>'
                          if reference.startswith("10.") else esc(reference)))
        if not results.empty:
            mine = results[(results["dataset_id"] == dataset_id) & (results["method_id"] == BASELINE_METHOD)]
            if mine.empty:
                mine = results[results["dataset_id"] == dataset_id]
            tasks = []
            for task_id, group in mine.groupby("task_id"):
                strata = group.groupby("stratum")["n_conditions"].max()
                parts = ", ".join(f"{s} {int(n)}" for s, n in strata.items() if s != ALL_STRATA)
                tasks.append(f"<code>{esc(task_id)}</code>: {int(strata.get(ALL_STRATA, 0))} test conditions"
                             + (f" ({esc(parts)})" if parts else ""))
            if tasks:
                facts.append(("tasks scored", "<br>".join(tasks)))
        rows = "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in facts)
        no_report = "" if report else "<p class='note'>The loader wrote no dataset report; shown is what its uns holds.</p>"
        description = _paragraphs(uns.get("dataset_description"))
        cards.append(f"""<article class="card" id="dataset-{esc(dataset_id)}">
<h3>{esc(uns.get('dataset_name') or dataset_id)} <span class="id">{esc(dataset_id)}</span></h3>
<p>{esc(uns.get('dataset_summary') or '')}</p>{no_report}
<table class="facts">{rows}</table>
{f'<details><summary>Description</summary>{description}</details>' if description else ''}
</article>""")
    return f"""
<section id="datasets">
<h2>Datasets</h2>
<div class="cards">{''.join(cards)}</div>
</section>"""


def section_cost(inputs: Inputs, figures: dict) -> str:
    trace = inputs.trace
    if trace.empty or "stage" not in trace:
        return ('<section id="cost"><h2>Cost</h2><p class="empty">No trace.tsv in the results directory '
                '(it is written by <code>perturbcast benchmark</code>).</p></section>')
    cost = cost_table(inputs)
    rows = "".join(
        f"<tr><td>{_method_cell(inputs, m)}</td><td>{_kind_badge(inputs.kind(m))}</td><td class='num'>{int(r.steps)}</td>"
        f"<td class='num'>{fmt(r.median_wall, 2)}</td><td class='num'>{fmt(r.total_wall, 1)}</td>"
        f"<td class='num'>{fmt(r.peak_rss, 0)}</td><td class='num'>{int(r.cached)}</td></tr>"
        for m, r in cost.iterrows())
    other = trace[(trace["stage"] != "predict") & (trace["status"] == "ok")]
    other_rows = ""
    if not other.empty:
        grouped = other.groupby(["stage", "component"]).agg(steps=("step", "count"), median_wall=("wall_seconds", "median"),
                                                           total_wall=("wall_seconds", "sum"),
                                                           peak_rss=("peak_rss_mib", "max"))
        stage_order = {s: i for i, s in enumerate(["dataset", "split", "score"])}
        grouped = grouped.sort_index(key=lambda index: index.map(lambda s: stage_order.get(s, 9)) if index.name == "stage" else index)
        other_rows = "".join(
            f"<tr><td>{esc(stage)}</td><td><code>{esc(component)}</code></td><td class='num'>{int(r.steps)}</td>"
            f"<td class='num'>{fmt(r.median_wall, 2)}</td><td class='num'>{fmt(r.total_wall, 1)}</td>"
            f"<td class='num'>{fmt(r.peak_rss, 0)}</td></tr>" for (stage, component), r in grouped.iterrows())
    plot = '<div id="fig-cost" class="plot"></div>' if "fig-cost" in figures else ""
    table = (f"<div class='scroll'><table class='data'><thead><tr><th>method</th><th>kind</th><th class='num'>steps</th>"
             f"<th class='num'>median wall s</th><th class='num'>total wall s</th><th class='num'>peak MiB</th>"
             f"<th class='num'>cached</th></tr></thead><tbody>{rows}</tbody></table></div>") if rows else \
        "<p class='empty'>No prediction step finished.</p>"
    return f"""
<section id="cost">
<h2>Cost</h2>
<p class="lead">Wall time and peak resident memory of each method's prediction steps (one per dataset × task
× seed), as measured by the engine (<code>trace.tsv</code>). Cached steps report the time of the run that made
them. Times depend on the machine and on how many steps ran at once.</p>
{plot}
{table}
{f"<details><summary>Other steps (datasets, splits, metrics)</summary><div class='scroll'><table class='data'><thead><tr><th>stage</th><th>component</th><th class='num'>steps</th><th class='num'>median wall s</th><th class='num'>total wall s</th><th class='num'>peak MiB</th></tr></thead><tbody>{other_rows}</tbody></table></div></details>" if other_rows else ""}
</section>"""


def _exit_code(value) -> str:
    try:
        return str(int(float(value)))
    except (TypeError, ValueError):
        return str(value or "–")


def _log_tail(inputs: Inputs, step: str, stage: str, lines: int = 12) -> tuple[str | None, str]:
    folder = LOG_FOLDERS.get(stage)
    parts = step.split("/", 1)
    if folder is None or len(parts) != 2:
        return None, ""
    path = inputs.dir / folder / parts[1] / "log.txt"
    if not path.is_file():
        return None, ""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return None, ""
    return f"{folder}/{parts[1]}/log.txt", "\n".join(text[-lines:])


def _step_list(steps: list[str]) -> str:
    items = "".join(f"<li><code>{esc(s)}</code></li>" for s in steps)
    first = esc(steps[0]) + (f" and {len(steps) - 1} more" if len(steps) > 1 else "")
    return f"<details><summary>{first}</summary><ul class='steps'>{items}</ul></details>"


UPSTREAM = re.compile(r"^upstream (\S+) (failed|skipped|not applicable|not_applicable)\s*$")


def _root_causes(trace: pd.DataFrame) -> dict[str, str]:
    """For every step that did not run because of another ('upstream X failed|skipped|not applicable'), the
    first step of that chain that did not finish for its own reason."""
    reasons = dict(zip(trace["step"], trace["reason"]))
    roots = {}
    for step in trace["step"]:
        cause, seen = step, set()
        while cause not in seen:
            seen.add(cause)
            match = UPSTREAM.match(str(reasons.get(cause, "")))
            if not match or match.group(1) not in reasons:
                break
            cause = match.group(1)
        if cause != step:
            roots[step] = cause
    return roots


def _stage_counts(steps: list[str]) -> str:
    stages = pd.Series([s.split("/", 1)[0] for s in steps]).value_counts()
    return ", ".join(f"{n} {stage}" for stage, n in stages.items())


def section_failures(inputs: Inputs, output: Path) -> str:
    trace = inputs.trace
    if trace.empty or "status" not in trace:
        return ('<section id="failures"><h2>Failures and not-applicable pairs</h2><p class="empty">No trace.tsv in '
                'the results directory, so no step records (Nextflow keeps its own trace and logs in its work '
                'directory).</p></section>')
    bad = trace[trace["status"].isin(["failed", "not_applicable", "skipped"])]
    if bad.empty:
        return ('<section id="failures"><h2>Failures and not-applicable pairs</h2>'
                '<p class="ok-note">Every planned step finished: nothing failed, was skipped or is not applicable.</p>'
                '</section>')
    counts = bad["status"].value_counts()
    summary = ", ".join(f"{counts[s]} {label}" for s, label in
                        (("failed", "failed"), ("not_applicable", "not applicable"), ("skipped", "skipped"))
                        if counts.get(s, 0))
    failed_rows = []
    for row in bad[bad["status"] == "failed"].itertuples(index=False):
        log_path, tail = _log_tail(inputs, row.step, row.stage)
        log_link = ""
        if log_path:
            href = os.path.relpath(inputs.dir / log_path, output.parent)
            log_link = f' <a href="{esc(Path(href).as_posix())}">log</a>'
        tail_html = f"<details><summary>last lines of the log</summary><pre>{esc(tail)}</pre></details>" if tail else ""
        failed_rows.append(f"<tr><td><code>{esc(row.step)}</code></td><td><code>{esc(row.component)}</code></td>"
                           f"<td class='num'>{esc(_exit_code(row.exit_code))}</td><td>{esc(row.reason)}{log_link}{tail_html}</td></tr>")
    failed = ("<h3>Failed steps</h3><div class='scroll'><table class='data'><thead><tr><th>step</th><th>component</th>"
              "<th class='num'>exit</th><th>reason</th></tr></thead><tbody>" + "".join(failed_rows)
              + "</tbody></table></div>") if failed_rows else ""
    roots = _root_causes(trace)
    status_of = dict(zip(trace["step"], trace["status"]))
    downstream: dict[str, list[str]] = {}
    for step, root in roots.items():
        if status_of.get(step) in ("skipped", "not_applicable"):
            downstream.setdefault(root, []).append(step)
    not_applicable_rows = []
    own = bad[(bad["status"] == "not_applicable") & ~bad["step"].isin(list(roots))]
    for reason, group in own.groupby("reason", sort=True):
        steps = list(group["step"])
        follow = [d for s in steps for d in downstream.get(s, [])]
        shown_reason = re.sub(r"^\[not applicable\]\s*", "", str(reason))
        not_applicable_rows.append(f"<tr><td>{esc(shown_reason)}</td><td>{_step_list(steps)}</td>"
                                   f"<td class='num'>{len(follow) or ''}</td></tr>")
    not_applicable = ("<h3>Not applicable</h3><p class='lead'>A task that cannot be made on a dataset (no "
                      "combinations, one cell type) or a method that cannot or does not serve a task: expected, not "
                      "an error. The steps after them (predictions, scores) are not run either.</p>"
                      "<div class='scroll'><table class='data'><thead><tr><th>reason</th><th>steps</th>"
                      "<th class='num'>steps not run after them</th></tr></thead><tbody>" + "".join(not_applicable_rows)
                      + "</tbody></table></div>") if not_applicable_rows else ""
    skipped_rows = []
    for root in sorted(downstream):
        if status_of.get(root) == "not_applicable":
            continue
        steps = downstream[root]
        root_status = str(status_of.get(root, "")).replace("_", " ")
        skipped_rows.append(f"<tr><td><code>{esc(root)}</code> <span class='status-{esc(status_of.get(root, ''))}'>"
                            f"{esc(root_status)}</span></td><td class='num'>{len(steps)}</td>"
                            f"<td>{esc(_stage_counts(steps))}</td><td>{_step_list(steps)}</td></tr>")
    unexplained = bad[(bad["status"] == "skipped") & ~bad["step"].isin(list(roots))]
    for reason, group in unexplained.groupby("reason", sort=True):
        steps = list(group["step"])
        skipped_rows.append(f"<tr><td>{esc(reason or 'no reason recorded')}</td><td class='num'>{len(steps)}</td>"
                            f"<td>{esc(_stage_counts(steps))}</td><td>{_step_list(steps)}</td></tr>")
    skipped = ("<h3>Skipped</h3><p class='lead'>Steps that could not run because a step they depend on failed, "
               "grouped by that first cause.</p><div class='scroll'><table class='data'><thead><tr>"
               "<th>cause</th><th class='num'>steps</th><th>stages</th><th>steps</th></tr></thead><tbody>"
               + "".join(skipped_rows) + "</tbody></table></div>") if skipped_rows else ""
    return f"""
<section id="failures">
<h2>Failures and not-applicable pairs</h2>
<p class="lead">{esc(summary)} of {len(trace)} steps. One failing component never stops the others; its
scores are simply absent from the tables above.</p>
{failed}{not_applicable}{skipped}
</section>"""


def _component_card(config: dict, kind_html: str, extra: str = "", wide: bool = False) -> str:
    name = config.get("name", "?")
    links = _links(config.get("links"))
    refs = _doi_links(config.get("references"))
    meta = []
    if refs:
        meta.append(f"<b>References</b> {refs}")
    if links:
        meta.append(f"<b>Links</b> {links}")
    if config.get("config_path"):
        meta.append(f"<b>Config</b> <code>{esc(config['config_path'])}</code>")
    description = _paragraphs(config.get("description"))
    return f"""<article class="component{' wide' if wide else ''}" id="component-{esc(name)}">
<h4>{esc(config.get('label') or name)} <span class="id">{esc(name)}</span> {kind_html}</h4>
<p>{_inline_code(config.get('summary') or '')}</p>
{f'<details><summary>Description</summary>{description}</details>' if description else ''}
{extra}
<p class="meta">{' · '.join(meta)}</p>
</article>"""


def section_components(inputs: Inputs) -> str:
    if not inputs.method_configs and not inputs.metric_configs:
        return ""
    order = inputs.method_order()
    rank = {m: i for i, m in enumerate(order)}
    configs = sorted(inputs.method_configs, key=lambda c: (rank.get(c.get("name"), len(rank)), c.get("name", "")))
    methods = [c for c in configs if inputs.kind(c.get("name", "")) == "method"]
    controls = [c for c in configs if inputs.kind(c.get("name", "")) != "method"]
    method_cards = "".join(_component_card(c, _kind_badge(inputs.kind(c.get("name", "")))) for c in methods)
    control_cards = "".join(_component_card(c, _kind_badge(inputs.kind(c.get("name", "")))) for c in controls)
    metric_cards = []
    for config in inputs.metric_configs:
        rows = []
        for metric in (config.get("info") or {}).get("metrics") or []:
            if not isinstance(metric, dict):
                continue
            better = "higher" if metric.get("maximize") else "lower"
            refs = _doi_links(metric.get("references"))
            description = _paragraphs(metric.get("description"))
            rows.append(f"<tr><td><b>{esc(metric.get('label') or metric.get('name'))}</b><br>"
                        f"<span class='id'>{esc(metric.get('name'))}</span></td>"
                        f"<td>{_inline_code(metric.get('summary') or '')}"
                        f"{f'<details><summary>Description</summary>{description}</details>' if description else ''}"
                        f"{f'<p class=meta>{refs}</p>' if refs else ''}</td>"
                        f"<td class='num'>[{esc(metric.get('min'))}, {esc(metric.get('max'))}]</td>"
                        f"<td>{better} is better</td></tr>")
        extra = ("<table class='data metrics'><thead><tr><th>metric id</th><th>what it measures</th>"
                 "<th class='num'>range</th><th>direction</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>") \
            if rows else ""
        metric_cards.append(_component_card(config, "", extra, wide=True))
    return f"""
<section id="components">
<h2>Components</h2>
<h3>Methods</h3><div class="components">{method_cards or "<p class='empty'>none</p>"}</div>
<h3>Controls and baselines</h3><div class="components">{control_cards or "<p class='empty'>none</p>"}</div>
<h3>Metrics</h3><div class="components">{''.join(metric_cards) or "<p class='empty'>none</p>"}</div>
</section>"""


# ----------------------------------------------------------------------------------------------- page

CSS = """
:root { --ink:#1d2329; --muted:#5b6570; --line:#dfe3e8; --bg:#f5f6f8; --accent:#1f5fa8; --win:#1a9850;
  --loss:#d73027; --tie:#8c8c8c; }
* { box-sizing: border-box; }
html { scroll-behavior: smooth; scroll-padding-top: 56px; }
body { margin:0; font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
  font-size:15px; line-height:1.5; color:var(--ink); background:var(--bg); }
a { color: var(--accent); text-decoration: none; } a:hover { text-decoration: underline; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 0.88em;
  background:#eef1f4; padding:0 3px; border-radius:3px; }
header { background: linear-gradient(135deg, #13304f, #1f5fa8); color:white; padding: 28px 0 22px; }
header a { color: #cfe3ff; } header code { background: rgba(255,255,255,0.15); color: white; }
.wrap { max-width: 1320px; margin: 0 auto; padding: 0 24px; }
.kicker { text-transform: uppercase; letter-spacing: 0.08em; font-size: 12px; opacity: 0.8; margin: 0; }
h1 { font-size: 30px; margin: 4px 0 6px; font-weight: 650; }
header .summary { font-size: 17px; margin: 0 0 10px; opacity: 0.95; }
header .facts { margin: 0; font-size: 14px; opacity: 0.92; }
header .headline { margin: 12px 0 0; font-size: 16px; background: rgba(255,255,255,0.12); padding: 8px 12px;
  border-radius: 6px; display: inline-block; }
header .id { color: #cfe3ff; }
nav { position: sticky; top: 0; z-index: 10; background: white; border-bottom: 1px solid var(--line);
  box-shadow: 0 1px 3px rgba(0,0,0,0.04); }
nav .wrap { display: flex; flex-wrap: wrap; gap: 4px 18px; padding-top: 10px; padding-bottom: 10px; font-size: 14px; }
nav a { color: var(--ink); font-weight: 500; } nav a:hover { color: var(--accent); }
main.wrap { padding-top: 8px; padding-bottom: 40px; }
section { background: white; border: 1px solid var(--line); border-radius: 8px; padding: 18px 22px;
  margin: 18px 0; }
section.callout { border-left: 4px solid var(--accent); }
h2 { font-size: 22px; margin: 0 0 8px; } h3 { font-size: 17px; margin: 22px 0 6px; }
h4 { font-size: 15px; margin: 0 0 4px; }
p.lead { color: var(--muted); margin: 0 0 12px; max-width: 980px; }
.id { color: var(--muted); font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px;
  font-weight: normal; }
.scroll { overflow-x: auto; }
table.data { border-collapse: collapse; width: 100%; font-size: 14px; margin: 6px 0 10px; }
table.data th, table.data td { padding: 6px 9px; border-bottom: 1px solid var(--line); text-align: left;
  vertical-align: top; }
table.data thead th { background: #f0f3f6; font-weight: 600; font-size: 13px; border-bottom: 2px solid #cfd6de;
  vertical-align: bottom; }
table.data tbody tr:hover { background: #f6f9fd; }
table.compact { width: auto; } table.compact td, table.compact th { padding: 4px 10px; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.board th, table.board td { padding: 6px 7px; }
table.board td.score { font-size: 15px; }
table.board a.method { white-space: nowrap; } table.board .interval { color: var(--muted); font-size: 12.5px; }
table.board tr.ctrl { background: #fafafa; } table.board tr.ctrl td { color: #4a525a; }
table.board td.rank { color: var(--muted); width: 2em; } table.board td.who { min-width: 17em; }
.dir { font-weight: normal; color: var(--muted); font-size: 11px; }
.badge { display: inline-block; font-size: 11.5px; padding: 1px 8px; border-radius: 10px; color: white;
  background: var(--badge); white-space: nowrap; font-weight: 500; vertical-align: 1px; }
.win { color: var(--win); font-weight: 600; } .loss { color: var(--loss); font-weight: 600; }
.tie { color: var(--tie); font-weight: 600; }
.plot { width: 100%; min-height: 120px; margin-top: 8px; }
.picker { display: flex; align-items: center; gap: 12px; flex-wrap: wrap; background: #f0f3f6; padding: 10px 14px;
  border-radius: 6px; margin: 6px 0 8px; position: sticky; top: 44px; z-index: 5; }
.picker label { font-weight: 600; }
.picker select { font-size: 15px; padding: 4px 8px; border-radius: 5px; border: 1px solid #b9c2cc; background: white; }
.picker .hint { color: var(--muted); font-size: 13px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 16px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 14px 16px; background: #fcfcfd; }
.card h3 { margin: 0 0 4px; }
table.facts { border-collapse: collapse; font-size: 14px; width: 100%; }
table.facts th { text-align: left; font-weight: 500; color: var(--muted); padding: 3px 12px 3px 0; width: 38%;
  vertical-align: top; }
table.facts td { padding: 3px 0; overflow-wrap: anywhere; }
.note { color: var(--muted); font-size: 12.5px; }
details { margin: 6px 0; } summary { cursor: pointer; color: var(--accent); font-size: 14px; }
details p { margin: 6px 0; max-width: 980px; }
pre { background: #1d2329; color: #e8eaed; padding: 10px 12px; border-radius: 6px; overflow-x: auto; font-size: 12px;
  white-space: pre-wrap; }
.components { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 12px; }
.component { border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; }
.component.wide { grid-column: 1 / -1; }
.component p { margin: 4px 0; } p.meta { font-size: 13px; color: var(--muted); }
table.metrics td { font-size: 13.5px; }
.empty { color: var(--muted); font-style: italic; }
.ok-note { color: var(--win); font-weight: 500; }
.status-failed { color: var(--loss); font-weight: 600; } .status-skipped { color: #b26b00; font-weight: 600; }
.status-not_applicable { color: var(--muted); font-weight: 600; }
ul.steps { margin: 4px 0; padding-left: 18px; font-size: 13px; max-height: 220px; overflow-y: auto; }
footer { color: var(--muted); font-size: 13px; padding: 10px 0 30px; }
@media print { nav, .picker { position: static; } }
"""

SCRIPT = """
(function () {
  var DATA = JSON.parse(document.getElementById('report-data').textContent);
  var CONFIG = {displaylogo: false, responsive: true, modeBarButtonsToRemove: ['lasso2d', 'select2d']};
  function draw(id, fig) {
    var el = document.getElementById(id);
    if (el && fig) { Plotly.react(el, fig.data, fig.layout, CONFIG); }
  }
  Object.keys(DATA.figures).forEach(function (id) { draw(id, DATA.figures[id]); });
  var select = document.getElementById('slice-select');
  function show(key) {
    Object.keys(DATA.slices).forEach(function (id) { draw(id, DATA.slices[id][key]); });
    var table = document.getElementById('slice-table');
    if (table) { table.innerHTML = DATA.slice_tables[key] || ''; }
  }
  if (select) {
    select.addEventListener('change', function () { show(select.value); });
    show(select.value);
  }
  document.body.setAttribute('data-rendered', 'true');
})();
"""


def plotly_js() -> tuple[str, str]:
    """plotly.js from the installed `plotly` package (its version) — inlined so the page needs no network."""
    try:
        from plotly.offline import get_plotlyjs
    except ImportError as error:
        raise RuntimeError("the report needs the `plotly` Python package for its plotting library "
                           "(pip install plotly)") from error
    import plotly
    return get_plotlyjs(), getattr(plotly, "__version__", "?")


def render(inputs: Inputs, output: Path) -> str:
    figures = {}
    for key, make in (("fig-leaderboard", leaderboard_figure), ("fig-heatmap", heatmap_figure),
                      ("fig-heatmap-strata", lambda i: heatmap_figure(i, by_stratum=True))):
        figure = make(inputs)
        if figure is not None:
            figures[key] = figure
    cost = cost_figure(inputs, cost_table(inputs))
    if cost is not None:
        figures["fig-cost"] = cost
    options, slice_figures, slice_tables = slices(inputs)
    body = "".join([
        section_calibration(inputs),
        section_leaderboard(inputs, figures),
        section_heatmap(inputs, figures),
        section_details(options),
        section_datasets(inputs),
        section_cost(inputs, figures),
        section_failures(inputs, output),
        section_components(inputs),
    ])
    nav_items = [("calibration", "How to read"), ("leaderboard", "Leaderboard"), ("heatmap", "Datasets × tasks"),
                 ("details", "Per stratum · raw · vs train_mean"), ("datasets", "Datasets"), ("cost", "Cost"),
                 ("failures", "Failures"), ("components", "Components")]
    nav = "".join(f'<a href="#{i}">{esc(label)}</a>' for i, label in nav_items if f'id="{i}"' in body)
    js, version = plotly_js()
    payload = _json_for_script({"figures": figures, "slices": slice_figures, "slice_tables": slice_tables})
    info = inputs.task_info
    generated = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    try:
        from importlib.metadata import version as package_version
        own = package_version("perturbcast")
    except Exception:  # noqa: BLE001 - the version is only a footnote
        own = "?"
    task_links = _links(info.get("links"))
    task_refs = _doi_links(info.get("references"))
    footer = (f"<footer class='wrap'>Task <code>{esc(info.get('task_id') or '?')}</code> version "
              f"{esc(info.get('version') or '?')}{' · ' + task_links if task_links else ''}"
              f"{' · references ' + task_refs if task_refs else ''}<br>Generated {esc(generated)} by perturbcast "
              f"{esc(own)} from <code>{esc(inputs.dir)}</code>; plots by plotly.js (plotly {esc(version)}), "
              f"embedded, so this file works offline.</footer>")
    title = f"{info.get('task_name') or 'perturbcast'} — benchmark report"
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
            f"{section_header(inputs)}<nav><div class='wrap'>{nav}</div></nav><main class='wrap'>{body}</main>{footer}"
            f"<script>{js}</script>"
            f"<script type='application/json' id='report-data'>{payload}</script>"
            f"<script>{SCRIPT}</script></body></html>\n")


def write_report(results_dir: Path, output: Path | None = None) -> Path:
    """Write the self-contained HTML report of a results directory; returns its path (default
    `RESULTS_DIR/report.html`). Reads only the files in the directory; missing files leave their
    sections empty rather than failing, so a half-finished run still gets a report."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results directory '{results_dir}' does not exist")
    output = Path(output) if output is not None else results_dir / REPORT_NAME
    inputs = Inputs(results_dir.resolve())
    text = render(inputs, output.resolve())
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(output.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(output)
    return output


# ----------------------------------------------------------------------------------------------- CLI

def add_command(commands):
    report = commands.add_parser(
        "report", help="write report.html, one self-contained offline page of a results directory",
        description="Write one self-contained HTML file from a results directory (of `perturbcast benchmark`, or "
                    "of `nextflow run .` followed by `perturbcast aggregate`): the leaderboard of calibrated scores "
                    "(0 = train_mean, 1 = replicate ceiling) with bootstrap 95% intervals and wins/ties/losses "
                    "against train_mean; a method x dataset/task heatmap; per dataset and task the scores per "
                    "stratum, the raw metric values and the differences from train_mean; dataset cards; wall time "
                    "and memory per method; failed, skipped and not-applicable steps with their reasons; and every "
                    "component's description and references. Reads only results.parquet, summary.parquet, "
                    "trace.tsv, the OpenProblems yaml files and the logs of failed steps. The interactive plots "
                    "(plotly.js) are embedded, so the file opens from disk with no network.",
        epilog="example: perturbcast report output/benchmark   (writes output/benchmark/report.html)")
    report.add_argument("results", metavar="RESULTS_DIR", help="results directory (holding results.parquet)")
    report.add_argument("--output", metavar="FILE", help="where to write the page (default: RESULTS_DIR/report.html)")
    report.set_defaults(handler=report_command)


def report_command(args) -> int:
    results = Path(args.results)
    if not (results / "results.parquet").is_file() and not (results / "trace.tsv").is_file():
        print(f"[error] '{results}' holds neither results.parquet nor trace.tsv: run `perturbcast benchmark "
              f"--output {results}` or `perturbcast aggregate {results}` first", file=sys.stderr)
        return 1
    try:
        path = write_report(results, Path(args.output) if args.output else None)
    except RuntimeError as error:
        print(f"[error] {error}", file=sys.stderr)
        return 1
    print(f"report: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="perturbcast")
    add_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
