"""The page's header and its score sections: how to read the scores, the heatmaps and the
per dataset x task views (HTML strings; the numbers come from `tables` and the plots from `figures`)."""
from __future__ import annotations

import pandas as pd

from .figures import forest_figure, raw_figure, stratum_figure
from .inputs import ALL_STRATA, FAMILY_ALPHA, HEADLINE_CLAMP, HEADLINE_PANEL, NOT_DONE, OK, \
    STATUS_LABELS, Inputs, is_simulated
from ..layout import Status
from .markup import esc
from .plotting import KIND_COLOURS
from .tables import headroom_overview, headroom_text, slice_table


def method_cell(inputs: Inputs, method: str, line_break: bool = False) -> str:
    return (f'<a href="#component-{esc(method)}" class="method">{esc(inputs.method_label(method))}</a>'
            f'{"<br>" if line_break else " "}<span class="id">{esc(method)}</span>')


def kind_badge(kind: str) -> str:
    return f'<span class="badge" style="--badge:{KIND_COLOURS.get(kind, "#555")}">{esc(kind)}</span>'


def _plural(n: int, word: str) -> str:
    return f"<b>{n}</b> {word}{'s' if n != 1 else ''}"


def _dataset_banner(inputs: Inputs) -> str:
    """The datasets by name, each marked 'simulated' when a simulator made it."""
    shown = []
    for dataset_id in inputs.dataset_ids():
        uns = inputs.dataset_uns(dataset_id)
        name = uns.get("dataset_name") or dataset_id
        tag = ' <span class="tag">simulated</span>' if is_simulated(uns) else ""
        shown.append(f'<a href="#dataset-{esc(dataset_id)}">{esc(name)}</a> <span class="id">{esc(dataset_id)}</span>'
                     f"{tag}")
    if not shown:
        return ""
    simulated = [is_simulated(inputs.dataset_uns(d)) for d in inputs.dataset_ids()]
    note = (" — <b>simulated data only</b>: the scores say how methods do on the simulator's generating model, "
            "not on measured cells") if all(simulated) else ""
    return f'<p class="facts datasets">{"Dataset" if len(shown) == 1 else "Datasets"}: {" · ".join(shown)}{note}</p>'


def section_header(inputs: Inputs, headline: str = "") -> str:
    """Title, facts, datasets and `headline`, the answer's one sentence (sections_answer.banner)."""
    info = inputs.task_info
    title = info.get("task_name") or "Expression forecasting"
    results, trace = inputs.results, inputs.trace
    facts = []
    if not results.empty:
        methods = results[["method_id", "method_type"]].drop_duplicates()
        n_methods = sum(inputs.kind(m, t) == "method" for m, t in zip(methods["method_id"], methods["method_type"]))
        folds = inputs.results_folds()
        absent = sorted(set(trace.loc[trace["status"] == Status.NOT_INSTALLED, "component"])) \
            if not trace.empty and "status" in trace else []
        installed = (f' (<a href="#failures">+ {len(absent)} not installed</a>: {esc(", ".join(absent))})'
                     if absent else "")
        facts += [_plural(n_methods, "method") + installed, f"<b>{len(methods) - n_methods}</b> controls and baselines",
                  _plural(results["dataset_id"].nunique(), "dataset"), _plural(results["task_id"].nunique(), "task"),
                  f"<b>{results['metric_id'].nunique()}</b> metrics",
                  _plural(results["seed"].nunique(), "partition") + (f" × <b>{folds}</b> folds" if folds else "")]
    if not trace.empty and "status" in trace:
        counts = trace["status"].value_counts()
        steps = f"<b>{len(trace)}</b> steps: {counts.get(OK, 0)} ok"
        for status in NOT_DONE:
            if counts.get(status, 0):
                steps += f', <a href="#failures">{counts[status]} {STATUS_LABELS[status]}</a>'
        facts.append(steps)
    return (f'<header><div class="wrap"><p class="kicker">perturbcast benchmark report</p>'
            f'<h1>{esc(title)}</h1><p class="summary">{esc(info.get("task_summary") or "")}</p>'
            f'<p class="facts">{" · ".join(facts)}</p>{_dataset_banner(inputs)}{headline}</div></header>')


