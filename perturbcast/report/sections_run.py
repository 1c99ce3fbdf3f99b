"""The page's sections about the run rather than the scores: dataset cards, cost, what did not finish, and the
components (HTML strings; the numbers come from `tables`)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from ..layout import NOT_APPLICABLE_TAG as _NOT_APPLICABLE_TAG, NOT_INSTALLED_TAG as _NOT_INSTALLED_TAG, status_label
from .inputs import FAILED, NOT_APPLICABLE, NOT_DONE, NOT_INSTALLED, SKIPPED, STATUS_LABELS, Inputs, is_simulated
from .markup import doi_links, esc, fmt, inline_code, links, paragraphs
from .sections_scores import kind_badge, method_cell
from .tables import cost_by_dataset_table, dataset_facts, failure_tables, other_cost_table, stage_counts, tasks_scored


def _facts_rows(facts: pd.DataFrame) -> list[tuple[str, str]]:
    rows = []
    for fact in facts.itertuples(index=False):
        value = f"<b>{esc(fact.value)}</b>" if fact.strong else esc(fact.value)
        rows.append((fact.fact, value + (f" <span class='note'>{esc(fact.note)}</span>" if fact.note else "")))
    return rows


def section_datasets(inputs: Inputs) -> str:
    if not inputs.datasets and inputs.results.empty:
        return ""
    cards = []
    for dataset_id in inputs.dataset_ids():
        uns = inputs.dataset_uns(dataset_id) or {"dataset_id": dataset_id}
        report = uns.get("dataset_report") if isinstance(uns.get("dataset_report"), dict) else None
        facts = _facts_rows(dataset_facts(report, inputs.replicate_kind(dataset_id)))
        facts += [("organism", esc(uns.get("dataset_organism") or "–")),
                  ("normalization", esc(uns.get("normalization_id") or "–"))]
        url = str(uns.get("dataset_url") or "")
        if url:
            facts.append(("source", f'<a href="{esc(url)}">{esc(url)}</a>' if url.startswith("http") else esc(url)))
        reference = str(uns.get("dataset_reference") or "")
        if reference and reference != "none":
            facts.append(("reference", f'<a href="https://doi.org/{esc(reference)}">doi:{esc(reference)}</a>'
                          if reference.startswith("10.") else esc(reference)))
        tasks = [f"<code>{esc(t.task_id)}</code>: {t.n_conditions} test conditions"
                 + (f" ({esc(', '.join(f'{s} {n}' for s, n in t.strata.items()))})" if t.strata else "")
                 for t in tasks_scored(inputs.results, dataset_id).itertuples(index=False)]
        if tasks:
            facts.append(("tasks scored", "<br>".join(tasks)))
        rows = "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in facts)
        no_report = "" if report else "<p class='note'>The loader wrote no dataset report; shown is what its uns holds.</p>"
        description = paragraphs(uns.get("dataset_description"))
        tag = ' <span class="tag">simulated</span>' if is_simulated(uns) else ""
        cards.append(f"""<article class="card" id="dataset-{esc(dataset_id)}">
<h3>{esc(uns.get('dataset_name') or dataset_id)} <span class="id">{esc(dataset_id)}</span>{tag}</h3>
<p>{esc(uns.get('dataset_summary') or '')}</p>{no_report}
<table class="facts">{rows}</table>
{f'<details><summary>Description</summary>{description}</details>' if description else ''}
</article>""")
    return f"""
