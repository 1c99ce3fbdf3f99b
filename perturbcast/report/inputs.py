"""Everything the report reads, and the only module of the report that knows where it lies.

File names, step-log folders, statuses and the trace's columns come from perturbcast.layout, which owns
the results layout; this module reads them for the report's sections. It reads files only: never the engine
or the runner, so the report is the same on the output of `perturbcast benchmark` and of `nextflow run .`
followed by `perturbcast aggregate`. A missing or unreadable file reads as empty, so a half-finished run
still gets a report.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from .. import layout
from ..layout import Status, vocabulary
# The scoring vocabulary the report shows (the headline panel, its clamp and test level, the baseline).
from ..scoring import ALL_STRATA, BASELINE_METHOD, FAMILY_ALPHA, HEADLINE_CLAMP, HEADLINE_PANEL  # noqa: F401

TRACE_COLUMNS = layout.TRACE_COLUMNS
OK, FAILED, NOT_APPLICABLE, SKIPPED = Status.OK, Status.FAILED, Status.NOT_APPLICABLE, Status.SKIPPED
NOT_INSTALLED = Status.NOT_INSTALLED
# The statuses the report's failures section lists, and how it names each.
NOT_DONE = (FAILED, NOT_APPLICABLE, NOT_INSTALLED, SKIPPED)
STATUS_LABELS = {status: status.label for status in NOT_DONE}


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
    """trace.tsv with numbers as numbers and `cached` as a boolean (an empty table of its columns if absent;
    a column an older trace lacks reads as empty)."""
    try:
        trace = pd.read_csv(path, sep="\t", keep_default_na=False, dtype=str)
    except (OSError, pd.errors.EmptyDataError, pd.errors.ParserError):
        return pd.DataFrame(columns=TRACE_COLUMNS)
    for column in ("wall_seconds", "peak_rss_mib"):
        if column in trace:
            trace[column] = pd.to_numeric(trace[column], errors="coerce")
    if "cached" in trace:
        trace["cached"] = trace["cached"].str.lower().isin(["true", "1", "yes"])
    for column in TRACE_COLUMNS:
        if column not in trace:
            trace[column] = ""
    return trace


def blocked_by(trace: pd.DataFrame) -> dict[str, str]:
    """For every step that did not run because of another step, that other step's id (the trace's
    structured `blocked_by` column)."""
    if trace.empty or "blocked_by" not in trace:
        return {}
    return {step: cause for step, cause in zip(trace["step"], trace["blocked_by"]) if isinstance(cause, str) and cause}


def is_simulated(uns: dict) -> bool:
    """A dataset made by a simulator: src/datasets/simulated_grn writes `simulation` (its arguments, which
    dataset_uns.yaml leaves out as a dict), organism `synthetic` and a 'simulated by ...' source."""
    return ("simulation" in uns or str(uns.get("dataset_organism") or "").lower() == "synthetic"
            or str(uns.get("dataset_url") or "").lower().startswith("simulated"))


class Inputs:
    """Everything the report shows, read from one results directory."""

    def __init__(self, results_dir: Path):
        self.dir = Path(results_dir)
        self.results = _read_parquet(self.dir / layout.RESULTS)
        self.summary = _read_parquet(self.dir / layout.SUMMARY)
        self.headline = _read_parquet(self.dir / layout.HEADLINE)
        self.prior_effects = _read_parquet(self.dir / layout.PRIOR_EFFECTS)
        self.trace = read_trace(self.dir / layout.TRACE)
        self.task_info = _read_yaml(self.dir / layout.TASK_INFO, {})
        if not isinstance(self.task_info, dict):
            self.task_info = {}
        self.datasets = _dicts(_read_yaml(self.dir / layout.DATASET_UNS, []))
        self.method_configs = _dicts(_read_yaml(self.dir / layout.METHOD_CONFIGS, []))
        self.metric_configs = _dicts(_read_yaml(self.dir / layout.METRIC_CONFIGS, []))
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

    def prior_coverage(self) -> list[dict]:
        """Per prior file of the run (priors/.../prior.h5ad): its step key and the coverage counts in its uns."""
        import h5py

        keys = ("prior_id", "n_targets", "n_targets_covered", "n_genes", "n_genes_covered", "n_universe_genes")
        rows = []
        folder = self.dir / layout.STAGE_FOLDERS[layout.PRIOR]
        for path in sorted(folder.glob(f"**/{layout.STAGE_OUTPUTS[layout.PRIOR]['output']}")):
            try:
                with h5py.File(path, "r") as handle:
                    uns = handle.get("uns")
                    values = {k: uns[k][()] for k in keys if uns is not None and k in uns}
            except (OSError, KeyError):
                continue
            values = {k: v.decode() if isinstance(v, bytes) else (v.item() if hasattr(v, "item") else v)
                      for k, v in values.items()}
            rows.append({"step": path.parent.relative_to(folder).as_posix(), **values})
        return rows

    def log_of(self, step: str, stage: str | None = None) -> Path | None:
        """The log of a step, relative to the results directory, if it is there (`stage` is implied by the id)."""
        relative = layout.log_of(step)
        return relative if relative is not None and (self.dir / relative).is_file() else None

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
            folds = _read_parquet(self.dir / layout.PER_CONDITION, columns=["fold"])
            self._folds = int(folds["fold"].nunique()) if "fold" in folds and len(folds) else 0
        return self._folds

    # -- labels

    def kind(self, method_id: str, method_type: str | None = None) -> str:
        method_id = vocabulary.method_and_prior(method_id)[0]
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
        """A method's label; a variant run with a prior reads `<label> + <prior>`."""
        method, prior = vocabulary.method_and_prior(method_id)
        label = str(self.methods.get(method, {}).get("label") or method)
        return label if prior == vocabulary.NO_PRIOR else f"{label} + {prior}"

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
