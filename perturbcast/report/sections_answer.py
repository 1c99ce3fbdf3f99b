"""The answer first: the banner's one sentence, the verdict per dataset x task and the leaderboard with one headline
column per task (its fallback share beside it) and the overall last. The words and the choice of winners come
from perturbcast.leaderboard, which the terminal uses too."""
from __future__ import annotations

import pandas as pd

from .. import leaderboard as answer
from .inputs import BASELINE_METHOD, Inputs
from .markup import esc, finite, fmt
from .sections_scores import kind_badge, method_cell
from .tables import headline_slices, leaderboard_table


def _slices(inputs: Inputs) -> pd.DataFrame:
    return answer.with_verdict_columns(inputs.headline)


def banner(inputs: Inputs) -> str:
    """The header's sentence: the best method where one beats the training mean beyond its interval, else that none
    does; and every slice that is not ranked, with its reason."""
    summary = inputs.summary
    if summary.empty:
        return ""
    verdicts = answer.verdicts(inputs.headline)
    unranked = [v for v in verdicts if not v["ranked"]]
    best = answer.best_method(summary)
    methods = summary[[inputs.kind(m, t) == "method" for m, t in zip(summary["method_id"], summary["method_type"])]]
    if best is not None:
        beat = int((methods["calibrated_low"].astype(float) > 0).sum())
        text = (f'Best method: <b>{esc(inputs.method_label(best["method_id"]))}</b> <span class="id">'
                f'{esc(best["method_id"])}</span> with a headline score of <b>{fmt(best["calibrated"], 2)}</b> '
                f'[{fmt(best["calibrated_low"], 2)}, {fmt(best["calibrated_high"], 2)}]. {beat} of {len(methods)} '
                f'methods beat the training mean on average (interval above 0).')
    elif verdicts and len(unranked) == len(verdicts):
        text = f"<b>{answer.NOTHING_RANKED[0].upper() + answer.NOTHING_RANKED[1:]}</b>."
    else:
        text = (f"<b>{answer.NO_WINNER[0].upper() + answer.NO_WINNER[1:]}</b>"
                + (" on the slices that are ranked" if unranked and len(unranked) < len(verdicts) else "") + ".")
    for v in unranked:
        text += (f'<br><span class="notranked">{esc(v["dataset_id"])} · {esc(v["task_id"])}: '
                 f'{esc(v["not_ranked"])}</span>')
    return f'<p class="headline">{text}</p>'


def section_verdict(inputs: Inputs) -> str:
    """Per dataset x task: which methods beat train_mean beyond their interval, by how much, on n conditions."""
    verdicts = answer.verdicts(inputs.headline)
    if not verdicts:
        return ""
    rows = []
    for v in verdicts:
        if not v["ranked"]:
            said = f"<span class='notranked'>{esc(v['not_ranked'])}</span>"
        elif not v["winners"]:
            said = f"<span class='nowinner'>{esc(answer.NO_WINNER)}</span>"
        else:
            said = " · ".join(f"{method_cell(inputs, m)} <b>+{fmt(h, 2)}</b> <span class='interval'>[{fmt(lo, 2)}, "
                              f"{fmt(hi, 2)}]</span>" for m, h, lo, hi in v["winners"])
        proof = f"<br><span class='id'>{esc(v['evidence'])}</span>" if v["evidence"] and v["ranked"] else ""
        rows.append(f"<tr><td><a href='#dataset-{esc(v['dataset_id'])}'>{esc(v['dataset_id'])}</a><br>"
                    f"<span class='id'>{esc(v['task_id'])}</span></td><td class='num'>{v['n_conditions'] or '–'}</td>"
                    f"<td>{said}{proof}</td></tr>")
    return f"""
<section id="verdict" class="answer">
<h2>Verdict</h2>
<div class="scroll"><table class="data verdict"><thead><tr><th>dataset · task</th><th class="num">n</th>
<th>methods that beat <code>train_mean</code> beyond their 95% interval (headline gain [interval])</th></tr></thead>
<tbody>{''.join(rows)}</tbody></table></div>
<details><summary>How the verdict is made</summary><p>A method beats the training mean on a dataset × task when the
lower end of the paired bootstrap 95% interval of its headline there is above 0 (0 = <code>train_mean</code>,
1 = the replicate ceiling); <i>n</i> is the number of test conditions, all folds pooled. A slice is not ranked
when its scores cannot tell methods apart (too few calibrated metrics, no perturbation with a reproducible effect,
null-like data); its scores stay in the tables but count nowhere.</p></details>
</section>"""


