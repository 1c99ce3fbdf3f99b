"""The report's Plotly figures as plain JSON dicts: the leaderboard, the heatmaps, and per dataset x task x
partition the scores per stratum, the raw metric values and the differences from train_mean; the cost."""
from __future__ import annotations

import html

import numpy as np
import pandas as pd

from ..leaderboard import with_verdict_columns
from .inputs import ALL_STRATA, BASELINE_METHOD, HEADLINE_CLAMP, Inputs
from .markup import finite, fmt
from .plotting import KIND_COLOURS, OUTCOME_COLOURS, STRATUM_COLOURS, base_layout, clip, edge_position, \
    edge_text, error_bars, facet_layout, score_range, symbols, vline
from .tables import headroom_table, headroom_text, heatmap_table


def leaderboard_figure(inputs: Inputs) -> dict | None:
    summary = inputs.summary
    if summary.empty:
        return None
    order = list(summary["method_id"])
    layout = base_layout(110 + 34 * len(order))
    layout["xaxis"] = {"title": {"text": "calibrated score (0 = train_mean, 1 = replicate_ceiling)"},
                       "range": score_range(list(summary["calibrated"]) + list(summary["calibrated_low"])
                                             + list(summary["calibrated_high"])),
                       "zeroline": False, "gridcolor": "#e3e6ea"}
    layout["yaxis"] = {"type": "category", "categoryorder": "array", "categoryarray": list(reversed(order)),
                       "gridcolor": "#eef0f2"}
    layout["shapes"] = [vline(0, "x", "y", "#6b6b6b", label="train_mean", layout=layout),
                        vline(1, "x", "y", "#2a8c3c", label="replicate ceiling", layout=layout)]
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
                       "x": clip(values), "error_x": {**error_bars(values, rows["calibrated_low"],
                                                                rows["calibrated_high"], True),
                                                       "color": KIND_COLOURS[kind]},
                       "marker": {"color": KIND_COLOURS[kind], "size": 10, "symbol": symbols(values)},
                       "text": edge_text(values), "textposition": edge_position(values), "textfont": {"size": 11},
                       "hovertext": hover, "hoverinfo": "text"})
    return {"data": traces, "layout": layout}


# The heatmap shows means of scores clamped to [-HEADLINE_CLAMP, HEADLINE_CLAMP]: its colour scale spans exactly that.
HEAT_RANGE = (-HEADLINE_CLAMP, HEADLINE_CLAMP)


def heatmap_figure(inputs: Inputs, by_stratum: bool = False) -> dict | None:
    """Mean over the headline panel of the clamped calibrated scores (and partitions): methods x dataset/task,
    or methods x task/stratum (then also over datasets)."""
    table = heatmap_table(inputs.results, by_stratum)
    if table.empty:
        return None
    columns = sorted({key[1:] for key in table.index})
    names = ["<br>".join(column) for column in columns]
    order = inputs.method_order()
    what = "panel metrics x datasets x partitions" if by_stratum else "panel metrics x partitions"
    slices = with_verdict_columns(inputs.headline)
    # a dataset x task that is not ranked shows no colour: its scores cannot tell methods apart
    unranked = set() if by_stratum or slices.empty else {
        (d, t) for d, t, ranked in zip(slices["dataset_id"], slices["task_id"], slices["ranked"]) if not ranked}
    z, text, hover = [], [], []
    for method in order:
        z_row, text_row, hover_row = [], [], []
        for column in columns:
            value = np.nan if tuple(column) in unranked else table["mean"].get((method, *column), np.nan)
            count = table["count"].get((method, *column), 0)
            z_row.append(min(max(value, HEAT_RANGE[0]), HEAT_RANGE[1]) if finite(value) else None)
            text_row.append(fmt(value, 2) if finite(value) else "")
            hover_row.append(f"<b>{html.escape(method)}</b><br>{html.escape(' · '.join(column))}<br>mean calibrated "
                             f"score {fmt(value)}<br>mean of {count} score{'s' if count != 1 else ''} ({what})")
        z.append(z_row)
        text.append(text_row)
        hover.append(hover_row)
    low, high = HEAT_RANGE
    scale = [[0.0, "#b2182b"], [0.25, "#ef8a62"], [0.5, "#f7f7f7"], [0.75, "#4393c3"], [1.0, "#08306b"]]
    layout = base_layout(110 + 34 * len(order))
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
            dark = value < low + 0.25 * (high - low) or value > high - 0.25 * (high - low)
            annotations.append({"x": names[j], "y": method, "text": text[i][j], "showarrow": False,
                                "font": {"size": 12, "color": "white" if dark else "#1d2329"}})
    layout["annotations"] = annotations
    trace = {"type": "heatmap", "z": z, "x": names, "y": order, "zmin": low, "zmax": high, "colorscale": scale,
             "hovertext": hover, "hoverinfo": "text", "xgap": 2, "ygap": 2,
             "colorbar": {"title": {"text": "calibrated", "side": "right"}, "thickness": 14,
                          "tickvals": [low, 0, high], "ticktext": [f"−{HEADLINE_CLAMP:g}", "0 train_mean",
                                                                   f"{HEADLINE_CLAMP:g} ceiling"]}}
    return {"data": [trace], "layout": layout}


