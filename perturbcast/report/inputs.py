"""Everything the report reads, and the only module of the report that knows where it lies.

The results directory's file names, the step-log folders, the step statuses and how a skipped step names its
cause are all here, so that moving the report onto a module that owns the results layout is a change to this
file alone. It reads files only: never the engine or the runner, so the report is the same on the output of
`perturbcast benchmark` and of `nextflow run .` followed by `perturbcast aggregate`. A missing or unreadable
file reads as empty, so a half-finished run still gets a report.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import yaml

# The scoring vocabulary the report shows (the headline panel, its clamp and test level, the baseline).
from ..scoring import ALL_STRATA, BASELINE_METHOD, FAMILY_ALPHA, HEADLINE_CLAMP, HEADLINE_PANEL  # noqa: F401

RESULTS = "results.parquet"
SUMMARY = "summary.parquet"
HEADLINE = "headline.parquet"
PER_CONDITION = "results_per_condition.parquet"
TRACE = "trace.tsv"
TASK_INFO = "task_info.yaml"
DATASET_UNS = "dataset_uns.yaml"
METHOD_CONFIGS = "method_configs.yaml"
METRIC_CONFIGS = "metric_configs.yaml"
TRACE_COLUMNS = ["step", "stage", "component", "status", "cached", "exit_code", "wall_seconds", "peak_rss_mib",
                 "reason"]

OK, FAILED, NOT_APPLICABLE, SKIPPED = "ok", "failed", "not_applicable", "skipped"
NOT_DONE = (FAILED, NOT_APPLICABLE, SKIPPED)
STATUS_LABELS = {FAILED: "failed", NOT_APPLICABLE: "not applicable", SKIPPED: "skipped"}
# A step's log lies in the folder of its stage, under the step id without its stage prefix.
LOG_FOLDERS = {"dataset": "datasets", "split": "tasks", "predict": "predictions", "score": "scores"}
# The engine records a step that did not run because of another as this sentence; a structured `blocked_by`
# column in the trace, where there is one, is used instead.
UPSTREAM = re.compile(r"^upstream (\S+) (failed|skipped|not applicable|not_applicable)\s*$")


def _read_yaml(path: Path, default):
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return default
    return default if loaded is None else loaded


def _dicts(loaded) -> list[dict]:
    return [d for d in loaded if isinstance(d, dict)] if isinstance(loaded, list) else []


def _read_parquet(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    try:
        return pd.read_parquet(path, columns=columns)
    except (OSError, ValueError, KeyError, ImportError):
        return pd.DataFrame()


def read_trace(path: Path) -> pd.DataFrame:
    """trace.tsv with numbers as numbers and `cached` as a boolean (an empty table of its columns if absent)."""
    try:
        trace = pd.read_csv(path, sep="\t", keep_default_na=False, dtype=str)
    except (OSError, pd.errors.EmptyDataError, pd.errors.ParserError):
        return pd.DataFrame(columns=TRACE_COLUMNS)
    for column in ("wall_seconds", "peak_rss_mib"):
        if column in trace:
            trace[column] = pd.to_numeric(trace[column], errors="coerce")
    if "cached" in trace:
        trace["cached"] = trace["cached"].str.lower().isin(["true", "1", "yes"])
    return trace


def blocked_by(trace: pd.DataFrame) -> dict[str, str]:
    """For every step that did not run because of another step, that other step's id."""
    if trace.empty or "step" not in trace:
        return {}
    causes = {}
    structured = trace["blocked_by"] if "blocked_by" in trace else pd.Series([""] * len(trace), index=trace.index)
    for step, reason, cause in zip(trace["step"], trace.get("reason", [""] * len(trace)), structured):
        if isinstance(cause, str) and cause:
            causes[step] = cause
            continue
        match = UPSTREAM.match(str(reason or ""))
        if match:
            causes[step] = match.group(1)
    return causes