def _task_cell(inputs: Inputs, rows: pd.DataFrame) -> str:
    """One method on one task: its headline (with the interval when one dataset has the task), the share of
    conditions where it fell back to the training mean, or why there is no number."""
    if rows.empty:
        return "<td class='num'>–</td>"
    ranked = rows[rows["ranked"]]
    if ranked.empty:
        return "<td class='num'><span class='notranked'>not ranked</span></td>"
    status = "; ".join(sorted({s for s in ranked["status"] if s}))
    values = ranked["headline"].astype(float)
    if not values.notna().any():
        return f"<td class='num'><span class='note'>{esc(status or 'no score')}</span></td>"
    text = f"<b>{fmt(values.mean(), 2)}</b>"
    if len(ranked) == 1 and finite(ranked["headline_low"].iloc[0]):
        text += (f"<br><span class='interval'>[{fmt(ranked['headline_low'].iloc[0], 2)}, "
                 f"{fmt(ranked['headline_high'].iloc[0], 2)}]</span>")
    share = rows["fallback_share"].astype(float)
    if share.notna().any() and share.mean() > 0:
        text += f"<br><span class='fallback'>falls back on {round(100 * share.mean()):d}%</span>"
    return f"<td class='num'>{text}</td>"


def section_leaderboard(inputs: Inputs, figures: dict, cost: pd.DataFrame) -> str:
    summary = inputs.summary
    if summary.empty:
        return ('<section id="leaderboard"><h2>Leaderboard</h2><p class="empty">No scores yet: results.parquet '
                'or summary.parquet is missing or empty (see the failures below).</p></section>')
    slices = _slices(inputs)
    tasks = answer.task_order(slices["task_id"]) if not slices.empty else []
    board = leaderboard_table(summary, inputs.results, inputs.metric_order(), cost)
    task_heads = "".join(f"<th class='num'>{esc(t)}<br><span class='dir'>headline</span></th>" for t in tasks)
    rows = []
    for row in board.to_dict("records"):
        method = row["method_id"]
        kind = inputs.kind(method, row["method_type"])
        cells = "".join(_task_cell(inputs, slices[(slices["method_id"] == method) & (slices["task_id"] == t)])
                        for t in tasks)
        interval = f"[{fmt(row['calibrated_low'], 2)}, {fmt(row['calibrated_high'], 2)}]" \
            if finite(row["calibrated_low"]) else ""
        outcome = ("<span class='id'>reference</span>" if method == BASELINE_METHOD else
                   f"<span class='win'>{row['wins']}</span> / <span class='tie'>{row['ties']}</span> / "
                   f"<span class='loss'>{row['losses']}</span>")
        wall = fmt(row["median_wall"], 1) + " s" if finite(row["median_wall"]) else "–"
        rows.append(f"<tr class='{'ctrl' if kind != 'method' else ''}'><td class='num rank'>{row['rank']}</td>"
                    f"<td class='who'>{method_cell(inputs, method, True)} {kind_badge(kind)}</td>{cells}"
                    f"<td class='num score'><b>{fmt(row['calibrated'], 3)}</b><br><span class='interval'>{interval}"
                    f"</span></td><td class='num'>{outcome}</td><td class='num'>{wall}</td></tr>")
    plot = '<div id="fig-leaderboard" class="plot"></div>' if "fig-leaderboard" in figures else ""
    return f"""
<section id="leaderboard">
<h2>Leaderboard</h2>
<div class="scroll board-scroll"><table class="data board">
<thead><tr><th>#</th><th>method</th>{task_heads}<th class="num">overall<br><span class="dir">95% interval</span></th>
<th class="num">W / T / L<br><span class="dir">vs train_mean</span></th>
<th class="num">time<br><span class="dir">median / step</span></th></tr></thead>
<tbody>{''.join(rows)}</tbody></table></div>
<details><summary>What the columns mean</summary><p class="lead">Per task: the headline (the panel's clamped
calibrated scores, averaged over partitions and the task's ranked datasets) with its bootstrap 95% interval where one
dataset has the task; "falls back on N%": the share of test conditions where the method returned the training mean
instead of a forecast. Overall: over every ranked dataset × task. <b>W / T / L</b> counts the dataset × task ×
partition × panel-metric combinations where the method is significantly better than / indistinguishable from /
worse than <code>train_mean</code> (Holm-corrected). Controls and baselines are shaded: they frame the scale, they do
not compete.</p></details>
{_raw_means(inputs, board)}
{_headline_slices(inputs)}
{plot}
</section>"""