<section id="datasets">
<h2>Datasets</h2>
<div class="cards">{''.join(cards)}</div>
</section>"""


def section_cost(inputs: Inputs, figures: dict, cost: pd.DataFrame) -> str:
    trace = inputs.trace
    if trace.empty or "stage" not in trace:
        return ('<section id="cost"><h2>Cost</h2><p class="empty">No trace.tsv in the results directory '
                '(it is written by <code>perturbcast benchmark</code>).</p></section>')
    rows = "".join(
        f"<tr><td>{method_cell(inputs, m)}</td><td>{kind_badge(inputs.kind(m))}</td><td class='num'>{int(r.steps)}</td>"
        f"<td class='num'>{fmt(r.median_wall, 2)}</td><td class='num'>{fmt(r.total_wall, 1)}</td>"
        f"<td class='num'>{fmt(r.peak_rss, 0)}</td><td class='num'>{int(r.cached)}</td></tr>"
        for m, r in cost.iterrows())
    other_rows = "".join(
        f"<tr><td>{esc(stage)}</td><td><code>{esc(component)}</code></td><td class='num'>{int(r.steps)}</td>"
        f"<td class='num'>{fmt(r.median_wall, 2)}</td><td class='num'>{fmt(r.total_wall, 1)}</td>"
        f"<td class='num'>{fmt(r.peak_rss, 0)}</td></tr>" for (stage, component), r in other_cost_table(trace).iterrows())
    per_dataset = _cost_by_dataset(inputs, cost_by_dataset_table(trace, list(cost.index)))
    plot = '<div id="fig-cost" class="plot"></div>' if "fig-cost" in figures else ""
    table = (f"<div class='scroll'><table class='data'><thead><tr><th>method</th><th>kind</th><th class='num'>steps</th>"
             f"<th class='num'>median wall s</th><th class='num'>total wall s</th><th class='num'>peak MiB</th>"
             f"<th class='num'>cached</th></tr></thead><tbody>{rows}</tbody></table></div>") if rows else \
        "<p class='empty'>No prediction step finished.</p>"
    other = (f"<details><summary>Other steps (datasets, splits, metrics)</summary><div class='scroll'>"
             f"<table class='data'><thead><tr><th>stage</th><th>component</th><th class='num'>steps</th>"
             f"<th class='num'>median wall s</th><th class='num'>total wall s</th><th class='num'>peak MiB</th></tr>"
             f"</thead><tbody>{other_rows}</tbody></table></div></details>") if other_rows else ""
    return f"""
