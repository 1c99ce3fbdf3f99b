"""A benchmark spec file: one YAML that says what to run, for `perturbcast benchmark --spec FILE` and, as
the same file, `nextflow run . -params-file FILE`.

    datasets:                       # ids of the loaders' info.datasets, with argument overrides, or own files
      - norman2019_devel
      - id: datlinger2017
        arguments: {n_top_genes: 1000}
      - file: data/my_screen.h5ad    # relative to this file; see perturbcast/userdata.py
        id: my_screen
        arguments: {perturbation_column: target_gene}
    tasks: [unseen_perturbation]
    methods: [linear_baseline, train_mean]
    metrics: delta_error,delta_correlation   # lists or Nextflow's comma-separated strings
    priors: [go_embedding]           # methods that read a prior also run with each of these
    seeds: [0, 1]
    n_folds: 5
    folds: [0]

The keys are the `params` of nextflow.config (read from it, so the two cannot drift apart); the keys the
local engine uses are type-checked here, the Nextflow-only ones (executors, images, resources) are kept
under `nextflow`. Errors are one line (SpecError) naming the file, the key and what was expected.
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml

LIST_KEYS = ("tasks", "methods", "metrics", "priors", "exclude_datasets", "exclude_tasks", "exclude_methods", "exclude_metrics")
ENGINE_KEYS = {"datasets", *LIST_KEYS, "seeds", "n_folds", "folds", "use_test_arguments", "dry_run", "publish_dir"}
DATASET_KEYS = {"id", "arguments", "file"}
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class SpecError(ValueError):
    """A spec file that cannot be used; str() is one line."""


def nextflow_params(root: Path | None) -> set:
    """Top-level names in nextflow.config's `params { }` block."""
    if root is None or not (Path(root) / "nextflow.config").is_file():
        return set()
    names, depth, inside = set(), 0, False
    for line in (Path(root) / "nextflow.config").read_text().splitlines():
        code = line.split("//", 1)[0]
        if not inside:
            if re.match(r"^\s*params\s*\{", code):
                inside, depth = True, 1
            continue
        if depth == 1:
            match = re.match(r"^\s*(\w+)\s*(=|\{)", code)
            if match:
                names.add(match.group(1))
        depth += code.count("{") - code.count("}")
        if depth <= 0:
            break
    return names


def _names(where: str, value) -> list[str]:
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = [v.strip() for v in value if v.strip()]
    else:
        raise SpecError(f"{where}: expected a list of ids or a comma-separated string, got {type(value).__name__}")
    if not items:
        raise SpecError(f"{where}: empty; leave the key out to mean all")
    return items


def _integers(where: str, value, low: int = 0) -> list[int]:
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else [value]
    numbers = []
    for item in items:
        if isinstance(item, bool) or not (isinstance(item, int) or (isinstance(item, str) and item.strip().isdigit())):
            raise SpecError(f"{where}: expected integers (a list or comma-separated), got {item!r}")
        if int(item) < low:
            raise SpecError(f"{where}: expected integers >= {low}, got {item}")
        numbers.append(int(item))
    return numbers


def _check_loader_arguments(where: str, dataset_id: str, arguments: dict, root: Path | None):
    """An argument the dataset's loader does not take is refused here, not warned about in a step log."""
    if root is None or not arguments:
        return
    from .config import discover_components
    from .engine import dataset_instances

    for loader in discover_components(root, errors=[]):
        if loader.component_type == "dataset_loader" and dataset_id in {d["id"] for d in dataset_instances(loader)}:
            unknown = sorted(k for k in arguments if loader.argument(str(k)) is None)
            if unknown:
                known = sorted(a.plain_name for a in loader.arguments if a.direction == "input" and a.type != "file")
                raise SpecError(f"{where}.arguments.{unknown[0]}: not an argument of the loader {loader.name} of "
                                f"'{dataset_id}'; expected some of {', '.join(known)}")
            return


