"""`perturbcast list [--kind KIND]`: every component with its one-line summary, or every dataset id."""
from __future__ import annotations

import sys

from . import layout

KINDS = ("datasets", "tasks", "methods", "control_methods", "metrics", "priors")


def add_command(commands):
    parser = commands.add_parser(
        "list", help="list the components (or dataset ids) with their one-line summaries",
        description="Print every component of src/ with its summary, grouped by namespace; --kind limits it to "
                    "one namespace; methods a default run leaves out are marked [opt-in], those whose packages are absent "
                    "[not installed: <the command that installs them>]. `--kind dataset_ids` lists the dataset ids the loaders make (what "
                    "`benchmark --datasets` and `cache add --dataset` take), marking the default ones.")
    parser.add_argument("--kind", choices=KINDS + ("dataset_ids",), help="only this namespace, or dataset_ids")
    parser.add_argument("--project", default=".", help="project root (holding _viash.yaml); default: current directory")
    parser.set_defaults(handler=run)


def _summary(config) -> str:
    text = str(config.raw.get("summary") or config.raw.get("label") or "").strip()
    return " ".join(text.split())


def extra_installed(extra: str) -> bool:
    """Whether every package the pyproject extra `extra` requires is installed (an extra named in a component's
    `info.extra`; read from this package's metadata, so it matches what `pip install -e '.[extra]'` installs)."""
    import re
    from importlib import metadata

    try:
        requirements = metadata.requires("perturbcast") or []
    except metadata.PackageNotFoundError:
        return True  # not installed as a package: nothing to tell
    names = []
    for requirement in requirements:
        name, _, marker = requirement.partition(";")
        if re.search(rf"extra\s*==\s*['\"]{re.escape(extra)}['\"]", marker):
            names.append(re.split(r"[\s\[<>=!~;]", name.strip(), maxsplit=1)[0])
    for name in names:
        if name.lower() == "perturbcast":
            continue  # an extra of extras (gears = perturbcast[torch] + ...): its own packages are listed too
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            return False
    return True


def marks(config) -> str:
    """' [opt-in]' for a component a default run leaves out (info.default: false), ' [not installed: ...]' when
    its extra's packages are absent or its own environment is not built yet (it builds on its first run)."""
    from . import envs

    info = config.raw.get("info") or {}
    out = []
    if info.get("default") is False:
        out.append("opt-in")
    extra = info.get("extra")
    if envs.wanted(config.raw) and envs.install_steps(config.raw):
        if not envs.ready(config.name, config.raw):
            out.append("environment not built: perturbcast envs build")
    elif extra and not extra_installed(str(extra)):
        out.append(f"not installed: pip install -e '.[{extra}]'")
    return "".join(f" [{m}]" for m in out)


def run(args) -> int:
    from .config import NO_PROJECT, discover_components, project_root
    from .engine import dataset_instances
    from .layout import INVALID_CONFIG

    root = project_root(args.project)
    if root is None:
        print(f"[error] {NO_PROJECT.format(args.project)}", file=sys.stderr)
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
            line = f"  {config.name:<{width}}{marks(config)}  {_summary(config)}"
            # one line per component, cut to the width (the full summary is in its config)
            print(line if len(line) <= layout.LINE_WIDTH else line[:layout.LINE_WIDTH - 1] + "…")
    return 1 if errors else 0