<section id="cost">
<h2>Cost</h2>
<p class="lead">Wall time and peak resident memory of each method's prediction steps (one per dataset × task
× seed), as measured by the engine (<code>trace.tsv</code>). Cached steps report the time of the run that made
them. Times depend on the machine and on how many steps ran at once.</p>
{plot}
{table}
{per_dataset}
{other}
</section>"""


def _cost_by_dataset(inputs: Inputs, by_dataset: pd.DataFrame) -> str:
    """Methods x datasets: median wall seconds of one prediction step and the largest peak, where a run has
    more than one dataset (with one, the table above says it)."""
    if by_dataset.empty:
        return ""
    datasets = sorted(set(by_dataset.index.get_level_values(1)))
    if len(datasets) < 2:
        return ""
    head = "".join(f"<th class='num'>{esc(d)}<br>median s · peak MiB · steps</th>" for d in datasets)
    rows = []
    for method in dict.fromkeys(by_dataset.index.get_level_values(0)):
        cells = []
        for dataset in datasets:
            if (method, dataset) in by_dataset.index:
                r = by_dataset.loc[(method, dataset)]
                cells.append(f"<td class='num'>{fmt(r.median_wall, 1)} · {fmt(r.peak_rss, 0)} · {int(r.steps)}</td>")
            else:
                cells.append("<td class='num'>–</td>")
        rows.append(f"<tr><td>{method_cell(inputs, method)}</td><td>{kind_badge(inputs.kind(method))}</td>{''.join(cells)}</tr>")
    return (f"<h3>Per dataset</h3><p>One prediction step trains the method on a fold's training data and predicts "
            f"its held-out conditions; a model's cost grows with the dataset's cells and genes.</p>"
            f"<div class='scroll'><table class='data' id='cost-by-dataset'><thead><tr><th>method</th><th>kind</th>{head}"
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div>")


# components may start their not-applicable message with this tag; the table's heading already says it
NOT_APPLICABLE_TAG = re.compile(r"^" + re.escape(_NOT_APPLICABLE_TAG) + r"\s*")
NOT_INSTALLED_TAG = re.compile(r"^" + re.escape(_NOT_INSTALLED_TAG) + r"\s*")


def _exit_code(value) -> str:
    try:
        return str(int(float(value)))
    except (TypeError, ValueError):
        return str(value or "–")


def _step_list(steps: list[str]) -> str:
    items = "".join(f"<li><code>{esc(s)}</code></li>" for s in steps)
    first = esc(steps[0]) + (f" and {len(steps) - 1} more" if len(steps) > 1 else "")
    return f"<details><summary>{first}</summary><ul class='steps'>{items}</ul></details>"


def _table(head: str, rows: list[str]) -> str:
    return (f"<div class='scroll'><table class='data'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}"
            f"</tbody></table></div>")


def _block(title: str, lead: str, head: str, rows: list[str]) -> str:
    """A titled table of the failures section, or nothing without rows."""
    return f"<h3>{title}</h3><p class='lead'>{lead}</p>" + _table(head, rows) if rows else ""


def section_failures(inputs: Inputs, output: Path) -> str:
    trace = inputs.trace
    title = "<h2>Failures and not-applicable pairs</h2>"
    if trace.empty or "status" not in trace:
        return (f'<section id="failures">{title}<p class="empty">No trace.tsv in the results directory, so no step '
                'records (Nextflow keeps its own trace and logs in its work directory).</p></section>')
    counts = trace["status"].value_counts()
    if not any(counts.get(s, 0) for s in NOT_DONE):
        return (f'<section id="failures">{title}<p class="ok-note">Every planned step finished: nothing failed, '
                'was skipped or is not applicable.</p></section>')
    summary = ", ".join(f"{counts[s]} {STATUS_LABELS[s]}" for s in NOT_DONE if counts.get(s, 0))
    tables = failure_tables(trace)
    failed_rows = []
    for row in tables[FAILED].itertuples(index=False):
        log_path, tail = inputs.log_tail(row.steps[0], row.stage)
        log_link = ""
        if log_path:
            href = os.path.relpath(inputs.dir / log_path, output.parent)
            log_link = f' <a href="{esc(Path(href).as_posix())}">log</a>'
        tail_html = f"<details><summary>last lines of the log</summary><pre>{esc(tail)}</pre></details>" if tail else ""
        failed_rows.append(f"<tr><td><code>{esc(row.component)}</code></td><td class='num'>{len(row.steps)}</td>"
                           f"<td class='num'>{esc(_exit_code(row.exit_code))}</td><td>{esc(row.reason)}{log_link}"
                           f"{tail_html}</td><td>{_step_list(row.steps)}</td></tr>")
    failed = _block("Failed steps", "Grouped by component and reason; the log is the first step's.",
                    "<th>component</th><th class='num'>steps</th><th class='num'>exit</th><th>reason</th><th>steps</th>",
                    failed_rows)
    installed_rows = [
        f"<tr><td><code>{esc(row.component)}</code></td><td>{esc(NOT_INSTALLED_TAG.sub('', row.reason))}</td>"
        f"<td class='num'>{len(row.steps)}</td><td class='num'>{len(row.downstream) or ''}</td></tr>"
        for row in tables[NOT_INSTALLED].itertuples(index=False)]
    not_installed = _block("Not installed", "Methods whose packages are absent on this machine: not a failure; the "
                           "command installs them, and a rerun adds their scores.",
                           "<th>method</th><th>how to install it</th><th class='num'>steps</th>"
                           "<th class='num'>steps not run after them</th>", installed_rows)
    not_applicable_rows = [
        f"<tr><td>{esc(NOT_APPLICABLE_TAG.sub('', row.reason))}</td><td>{_step_list(row.steps)}</td>"
        f"<td class='num'>{len(row.downstream) or ''}</td></tr>"
        for row in tables[NOT_APPLICABLE].itertuples(index=False)]
    not_applicable = _block("Not applicable", "A task that cannot be made on a dataset (no combinations, one cell "
                            "type) or a method that cannot or does not serve a task: expected, not an error. The steps "
                            "after them (predictions, scores) are not run either.",
                            "<th>reason</th><th>steps</th><th class='num'>steps not run after them</th>",
                            not_applicable_rows)
    skipped_rows = []
    for row in tables[SKIPPED].itertuples(index=False):
        if row.cause:
            more = f" and {row.roots - 1} more of its steps" if row.roots > 1 else ""
            cause = (f"<code>{esc(row.cause)}</code>{esc(more)} <span class='status-{esc(row.cause_status)}'>"
                     f"{esc(status_label(row.cause_status))}</span>")
        else:
            cause = esc(row.reason or "no reason recorded")
        skipped_rows.append(f"<tr><td>{cause}</td><td class='num'>{len(row.steps)}</td>"
                            f"<td>{esc(stage_counts(row.steps))}</td><td>{_step_list(row.steps)}</td></tr>")
    skipped = _block("Skipped", "Steps that could not run because a step they depend on failed, grouped by the "
                     "failing component.", "<th>cause</th><th class='num'>steps</th><th>stages</th><th>steps</th>",
                     skipped_rows)
    return f"""
