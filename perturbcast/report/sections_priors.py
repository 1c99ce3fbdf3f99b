"""The report's priors section: what each prior did to each method that read it (perturbcast.prior_effects),
and how much of each dataset's targets each prior file covered."""
from __future__ import annotations

from ..prior_effects import NOT_RANKED, UNCLEAR
from .inputs import Inputs
from .markup import esc, fmt


def _share(value) -> str:
    return "?" if value != value else f"{100 * value:.0f}%"


def section_priors(inputs: Inputs) -> str:
    effects, coverage = inputs.prior_effects, inputs.prior_coverage()
    if effects.empty and not coverage:
        return ""
    parts = ['<section id="priors"><h2>Priors</h2><p>Each method that reads a prior ran alone and as '
             '<code>&lt;method&gt;+&lt;prior&gt;</code> on the same splits. A cell is the variant minus the method '
             'alone, paired over the same test conditions (averaged over partitions), oriented so that &gt; 0 means '
             'the prior helps, with its 95% bootstrap interval over conditions; <b>helps</b> / <b>hurts</b> only '
             'where the interval excludes 0, and only on a slice the verdicts rank. <i>fell back</i>: the share of test conditions where the method '
             'returned the training mean (a target it could not place), alone → with the prior.</p>']
    for (dataset, task), part in effects.groupby(["dataset_id", "task_id"], sort=True):
        metrics = list(dict.fromkeys(part["metric_id"]))
        head = "".join(f"<th>{esc(inputs.metric_label(m))}</th>" for m in metrics)
        rows = []
        for variant, mine in part.groupby("variant_id", sort=True):
            first = mine.iloc[0]
            cells = []
            for metric in metrics:
                row = mine[mine["metric_id"] == metric]
                if row.empty:
                    cells.append("<td>–</td>")
                    continue
                r = row.iloc[0]
                tag = ("" if r["effect"] == UNCLEAR else " (not ranked)" if r["effect"] == NOT_RANKED
                       else f' <b>{esc(r["effect"])}</b>')
                cells.append(f'<td>{fmt(r["difference"])} [{fmt(r["difference_low"])}, {fmt(r["difference_high"])}]{tag}</td>')
            rows.append(f'<tr><td>{esc(inputs.method_label(variant))} <span class="id">{esc(variant)}</span></td>'
                        f'<td>{int(mine["n_conditions"].max())}</td><td>{_share(first["method_fallback_share"])} → '
                        f'{_share(first["variant_fallback_share"])}</td>{"".join(cells)}</tr>')
        parts.append(f"<h3>{esc(dataset)} / {esc(task)}</h3><div class='scroll'><table><thead><tr><th>variant</th>"
                     f"<th>n</th><th>fell back</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>")
    if coverage:
        rows = "".join(
            f"<tr><td><code>{esc(c['step'])}</code></td><td>{esc(c.get('prior_id', '?'))}</td>"
            f"<td>{esc(c.get('n_targets_covered', '?'))} of {esc(c.get('n_targets', '?'))}</td>"
            f"<td>{esc(c.get('n_genes_covered', c.get('n_universe_genes', '?')))}</td></tr>" for c in coverage)
        parts.append("<h3>Coverage of each prior file</h3><div class='scroll'><table><thead><tr><th>prior step</th>"
                     "<th>prior id</th><th>perturbation targets covered</th><th>genes</th></tr></thead>"
                     f"<tbody>{rows}</tbody></table></div>")
    return "".join(parts) + "</section>"
