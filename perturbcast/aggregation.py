"""From the published step folders to the result tables and the leaderboard text: what `perturbcast benchmark`
does after its steps and `perturbcast aggregate` does after a Nextflow run (both engines publish one layout)."""
from __future__ import annotations

from pathlib import Path

from . import layout, leaderboard, prior_effects, scoring
from .config import discover_components
from .disk_space import replaced_atomically
from .openproblems import write_openproblems_files


def aggregate_results(root: Path, output: Path, only: set | None = None, n_resamples: int = 1000) -> str:
    """The tables of `output` (from its score files; `only`: these alone), the OpenProblems files and the
    leaderboard (printed with the priors' effects when there are any); returns the leaderboard text."""
    components = discover_components(root, errors=[])  # a broken config was reported when the run was planned
    method_types = {c.name: c.component_type for c in components}
    declared = [m for c in components if c.component_type == "metric" for m in c.info.get("metrics") or [] if "name" in m]
    maximize = {m["name"]: bool(m.get("maximize")) for m in declared}
    no_outcome = {m["name"] for m in declared if m.get("outcome") is False}  # see the metric's outcome_reason
    per_condition = scoring.mark_fallbacks(scoring.per_condition_table(output, method_types, only), output)
    results, summary = scoring.results_table(per_condition, n_resamples=n_resamples, maximize=maximize,
                                             evidence=scoring.dataset_evidence(output), no_outcome=no_outcome)
    slices = summary.attrs.get("by_slice")
    unranked = set() if slices is None or slices.empty else {
        (r.dataset_id, r.task_id) for r in slices[["dataset_id", "task_id", "ranked"]].itertuples() if not r.ranked}
    effects = prior_effects.prior_effects(per_condition, maximize, n_resamples=n_resamples, unranked=unranked)
    scoring.write_results(per_condition, results, summary, output, effects)
    paths = [path for path in scoring.score_files(output) if only is None or path.resolve() in only]
    write_openproblems_files(root, output, components, paths)
    text = leaderboard.text(summary, scoring.HEADLINE_PANEL)
    if not effects.empty:
        text += "\n\n" + prior_effects.text(effects, layout.LINE_WIDTH)
    with replaced_atomically(output / layout.LEADERBOARD) as temporary:
        temporary.write_text(text.lstrip("\n") + "\n")
    return text
