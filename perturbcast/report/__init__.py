"""`report.html`: one self-contained file that a reader opens offline to see who wins, by how much, with what
certainty and at what cost.

The report reads only the files of a results directory (`results.parquet`, `summary.parquet`,
`headline.parquet`, `trace.tsv`, the OpenProblems yaml files and the step logs of failed steps); it never
imports the engine or the runner, so it works the same on the output of `perturbcast benchmark` and of
`nextflow run .` followed by `perturbcast aggregate`. Plots are Plotly figures described as plain JSON;
plotly.js is read from the installed `plotly` Python package and inlined once, so the file needs no network.

Modules: `inputs` (everything the report reads, through perturbcast.layout, which owns file names, log
folders, statuses and the trace's columns), `tables` (every number shown, as pandas tables), `plotting` and
`figures` (Plotly JSON), `markup` (escaping and formatting), `sections_scores` and `sections_run` (HTML),
`page` (the page, with report.css and report.js, package files), `command` (`perturbcast report`).
"""
from .command import add_command, main, report_command
from .inputs import Inputs
from .page import REPORT_NAME, render, write_report

__all__ = ["Inputs", "REPORT_NAME", "add_command", "main", "render", "report_command", "write_report"]
