"""What a results folder was made with, and reusing another folder's finished steps.

A run records its selection in `<results>/selection.json` (layout.SELECTION_RECORD). A folder made with other
datasets or dataset arguments is never reused: without --output the run picks a folder of its own, with --output it
refuses (one `[error]` line). `--compare DIR` runs the selection of DIR plus the given methods in a folder of its
own and takes every step whose cache key (component, arguments, inputs' keys) is the same in DIR from there, so only
the new steps run and the tables hold every method.
"""
from __future__ import annotations

import csv
import hashlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path

from . import layout
from .steps import Selection, Step, StepRecord


def selection_record(selection: Selection) -> dict:
    """The selection as JSON-able data (what selection.json holds)."""
    return json.loads(json.dumps(asdict(selection), default=str))


def data_identity(record: dict) -> dict:
    """The part of a selection that makes the datasets (ids, own files and loader arguments): results made with
    another one are about other data."""
    return {key: record.get(key) or default for key, default in
            (("datasets", None), ("extra_datasets", []), ("dataset_arguments", {}))}


def recorded_selection(folder: Path) -> dict | None:
    try:
        return json.loads((Path(folder) / layout.SELECTION_RECORD).read_text())
    except (OSError, ValueError):
        return None


def folder_for(output: Path, record: dict, chosen: bool) -> tuple[Path, str | None]:
    """(the folder to write, a problem) for a run with this selection record. A folder whose recorded data
    differs is refused when `chosen` (the user named it with --output); a default folder name is made unique
    with 8 hex digits of the data's hash instead."""
    previous = recorded_selection(output)
    if previous is None or data_identity(previous) == data_identity(record):
        return output, None
    if chosen:
        return output, (f"--output '{output}' holds results made with other datasets or dataset arguments "
                        f"({_describe(data_identity(previous))}); choose another --output")
    digest = hashlib.sha256(json.dumps(data_identity(record), sort_keys=True).encode()).hexdigest()[:8]
    return Path(f"{output}-{digest}"), None


def _describe(identity: dict) -> str:
    parts = [f"datasets {', '.join(identity['datasets'] or ['default'])}"]
    for extra in identity["extra_datasets"]:
        arguments = {k: v for k, v in extra.get("arguments", {}).items() if k not in ("input", "dataset_id")}
        parts.append(f"{extra.get('id')}: {json.dumps(arguments, sort_keys=True)}")
    return "; ".join(parts)


def write_selection(output: Path, record: dict):
    path = Path(output) / layout.SELECTION_RECORD
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(record, indent=1, sort_keys=True))
    partial.replace(path)


def methods_of(folder: Path) -> list[str]:
    """The methods and controls whose prediction steps a results folder's trace.tsv records."""
    try:
        with open(Path(folder) / layout.TRACE, newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
    except OSError:
        return []
    return sorted({row["component"] for row in rows if row.get("stage") == layout.PREDICT})


def compared_selection(folder: Path, methods: list[str]) -> tuple[Selection | None, str | None]:
    """The selection of the results folder `folder` (its selection.json; its trace.tsv for the methods) with
    `methods` added, or (None, a problem)."""
    folder = Path(folder)
    record = recorded_selection(folder)
    ran = methods_of(folder)
    if record is None or not ran:
        return None, (f"--compare '{folder}': expected a results folder of `perturbcast benchmark` with its "
                      f"{layout.SELECTION_RECORD} and {layout.TRACE}")
    fields = {k: v for k, v in record.items() if k in Selection.__dataclass_fields__}
    selection = Selection(**fields)
    selection.methods = sorted(set(ran) | set(methods))
    return selection, None


def compare_folder(folder: Path, methods: list[str]) -> Path:
    """The results folder of a --compare run without --output: `<folder>-with_<methods>`."""
    return layout.results_folder({"with": methods}, default=Path(folder))


def reuser(source: Path, output: Path):
    """A function (step, cache key) -> its record taken from `source`, or None: where `source` holds the same
    step (same folder below the results folder) finished with the same cache key and intact outputs, its files
    are copied into the step's folder (copies, never links: a later rerun overwrites its own files only)."""
    from .engine_run import _cached_record

    source, output = Path(source).resolve(), Path(output).resolve()

    def reuse(step: Step, key: str) -> StepRecord | None:
        try:
            relative = Path(step.directory).resolve().relative_to(output)
        except ValueError:
            return None
        origin = source / relative
        try:
            stored = json.loads((origin / layout.STEP_RECORD).read_text())
        except (OSError, ValueError):
            return None
        if stored.get("cache_key") != key:
            return None
        Path(step.directory).mkdir(parents=True, exist_ok=True)
        for file in origin.iterdir():
            if file.is_file():
                shutil.copy2(file, Path(step.directory) / file.name)
        return _cached_record(step, key)

    return reuse
