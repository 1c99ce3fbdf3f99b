"""`perturbcast list [--kind KIND]`: every component with its one-line summary, or every dataset id."""
from __future__ import annotations

import sys

KINDS = ("datasets", "tasks", "methods", "control_methods", "metrics")


def add_command(commands):
    parser = commands.add_parser(
        "list", help="list the components (or dataset ids) with their one-line summaries",
        description="Print every component of src/ with its summary, grouped by namespace; --kind limits it to "
                    "one namespace. `--kind dataset_ids` lists the dataset ids the loaders make (what "
                    "`benchmark --datasets` and `cache add --dataset` take), marking the default ones.")
    parser.add_argument("--kind", choices=KINDS + ("dataset_ids",), help="only this namespace, or dataset_ids")
    parser.add_argument("--project", default=".", help="project root (holding _viash.yaml); default: current directory")
    parser.set_defaults(handler=run)


def _summary(config) -> str:
    text = str(config.raw.get("summary") or config.raw.get("label") or "").strip()
    return " ".join(text.split())


def run(args) -> int:
    from .config import discover_components, find_package_root
    from .engine import dataset_instances
    from .layout import INVALID_CONFIG

    root = find_package_root(args.project)
    if root is None:
        print(f"[error] no _viash.yaml at or above '{args.project}': run from the perturbcast project", file=sys.stderr)
        return 1
    errors = []
    components = discover_components(root, errors=errors)
    for error in errors:  # each broken config once; the others are listed
        print(f"[error] {INVALID_CONFIG}: {error} (left out)", file=sys.stderr)
    if args.kind == "dataset_ids":
        rows = [(instance["id"], config.name, " (default)" if instance["default"] else "")
                for config in components if config.component_type == "dataset_loader"
                for instance in dataset_instances(config)]
        width = max(len(r[0]) for r in rows)
        for dataset_id, loader, default in rows:
            print(f"{dataset_id:<{width}}  loader {loader}{default}")
        return 1 if errors else 0
    for kind in ([args.kind] if args.kind else KINDS):
        members = [c for c in components if c.namespace == kind]
        if not members:
            continue
        print(f"{kind}:")
        width = max(len(c.name) for c in members)
        for config in members:
            print(f"  {config.name:<{width}}  {_summary(config)}")
    return 1 if errors else 0