def stratum_figure(inputs: Inputs, rows: pd.DataFrame, order: list[str], metrics: list[str]) -> dict:
    """Calibrated score per method and stratum; one facet per metric, the first the mean over metrics."""
    strata = [ALL_STRATA] + sorted(set(rows["stratum"]) - {ALL_STRATA})
    names = ["Mean over metrics"] + [inputs.metric_label(m) for m in metrics]
    layout, refs = facet_layout(names, order, 13 * len(strata) + 12,
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
                     + (f" [{fmt(lo)}, {fmt(hi)}]" if finite(lo) else "") + (f"<br>{c} conditions" if c else "")
                     for m, v, lo, hi, c in zip(order, values, lows, highs, n)]
            traces.append({"type": "scatter", "orientation": "h", "mode": "markers+text", "name": stratum,
                           "legendgroup": stratum,
                           "showlegend": False, "xaxis": xref, "yaxis": yref, "y": order, "x": clip(values),
                           "error_x": {**error_bars(values, lows, highs, True), "color": colour},
                           "marker": {"color": colour, "size": 8, "symbol": symbols(values)},
                           "text": edge_text(values), "textposition": edge_position(values), "textfont": {"size": 10},
                           "hovertext": hover, "hoverinfo": "text"})
    for index, stratum in enumerate(strata):  # legend entries with a plain marker (the data may start with an arrow)
        traces.append({"type": "scatter", "mode": "markers", "name": stratum, "legendgroup": stratum, "x": [None],
                       "y": [None], "marker": {"color": STRATUM_COLOURS[index % len(STRATUM_COLOURS)], "size": 9},
                       "hoverinfo": "skip"})
    shared_range = score_range(all_values)
    for xref, yref in refs:
        layout["x" + ("axis" + xref[1:])]["range"] = shared_range
        shapes += [vline(0, xref, yref, "#6b6b6b"), vline(1, xref, yref, "#2a8c3c", dash="dot")]
    layout["shapes"] = shapes
    layout["scattermode"] = "group"
    layout["scattergap"] = 0.5
    return {"data": traces, "layout": layout}