def _headroom_details(inputs: Inputs) -> str:
    table = headroom_overview(inputs.results, {m: inputs.maximize(m) for m in inputs.metric_order()})
    # without train_mean or the ceiling in the results there is no headroom to show
    if table.empty or "headroom" not in table.columns.get_level_values(0) or table["headroom"].isna().all().all():
        return ""
    columns = list(table["headroom"].columns)
    head = "".join(f"<th class='num'>{esc(d)}<br><span class='id'>{esc(t)}</span></th>" for d, t in columns)
    body = "".join(f"<tr><th>{esc(inputs.metric_label(m))} <span class='id'>{esc(m)}</span></th>"
                   + "".join(f"<td class='num'>{esc(headroom_text(table.at[m, ('headroom', *c)], bool(table.at[m, ('scaled', *c)])))}"
                             f"</td>" for c in columns) + "</tr>"
                   for m in table.index)
    return (f"<details><summary>Headroom of every metric: how far r is ahead of b in its better direction "
            f"(all strata)</summary><div class='scroll'><table class='data'><thead><tr><th>metric</th>{head}</tr>"
            f"</thead><tbody>{body}</tbody></table></div></details>")


def section_calibration(inputs: Inputs) -> str:
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
paired bootstrap 95% intervals over test conditions. The <i>headroom</i>, how far <i>r</i> is ahead of <i>b</i> in the
metric's better direction (<i>r</i> − <i>b</i> where higher is better, <i>b</i> − <i>r</i> where lower is better), is
shown beside the raw values: a metric whose ceiling does not beat the baseline beyond resampling noise gets no
calibrated score there (its headroom reads "within noise", or "none" when the ceiling is not ahead at all).
All metrics exclude the perturbed target genes.</p>
{_headroom_details(inputs)}
</section>"""


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
    """The numbers behind the slice: n conditions per stratum, the headroom of each metric (b and r on hover)."""
    text, detail = slice_table(rows, metrics, {m: inputs.maximize(m) for m in metrics})
    head = "".join(f"<th class='num'>{esc(s)}</th>" for s in text.columns)
    body = []
    for label in text.index:
        cells = []
        for stratum in text.columns:
            title = f" title='{esc(detail.at[label, stratum])}'" if detail.at[label, stratum] else ""
            cells.append(f"<td class='num'{title}>{esc(text.at[label, stratum])}</td>")
        body.append(f"<tr><th>{esc(label)}</th>{''.join(cells)}</tr>")
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
        key = f"{dataset_id}|{task_id}|{seed}"
        options.append((key, f"{dataset_id} · {task_id}" + (f" · seed {seed}" if n_seeds > 1 else "")))
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
neither). <code>{ALL_STRATA}</code> pools every test condition. Grey dashed line: train_mean (0); green dotted:
replicate ceiling (1).</p>
<div id="fig-strata" class="plot"></div>
<h3 id="raw">Raw metric values</h3>
<p class="lead">The metric's own value (mean over test conditions, all strata) with its 95% interval. The grey
dashed line is <code>train_mean</code> (<i>b</i>), the green dotted line the replicate ceiling (<i>r</i>); how far
<i>r</i> is ahead of <i>b</i> in the metric's better direction, the headroom, is under each panel's title.</p>
<div id="fig-raw" class="plot"></div>
<h3 id="forest">Difference from train_mean</h3>
<p class="lead">Method minus <code>train_mean</code> on the same test conditions, with a paired bootstrap 95%
interval. Green: significantly better, red: significantly worse (in the metric's own direction), grey: a
tie. Hover a point for its bootstrap p-value and the Holm-adjusted one the call is made on.</p>
<div id="fig-forest" class="plot"></div>
</section>"""
