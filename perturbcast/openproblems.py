"""The OpenProblems result files written next to results.parquet.

`task_info.yaml`, `dataset_uns.yaml`, `method_configs.yaml`, `metric_configs.yaml`, `score_uns.yaml`:
the files the OpenProblems website reads, from the package config, the datasets, the component
configs and the score files of a results directory.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from . import layout
from .config import ComponentConfig, load_package_config
from .scoring import read_score, score_labels


def _plain(value):
    """numpy and pandas values as plain YAML scalars and lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _write(path: Path, payload):
    path.write_text(yaml.safe_dump(_plain(payload), sort_keys=False, allow_unicode=True))


def write_openproblems_files(root: Path, output: Path, components: list[ComponentConfig], score_paths: list[Path]):
    import anndata as ad

    package = load_package_config(root)
    _write(output / layout.TASK_INFO, {
        "task_id": package.get("name"), "task_name": package.get("label"), "task_summary": package.get("summary"),
        "task_description": package.get("description"), "version": package.get("version"),
        "references": package.get("references"), "links": package.get("links")})
    datasets = []
    for path in sorted(output.glob(layout.DATASET_GLOB)):
        adata = ad.read_h5ad(path, backed="r")
        datasets.append({k: v for k, v in adata.uns.items() if not isinstance(v, dict) or k == "dataset_report"})
        adata.file.close()
    _write(output / layout.DATASET_UNS, datasets)
    configs = {"method": [], "metric": []}
    for component in components:
        kind = "metric" if component.component_type == "metric" else "method" \
            if component.component_type in ("method", "control_method") else None
        if kind:
            configs[kind].append({**component.raw, "config_path": str(component.path.relative_to(root))})
    _write(output / layout.METHOD_CONFIGS, configs["method"])
    _write(output / layout.METRIC_CONFIGS, configs["metric"])
    scores = []
    for path in score_paths:
        uns = read_score(path)[1]
        labels = score_labels(Path(path), uns)
        scores.append({key: uns[key] for key in ("dataset_id", "task_id", "method_id", "metric_ids", "metric_values")
                       if key in uns} | {"split_seed": labels["seed"], "fold": labels["fold"]})
    _write(output / layout.SCORE_UNS, scores)