def is_simulated(uns: dict) -> bool:
    """A dataset made by a simulator: src/datasets/simulated_grn writes `simulation` (its arguments, which
    dataset_uns.yaml leaves out as a dict), organism `synthetic` and a 'simulated by ...' source."""
    return ("simulation" in uns or str(uns.get("dataset_organism") or "").lower() == "synthetic"
            or str(uns.get("dataset_url") or "").lower().startswith("simulated"))


class Inputs:
    """Everything the report shows, read from one results directory."""

    def __init__(self, results_dir: Path):
        self.dir = Path(results_dir)
        self.results = _read_parquet(self.dir / RESULTS)
        self.summary = _read_parquet(self.dir / SUMMARY)
        self.headline = _read_parquet(self.dir / HEADLINE)
        self.trace = read_trace(self.dir / TRACE)
        self.task_info = _read_yaml(self.dir / TASK_INFO, {})
        if not isinstance(self.task_info, dict):
            self.task_info = {}
        self.datasets = _dicts(_read_yaml(self.dir / DATASET_UNS, []))
        self.method_configs = _dicts(_read_yaml(self.dir / METHOD_CONFIGS, []))
        self.metric_configs = _dicts(_read_yaml(self.dir / METRIC_CONFIGS, []))
        self.methods = {c.get("name"): c for c in self.method_configs if c.get("name")}
        self.metrics = {}
        for component in self.metric_configs:
            for metric in ((component.get("info") or {}).get("metrics") or []):
                if isinstance(metric, dict) and metric.get("name"):
                    self.metrics[metric["name"]] = {**metric, "component": component.get("name")}
        if not self.results.empty:
            self.results["seed"] = self.results["seed"].astype(int)
        self._folds = None

    # -- files beside the tables

    def log_of(self, step: str, stage: str) -> Path | None:
        """The log of a step, relative to the results directory, if it is there."""
        folder = LOG_FOLDERS.get(stage)
        parts = str(step).split("/", 1)
        if folder is None or len(parts) != 2:
            return None
        relative = Path(folder) / parts[1] / "log.txt"
        return relative if (self.dir / relative).is_file() else None

    def log_tail(self, step: str, stage: str, lines: int = 12) -> tuple[Path | None, str]:
        relative = self.log_of(step, stage)
        if relative is None:
            return None, ""
        try:
            text = (self.dir / relative).read_text(errors="replace").splitlines()
        except OSError:
            return None, ""
        return relative, "\n".join(text[-lines:])

    def results_folds(self) -> int:
        """Folds per partition in these results (0 when the results carry no fold labels)."""
        if self._folds is None:
            folds = _read_parquet(self.dir / PER_CONDITION, columns=["fold"])
            self._folds = int(folds["fold"].nunique()) if "fold" in folds and len(folds) else 0
        return self._folds

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
        """Leaderboard order (best headline first), then methods that have results but no summary."""
        order = list(self.summary["method_id"]) if not self.summary.empty else []
        if not self.results.empty:
            order += sorted(set(self.results["method_id"]) - set(order))
        return order

    def metric_order(self) -> list[str]:
        present = list(dict.fromkeys(self.results["metric_id"])) if not self.results.empty else []
        declared = [m for m in self.metrics if m in present]
        return declared + [m for m in present if m not in declared]

    def dataset_uns(self, dataset_id: str) -> dict:
        for uns in self.datasets:
            if uns.get("dataset_id") == dataset_id:
                return uns
        return {}

    def replicate_kind(self, dataset_id: str) -> str:
        uns = self.dataset_uns(dataset_id)
        if not uns:
            return "unknown"
        report = uns.get("dataset_report") if isinstance(uns.get("dataset_report"), dict) else {}
        return str(uns.get("replicate_kind") or report.get("replicate_kind") or "random_half")

    def dataset_ids(self) -> list[str]:
        """The datasets of the run: those with a uns entry, then those only the results name."""
        known = [d.get("dataset_id") for d in self.datasets if d.get("dataset_id")]
        extra = sorted(set(self.results["dataset_id"]) - set(known)) if not self.results.empty else []
        return list(dict.fromkeys(known)) + extra