def raw_figure(inputs: Inputs, rows: pd.DataFrame, order: list[str], metrics: list[str]) -> dict:
    """Raw metric value per method (all strata) with its interval; train_mean and the ceiling as lines, and the
    headroom of the ceiling over train_mean, in the metric's better direction, under each facet's title."""
    overall = rows[rows["stratum"] == ALL_STRATA]
    room = headroom_table(overall, {m: inputs.maximize(m) for m in metrics}).set_index("metric_id")
    names = []
    for metric in metrics:
        better = inputs.maximize(metric)
        note = [] if better is None else ["higher is better" if better else "lower is better"]
        if metric in room.index:
            note.append(f"headroom {headroom_text(room.at[metric, 'headroom'], bool(room.at[metric, 'scaled']))}")
        names.append((inputs.metric_label(metric), " · ".join(note)))
    layout, refs = facet_layout(names, order, 26, x_titles=list(metrics))
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
                       "y": present, "x": values,
                       "error_x": {**error_bars(values, [data["value_low"][m] for m in present],
                                                [data["value_high"][m] for m in present], False), "color": "#555"},
                       "marker": {"color": colours, "size": 9}, "hovertext": hover, "hoverinfo": "text"})
        if present:
            baseline, ceiling = data["baseline"].iloc[0], data["ceiling"].iloc[0]
            if finite(baseline):
                shapes.append(vline(float(baseline), xref, yref, "#6b6b6b"))
            if finite(ceiling):
                shapes.append(vline(float(ceiling), xref, yref, "#2a8c3c", dash="dot"))
    layout["shapes"] = shapes
    # legend stand-ins for the line meanings and the marker colours
    for name, colour, dash in (("train_mean (b)", "#6b6b6b", "dash"), ("replicate ceiling (r)", "#2a8c3c", "dot")):
        traces.append({"type": "scatter", "mode": "lines", "name": name, "x": [None], "y": [None],
                       "line": {"color": colour, "dash": dash}, "hoverinfo": "skip"})
    kinds = {inputs.kind(m, t) for m, t in zip(overall["method_id"], overall["method_type"])}  # as the markers
    for kind in sorted(kinds, key=list(KIND_COLOURS).index):
        traces.append({"type": "scatter", "mode": "markers", "name": kind, "x": [None], "y": [None],
                       "marker": {"color": KIND_COLOURS[kind], "size": 9}, "hoverinfo": "skip"})
    return {"data": traces, "layout": layout}


def _p_values(data: pd.DataFrame, method: str) -> str:
    """The bootstrap p-value of a difference and its Holm-adjusted value, where the results carry them."""
    if "p_value" not in data or not finite(data["p_value"].get(method)):
        return ""
    adjusted = data["p_holm"].get(method) if "p_holm" in data else None
    return (f"<br>p = {fmt(data['p_value'][method], 3)}"
            + (f", Holm-adjusted {fmt(adjusted, 3)}" if finite(adjusted) else ""))


def forest_figure(inputs: Inputs, rows: pd.DataFrame, order: list[str], metrics: list[str]) -> dict:
    """Difference from train_mean with its paired bootstrap interval, coloured by outcome; per metric."""
    overall = rows[(rows["stratum"] == ALL_STRATA) & (rows["method_id"] != BASELINE_METHOD)]
    shown = [m for m in order if m != BASELINE_METHOD]
    names = [(inputs.metric_label(m), "" if inputs.maximize(m) is None else "better →" if inputs.maximize(m)
              else "← better") for m in metrics]
    layout, refs = facet_layout(names, shown, 26, x_titles=[f"{m} − train_mean" for m in metrics])
    traces, shapes = [], []
    for outcome in ("win", "tie", "loss", ""):
        for facet, (metric, (xref, yref)) in enumerate(zip(metrics, refs)):
            data = overall[(overall["metric_id"] == metric) & (overall["outcome"].fillna("") == outcome)]
            data = data.set_index("method_id")
            present = [m for m in shown if m in data.index]
            values = [data["diff_from_baseline"][m] for m in present]
            hover = [f"<b>{html.escape(m)}</b> vs train_mean<br>{html.escape(metric)} difference {fmt(v, 4)} "
                     f"[{fmt(data['diff_low'][m], 4)}, {fmt(data['diff_high'][m], 4)}]<br>"
                     f"{outcome or 'no outcome'}{_p_values(data, m)}" for m, v in zip(present, values)]
            traces.append({"type": "scatter", "mode": "markers", "name": outcome or "no baseline",
                           "legendgroup": outcome, "showlegend": facet == 0 and bool(present), "xaxis": xref,
                           "yaxis": yref, "y": present, "x": values,
                           "error_x": {**error_bars(values, [data["diff_low"][m] for m in present],
                                                [data["diff_high"][m] for m in present], False),
                                       "color": OUTCOME_COLOURS[outcome]},
                           "marker": {"color": OUTCOME_COLOURS[outcome], "size": 9, "symbol": "diamond"},
                           "hovertext": hover, "hoverinfo": "text"})
    for xref, yref in refs:
        shapes.append(vline(0, xref, yref, "#6b6b6b"))
    layout["shapes"] = shapes
    return {"data": traces, "layout": layout}


def cost_figure(inputs: Inputs, cost: pd.DataFrame) -> dict | None:
    if cost.empty:
        return None
    order = list(cost.index)
    layout, refs = facet_layout(["Wall time per prediction step (median; total as label)",
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
