"""`perturbcast report RESULTS_DIR`: the command line of the report."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..layout import RESULTS, TRACE
from .page import REPORT_NAME, write_report


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
    if not (results / RESULTS).is_file() and not (results / TRACE).is_file():
        print(f"[error] '{results}' holds neither results.parquet nor trace.tsv: run `perturbcast benchmark "
              f"--output {results}` or `perturbcast aggregate {results}` first", file=sys.stderr)
        return 1
    target = Path(args.output) if args.output else results / REPORT_NAME
    problem = _unreadable_results(results / RESULTS)
    if problem and target.exists():
        # a report without the scores would replace one that has them
        print(f"[error] {results / RESULTS}: {problem}; '{target}' is left as it was (rerun `perturbcast aggregate "
              f"{results}` to rebuild the tables)", file=sys.stderr)
        return 1
    try:
        path = write_report(results, Path(args.output) if args.output else None)
    except RuntimeError as error:
        print(f"[error] {error}", file=sys.stderr)
        return 1
    except OSError as error:  # e.g. a full disk: the previous report stays (write_report)
        print(f"[error] cannot write '{target}': {error.strerror or error}; the previous report "
              "is left as it was", file=sys.stderr)
        return 1
    print(f"report: {path}")
    return 0


def _unreadable_results(path: Path) -> str | None:
    """Why the results table cannot give the report its scores (absent or unreadable), or None."""
    import pyarrow.parquet as pq

    if not path.is_file():
        return "does not exist"
    try:
        pq.read_metadata(path)
    except Exception as error:  # pyarrow's errors for a truncated or foreign file have no common class
        return f"cannot be read as a parquet table ({type(error).__name__})"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="perturbcast")
    add_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)