<section id="failures">
{title}
<p class="lead">{esc(summary)} of {len(trace)} steps. One failing component never stops the others; its
scores are simply absent from the tables above.</p>
{not_installed}{failed}{not_applicable}{skipped}
</section>"""


def _component_card(config: dict, kind_html: str, extra: str = "", wide: bool = False) -> str:
    name = config.get("name", "?")
    shown_links = links(config.get("links"))
    refs = doi_links(config.get("references"))
    meta = []
    if refs:
        meta.append(f"<b>References</b> {refs}")
    if shown_links:
        meta.append(f"<b>Links</b> {shown_links}")
    if config.get("config_path"):
        meta.append(f"<b>Config</b> <code>{esc(config['config_path'])}</code>")
    description = paragraphs(config.get("description"))
    return f"""<article class="component{' wide' if wide else ''}" id="component-{esc(name)}">
<h4>{esc(config.get('label') or name)} <span class="id">{esc(name)}</span> {kind_html}</h4>
<p>{inline_code(config.get('summary') or '')}</p>
{f'<details><summary>Description</summary>{description}</details>' if description else ''}
{extra}
<p class="meta">{' · '.join(meta)}</p>
</article>"""


def _metric_rows(config: dict) -> str:
    rows = []
    for metric in (config.get("info") or {}).get("metrics") or []:
        if not isinstance(metric, dict):
            continue
        better = "higher" if metric.get("maximize") else "lower"
        refs = doi_links(metric.get("references"))
        description = paragraphs(metric.get("description"))
        rows.append(f"<tr><td><b>{esc(metric.get('label') or metric.get('name'))}</b><br>"
                    f"<span class='id'>{esc(metric.get('name'))}</span></td>"
                    f"<td>{inline_code(metric.get('summary') or '')}"
                    f"{f'<details><summary>Description</summary>{description}</details>' if description else ''}"
                    f"{f'<p class=meta>{refs}</p>' if refs else ''}</td>"
                    f"<td class='num'>[{esc(metric.get('min'))}, {esc(metric.get('max'))}]</td>"
                    f"<td>{better} is better</td></tr>")
    return ("<table class='data metrics'><thead><tr><th>metric id</th><th>what it measures</th>"
            "<th class='num'>range</th><th>direction</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>") \
        if rows else ""


def section_components(inputs: Inputs) -> str:
    if not inputs.method_configs and not inputs.metric_configs:
        return ""
    rank = {m: i for i, m in enumerate(inputs.method_order())}
    configs = sorted(inputs.method_configs, key=lambda c: (rank.get(c.get("name"), len(rank)), c.get("name", "")))
    methods = [c for c in configs if inputs.kind(c.get("name", "")) == "method"]
    controls = [c for c in configs if inputs.kind(c.get("name", "")) != "method"]
    method_cards = "".join(_component_card(c, kind_badge(inputs.kind(c.get("name", "")))) for c in methods)
    control_cards = "".join(_component_card(c, kind_badge(inputs.kind(c.get("name", "")))) for c in controls)
    metric_cards = "".join(_component_card(config, "", _metric_rows(config), wide=True)
                           for config in inputs.metric_configs)
    return f"""
<section id="components">
<h2>Components</h2>
<h3>Methods</h3><div class="components">{method_cards or "<p class='empty'>none</p>"}</div>
<h3>Controls and baselines</h3><div class="components">{control_cards or "<p class='empty'>none</p>"}</div>
<h3>Metrics</h3><div class="components">{metric_cards or "<p class='empty'>none</p>"}</div>
</section>"""