def _raw_means(inputs: Inputs, board: pd.DataFrame) -> str:
    metrics = inputs.metric_order()
    if board.empty or not metrics:
        return ""
    heads = "".join(
        f"<th class='num' title='{esc(inputs.metrics.get(m, {}).get('summary', ''))}'>{esc(m).replace('_', '_<wbr>')}"
        f"<br><span class='dir'>{'' if inputs.maximize(m) is None else '↑ higher better' if inputs.maximize(m) else '↓ lower better'}</span></th>"
        for m in metrics)
    spread = bool(board["partition_spread"].notna().any())
    rows = "".join(f"<tr><td class='who'>{method_cell(inputs, r['method_id'])}</td><td class='num'>{r['n_scores']}</td>"
                   + (f"<td class='num'>{fmt(r['partition_spread'], 2)}</td>" if spread else "")
                   + "".join(f"<td class='num'>{fmt(r[m], 3)}</td>" for m in metrics) + "</tr>"
                   for r in board.to_dict("records"))
    spread_head = "<th class='num'>spread<br><span class='dir'>over partitions</span></th>" if spread else ""
    return (f"<details><summary>Raw mean of every metric (all strata) and the number of calibrated scores</summary>"
            f"<div class='scroll'><table class='data'><thead><tr><th>method</th><th class='num'>scores</th>{spread_head}"
            f"{heads}</tr></thead><tbody>{rows}</tbody></table></div></details>")


def _headline_slices(inputs: Inputs) -> str:
    """Headline per dataset x task: n test conditions, partitions, the score with its interval."""
    columns, table = headline_slices(inputs.headline, inputs.method_order())
    if table.empty:
        return ""
    head = "".join(f"<th class='num'>{esc(c.dataset_id)}<br><span class='id'>{esc(c.task_id)}</span><br>"
                   f"<span class='dir'>n = {int(c.n_conditions)}, {int(c.n_partitions)} partition(s)</span></th>"
                   for c in columns.itertuples(index=False))
    rows = []
    for method, mine in table.groupby("method_id", sort=False):
        cells = []
        for d, t in zip(columns["dataset_id"], columns["task_id"]):
            hit = mine[(mine["dataset_id"] == d) & (mine["task_id"] == t)]
            if hit.empty:
                cells.append("<td class='num'>–</td>")
                continue
            h = hit.iloc[0]
            spread = (f"<br><span class='interval'>partitions {fmt(h['partition_min'], 2)} … {fmt(h['partition_max'], 2)}</span>"
                      if int(h["n_partitions"]) > 1 else "")
            cells.append(f"<td class='num'>{fmt(h['headline'], 2)}<br><span class='interval'>[{fmt(h['headline_low'], 2)}, "
                         f"{fmt(h['headline_high'], 2)}]</span>{spread}</td>")
        rows.append(f"<tr><td class='who'>{method_cell(inputs, method, False)}</td>{''.join(cells)}</tr>")
    return (f"<details><summary>Headline per dataset × task (n = test conditions, all folds pooled)</summary>"
            f"<div class='scroll'><table class='data compact'><thead><tr><th>method</th>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div></details>")
