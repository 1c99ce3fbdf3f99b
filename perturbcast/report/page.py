"""The page itself: sections, navigation and footer put together with the style sheet, the script (package
files report.css and report.js) and plotly.js, into one file written atomically."""
from __future__ import annotations

import datetime
from importlib import resources
from pathlib import Path

from .. import layout
from .figures import cost_figure, heatmap_figure, leaderboard_figure
from .inputs import Inputs
from .markup import doi_links, esc, json_for_script, links
from .sections_run import section_components, section_cost, section_datasets, section_failures
from .sections_answer import banner, section_leaderboard, section_verdict
from .sections_priors import section_priors
from .sections_scores import section_calibration, section_details, section_header, section_heatmap, slices
from .tables import cost_table

REPORT_NAME = layout.REPORT
NAVIGATION = [("verdict", "Verdict"), ("leaderboard", "Leaderboard"), ("heatmap", "Datasets × tasks"),
              ("priors", "Priors"), ("calibration", "How to read"),
              ("details", "Per stratum · raw · vs train_mean"), ("datasets", "Datasets"), ("cost", "Cost"),
              ("failures", "Failures"), ("components", "Components")]


def static(name: str) -> str:
    """A file shipped inside this package (report.css, report.js)."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def plotly_js() -> tuple[str, str]:
    """plotly.js from the installed `plotly` package (its version) — inlined so the page needs no network."""
    try:
        from plotly.offline import get_plotlyjs
    except ImportError as error:
        raise RuntimeError("the report needs the `plotly` Python package for its plotting library "
                           "(pip install plotly)") from error
    import plotly
    return get_plotlyjs(), getattr(plotly, "__version__", "?")


def _footer(inputs: Inputs, plotly_version: str) -> str:
    info = inputs.task_info
    generated = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    try:
        from importlib.metadata import version as package_version
        own = package_version("perturbcast")
    except Exception:  # noqa: BLE001 - the version is only a footnote
        own = "?"
    task_links = links(info.get("links"))
    task_refs = doi_links(info.get("references"))
    return (f"<footer class='wrap'>Task <code>{esc(info.get('task_id') or '?')}</code> version "
            f"{esc(info.get('version') or '?')}{' · ' + task_links if task_links else ''}"
            f"{' · references ' + task_refs if task_refs else ''}<br>Generated {esc(generated)} by perturbcast "
            f"{esc(own)} from <code>{esc(inputs.dir)}</code>; plots by plotly.js (plotly {esc(plotly_version)}), "
            f"embedded, so this file works offline.</footer>")


def render(inputs: Inputs, output: Path) -> str:
    """The whole page as text; `output` is where it will lie (links to step logs are relative to it)."""
    figures = {}
    for key, make in (("fig-leaderboard", leaderboard_figure), ("fig-heatmap", heatmap_figure),
                      ("fig-heatmap-strata", lambda i: heatmap_figure(i, by_stratum=True))):
        figure = make(inputs)
        if figure is not None:
            figures[key] = figure
    cost = cost_table(inputs.trace, inputs.method_order())
    figure = cost_figure(inputs, cost)
    if figure is not None:
        figures["fig-cost"] = figure
    options, slice_figures, slice_tables = slices(inputs)
    body = "".join([
        section_verdict(inputs),
        section_leaderboard(inputs, figures, cost),
        section_heatmap(inputs, figures),
        section_priors(inputs),
        section_calibration(inputs),
        section_details(options),
        section_datasets(inputs),
        section_cost(inputs, figures, cost),
        section_failures(inputs, output),
        section_components(inputs),
    ])
    nav = "".join(f'<a href="#{i}">{esc(label)}</a>' for i, label in NAVIGATION if f'id="{i}"' in body)
    js, version = plotly_js()
    payload = json_for_script({"figures": figures, "slices": slice_figures, "slice_tables": slice_tables})
    title = f"{inputs.task_info.get('task_name') or 'perturbcast'} — benchmark report"
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{esc(title)}</title><style>{static('report.css')}</style></head><body>"
            f"{section_header(inputs, banner(inputs))}<nav><div class='wrap'>{nav}</div></nav><main class='wrap'>{body}</main>"
            f"{_footer(inputs, version)}"
            f"<script>{js}</script>"
            f"<script type='application/json' id='report-data'>{payload}</script>"
            f"<script>{static('report.js')}</script></body></html>\n")


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
    try:
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(output)
    finally:  # a full disk leaves the previous report, not a half-written one beside it
        temporary.unlink(missing_ok=True)
    return output