class _UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """A YAML loader that refuses a key given twice in one mapping (PyYAML silently keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' appears twice (line {key_node.start_mark.line + 1})", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _dataset(where: str, entry, base: Path, root: Path | None) -> dict:
    if isinstance(entry, str):
        entry = {"id": entry}
    if not isinstance(entry, dict):
        raise SpecError(f"{where}: expected a dataset id or a mapping with id, arguments, file")
    unknown = sorted(set(entry) - DATASET_KEYS)
    if unknown:
        raise SpecError(f"{where}: unknown key '{unknown[0]}'; expected {', '.join(sorted(DATASET_KEYS))}")
    arguments = entry.get("arguments") or {}
    if not isinstance(arguments, dict):
        raise SpecError(f"{where}.arguments: expected a mapping of argument name to value")
    for key, value in arguments.items():
        if isinstance(value, (dict, type(None))) or (isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value)):
            raise SpecError(f"{where}.arguments.{key}: expected a value or a list of values")
    dataset_id = entry.get("id")
    if dataset_id is not None and (not isinstance(dataset_id, str) or not ID_PATTERN.match(dataset_id)):
        raise SpecError(f"{where}.id: expected letters, digits, '_', '.' or '-', got {dataset_id!r}")
    if "file" not in entry:
        if dataset_id is None:
            raise SpecError(f"{where}: needs an id (a dataset of a loader) or a file (your own h5ad)")
        _check_loader_arguments(where, dataset_id, arguments, root)
        return {"id": dataset_id, "arguments": dict(arguments), "file": None, "loader": None}
    if not isinstance(entry["file"], str):
        raise SpecError(f"{where}.file: expected a path")
    from .userdata import UserDataError, dataset_step_arguments
    path = Path(entry["file"]).expanduser()
    path = path if path.is_absolute() else base / path
    try:
        loader, dataset_id, loader_arguments = dataset_step_arguments(
            path, dataset_id, {k: [str(x) for x in v] if isinstance(v, list) else str(v) for k, v in arguments.items()},
            root=root)
    except UserDataError as error:
        raise SpecError(f"{where}: {error}") from None
    return {"id": dataset_id, "arguments": loader_arguments, "file": str(path.resolve()), "loader": loader}


def load_spec(path, root: Path | None = None) -> dict:
    """The validated spec: the engine's keys (datasets as entries, lists, integers) plus `nextflow` (the rest)."""
    from .config import find_package_root

    spec_path = Path(path)
    root = root or find_package_root(Path.cwd())
    try:
        raw = yaml.load(spec_path.read_text(), Loader=_UniqueKeyLoader)
    except FileNotFoundError:
        raise SpecError(f"spec '{path}': file does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SpecError(f"spec '{path}': cannot read it ({error})") from None
    except yaml.YAMLError as error:
        raise SpecError(f"spec '{path}': not valid YAML ({str(error).splitlines()[0]})") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SpecError(f"spec '{path}': expected a mapping of keys (datasets, tasks, methods, ...), got {type(raw).__name__}")
    allowed = ENGINE_KEYS | nextflow_params(root)
    unknown = sorted(str(k) for k in raw if k not in allowed)
    if unknown:
        close = [k for k in sorted(allowed) if k.rstrip("s") == unknown[0].rstrip("s") or k.startswith(unknown[0][:4])]
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise SpecError(f"spec '{path}': unknown key '{unknown[0]}'{hint}; expected one of {', '.join(sorted(ENGINE_KEYS))} "
                        "or a params name of nextflow.config")
    where = lambda key: f"spec '{path}': {key}"  # noqa: E731
    spec = {"datasets": None, **{k: None for k in LIST_KEYS}, "seeds": [0], "n_folds": 5, "folds": None,
            "use_test_arguments": False, "dry_run": False, "publish_dir": None, "nextflow": {}}
    for key, value in raw.items():
        if value is None:
            continue
        if key == "datasets":
            entries = value.split(",") if isinstance(value, str) else value
            if not isinstance(entries, list) or not entries:
                raise SpecError(f"{where(key)}: expected a list of dataset ids or entries (id, arguments, file)")
            spec[key] = [_dataset(f"{where(key)}[{i}]", e.strip() if isinstance(e, str) else e, spec_path.parent.resolve(), root)
                         for i, e in enumerate(entries)]
            ids = [d["id"] for d in spec[key]]
            twice = sorted({i for i in ids if ids.count(i) > 1})
            if twice:
                raise SpecError(f"{where(key)}: dataset id '{twice[0]}' appears twice; give one of them another id")
        elif key in LIST_KEYS:
            spec[key] = _names(where(key), value)
        elif key == "seeds":
            spec[key] = _integers(where(key), value)
        elif key == "folds":
            spec[key] = _integers(where(key), value) if value != "" else None
        elif key == "n_folds":
            n = _integers(where(key), value, low=2)
            if len(n) != 1:
                raise SpecError(f"{where(key)}: expected one integer >= 2")
            spec[key] = n[0]
        elif key in ("use_test_arguments", "dry_run"):
            if not isinstance(value, bool):
                raise SpecError(f"{where(key)}: expected true or false, got {value!r}")
            spec[key] = value
        elif key == "publish_dir":
            if not isinstance(value, str):
                raise SpecError(f"{where(key)}: expected a path")
            spec[key] = value
        else:
            spec["nextflow"][key] = value
    if spec["folds"] and any(f >= spec["n_folds"] for f in spec["folds"]):
        raise SpecError(f"{where('folds')}: {spec['folds']} with n_folds {spec['n_folds']}: expected folds between 0 and "
                        f"{spec['n_folds'] - 1}")
    return spec
