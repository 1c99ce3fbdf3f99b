"""Loading viash 0.9 component configs: `__merge__` resolution and argument normalisation.

Mirrors viash's `RichJson.inherit` / `concatDeepMerge` (objects merge by key, arrays concatenate,
scalars are replaced) and the argument defaults of `config/arguments/*.scala`.
"""
from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

PACKAGE_FILE = "_viash.yaml"
CONFIG_FILE = "config.vsh.yaml"
NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
# `prior` (src/priors/) makes a file_prior for a dataset; the engine does not run priors yet (issue 25)
COMPONENT_TYPES = ("dataset_loader", "task", "method", "control_method", "metric", "prior")
# src/workflows/: viash workflows that wire the components for Nextflow (OpenProblems' entry), not components
# of the benchmark
WORKFLOWS_NAMESPACE = "workflows"


class ConfigError(ValueError):
    """A config cannot be loaded or is not a valid component config."""


def find_package_root(start: str | os.PathLike) -> Path | None:
    """The nearest directory at or above `start` that holds `_viash.yaml`."""
    path = Path(start).resolve()
    if path.is_file():
        path = path.parent
    for candidate in (path, *path.parents):
        if (candidate / PACKAGE_FILE).exists():
            return candidate
    return None


def project_root(start: str | os.PathLike | None) -> Path | None:
    """The project a command works on: the nearest `_viash.yaml` at or above `start` (--project, default the
    current directory), else the project this perturbcast was installed from (an editable install or a clone
    beside the package), so the CLI works from any directory."""
    return find_package_root(start or ".") or find_package_root(Path(__file__).resolve().parent)


NO_PROJECT = ("no _viash.yaml at or above '{}' nor beside the installed perturbcast: run inside the perturbcast "
              "project or give --project DIR")


def _concat_deep_merge(base, override):
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _concat_deep_merge(base[key], value) if key in base else value
        return merged
    if isinstance(base, list) and isinstance(override, list):
        return base + override
    return override


# libyaml's parser (10x faster; the same safe constructors) and a memo: the engine loads every step's
# config with its merged API files, which took about 0.17 s of pure-Python parsing per step
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_parsed: dict = {}


def _load_yaml(path: Path):
    try:
        stat = os.stat(path)
        key = (os.path.abspath(path), stat.st_mtime_ns, stat.st_size)
        if key not in _parsed:
            with open(path) as handle:
                _parsed[key] = yaml.load(handle, Loader=_SAFE_LOADER)
        return copy.deepcopy(_parsed[key])  # callers merge and edit what they get
    except FileNotFoundError:
        raise ConfigError(f"{path}: file does not exist") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None


def _resolve_path(reference: str, current_file: Path, package_root: Path | None) -> Path:
    """viash paths: `/x` is relative to the package root, anything else to the current file."""
    if reference.startswith("/"):
        if package_root is None:
            raise ConfigError(f"{current_file}: '{reference}' is package-relative but no {PACKAGE_FILE} was found")
        return package_root / reference.lstrip("/")
    return current_file.parent / reference


def resolve_merges(node, current_file: Path, package_root: Path | None, _chain: tuple = ()):
    """Resolve every `__merge__` in `node` recursively (the listed files first, the node itself last).
    A file that merges itself, directly or through others, is a ConfigError naming the cycle."""
    chain = _chain or (Path(os.path.abspath(current_file)),)
    if isinstance(node, list):
        return [resolve_merges(item, current_file, package_root, chain) for item in node]
    if not isinstance(node, dict):
        return node
    if "__merge__" in node:
        includes = node["__merge__"]
        if not isinstance(includes, (str, list)) or not all(isinstance(i, str) for i in ([includes] if isinstance(includes, str) else includes)):
            raise ConfigError(f"{chain[0]}: `__merge__` in {current_file}: expected a file path or a list of them "
                              f"(got {includes!r})")
        includes = [includes] if isinstance(includes, str) else list(includes)
        if "." not in includes:
            includes.append(".")
        own = {key: value for key, value in node.items() if key != "__merge__"}
        parts = []
        for include in includes:
            if include == ".":
                parts.append(own)
            else:
                path = Path(os.path.abspath(_resolve_path(include, current_file, package_root)))
                if path in chain:
                    cycle = " -> ".join(str(p) for p in (*chain[chain.index(path):], path))
                    raise ConfigError(f"{chain[0]}: `__merge__: {include}` makes a cycle ({cycle}); a config merges "
                                      "its API file, never itself")
                parts.append(resolve_merges(_load_yaml(path) or {}, path, package_root, (*chain, path)))
        node = parts[0]
        for part in parts[1:]:
            node = _concat_deep_merge(node, part)
    return {key: resolve_merges(value, current_file, package_root, chain) for key, value in node.items()}


# viash 0.9's argument types (its schema); `float`, `int` or `str` are not among them.
ARGUMENT_TYPES = ("string", "integer", "long", "double", "boolean", "boolean_true", "boolean_false", "file")
_BOOLEAN_WORDS = {"true", "false", "yes", "no"}


def _value_problem(argument: "Argument", value) -> str | None:
    """Why `value` is not a value of `argument` (its type and choices), or None."""
    text = str(value).strip()
    try:
        if argument.type in ("integer", "long") and not isinstance(value, bool):
            int(text)
        elif argument.type == "double" and not isinstance(value, bool):
            float(text)
        elif argument.type == "boolean" and not isinstance(value, bool) and text.lower() not in _BOOLEAN_WORDS:
            raise ValueError
    except ValueError:
        return f"is not {'an' if argument.type[0] in 'aeiou' else 'a'} {argument.type}"
    if argument.choices and value not in argument.choices and text not in [str(c) for c in argument.choices]:
        return f"is not one of its choices {argument.choices}"
    return None


@dataclass
class Argument:
    """One argument with viash's defaults filled in."""

    name: str
    type: str
    direction: str = "input"
    required: bool = False
    multiple: bool = False
    multiple_sep: str = ";"
    alternatives: list[str] = field(default_factory=list)
    default: list | None = None
    must_exist: bool = True
    create_parent: bool = True
    min: float | None = None
    max: float | None = None
    choices: list | None = None
    description: str = ""
    example: list | None = None
    info: dict = field(default_factory=dict)

    @property
    def flags(self) -> str:
        return re.match(r"^(-*)", self.name).group(1)

    @property
    def plain_name(self) -> str:
        return re.match(r"^-*(.*)$", self.name).group(1)

    @property
    def env_name(self) -> str:
        return "VIASH_PAR_" + self.plain_name.upper()

    @property
    def is_boolean_flag(self) -> bool:
        return self.type in ("boolean_true", "boolean_false")

    @property
    def flag_value(self) -> str | None:
        return {"boolean_true": "true", "boolean_false": "false"}.get(self.type)

    @property
    def reaches_script(self) -> bool:
        # viash `getArgumentLikes(filterInputs = true)`: inputs and every file argument
        return self.direction == "input" or self.type == "file"

    @property
    def file_format(self) -> dict:
        return (self.info or {}).get("format") or {}

    @classmethod
    def from_dict(cls, raw: dict, where: str) -> "Argument":
        if not isinstance(raw, dict) or "name" not in raw or "type" not in raw:
            raise ConfigError(f"{where}: every argument needs `name` and `type` (got {sorted(raw) if isinstance(raw, dict) else raw!r})")
        if raw["type"] not in ARGUMENT_TYPES:
            raise ConfigError(f"{where}: argument '{raw['name']}': `type: {raw['type']}` is not a viash type; expected "
                              f"one of {', '.join(ARGUMENT_TYPES)}")
        as_list = lambda value: None if value is None else (list(value) if isinstance(value, list) else [value])
        argument = cls(
            name=raw["name"], type=raw["type"], direction=raw.get("direction", "input"),
            required=bool(raw.get("required", False)), multiple=bool(raw.get("multiple", False)),
            multiple_sep=str(raw.get("multiple_sep", ";")), alternatives=as_list(raw.get("alternatives")) or [],
            default=as_list(raw.get("default")), must_exist=bool(raw.get("must_exist", True)),
            create_parent=bool(raw.get("create_parent", True)), min=raw.get("min"), max=raw.get("max"),
            choices=raw.get("choices"), description=str(raw.get("description", "") or ""),
            example=as_list(raw.get("example")), info=raw.get("info") or {},
        )
        if argument.is_boolean_flag:
            # viash forces these off for boolean_true/boolean_false
            argument.required, argument.multiple = False, False
        for value in argument.default or []:
            problem = _value_problem(argument, value)
            if problem:
                raise ConfigError(f"{where}: argument '{argument.name}': `default: {value}` {problem}")
        return argument


@dataclass
class ComponentConfig:
    """A component config after `__merge__` resolution."""

    path: Path
    package_root: Path | None
    raw: dict
    arguments: list[Argument]

    @property
    def name(self) -> str:
        return self.raw["name"]

    @property
    def namespace(self) -> str | None:
        return self.raw.get("namespace")

    @property
    def version(self) -> str | None:
        version = self.raw.get("version")
        return None if version is None else str(version)

    @property
    def info(self) -> dict:
        return self.raw.get("info") or {}

    @property
    def component_type(self) -> str | None:
        return self.info.get("type")

    @property
    def directory(self) -> Path:
        return self.path.parent

    def argument(self, plain_name: str) -> Argument | None:
        return next((a for a in self.arguments if a.plain_name == plain_name), None)

    def resources(self, key: str = "resources") -> list[dict]:
        return list(self.raw.get(key) or [])

    def resolve_resource(self, resource: dict) -> Path:
        return _resolve_path(resource["path"], self.path, self.package_root)

    @property
    def main_script(self) -> dict:
        scripts = self.resources()
        if not scripts or "path" not in scripts[0]:
            raise ConfigError(f"{self.path}: the first resource must be the component's script (`path:`)")
        return scripts[0]

    def requirements(self) -> dict:
        return self.raw.get("requirements") or {}


def load_package_config(package_root: Path | None) -> dict:
    if package_root is None:
        return {}
    return _load_yaml(package_root / PACKAGE_FILE) or {}


# The keys viash 0.9 knows (its JSON schema: Config, ArgumentGroup and the argument types), so that a typo
# such as `arguemnts:` is an error instead of a silently ignored key. `info` is free-form for viash; there
# only near-misses of the keys this project reads (`supported_task` for `supported_tasks`) are refused.
CONFIG_KEYS = {"argument_groups", "arguments", "authors", "build_info", "dependencies", "description", "engines",
               "functionality", "info", "keywords", "label", "license", "links", "name", "namespace",
               "package_config", "platforms", "references", "repositories", "requirements", "resources", "runners",
               "status", "summary", "test_resources", "usage", "version"}
GROUP_KEYS = {"arguments", "description", "label", "name", "summary"}
ARGUMENT_KEYS = {"alternatives", "choices", "create_parent", "default", "description", "direction", "example", "info",
                 "label", "max", "min", "multiple", "multiple_sep", "must_exist", "name", "required", "summary", "type"}
INFO_KEYS = {"type", "type_info", "datasets", "test_arguments", "supported_tasks", "metrics", "control_type", "default",
             # priors (issue 25): what a method reads of a prior, what a prior writes, where a prior finds its data
             "uses_prior", "prior_provides", "reference_datasets"}


def _check_keys(raw: dict, path: Path):
    import difflib

    def refuse(where: str, key, known):
        close = difflib.get_close_matches(str(key), sorted(known), n=1)
        hint = f"did you mean `{close[0]}`?" if close else f"expected one of {', '.join(sorted(known))}"
        raise ConfigError(f"{path}: unknown key `{key}`{where}; {hint}")

    for key in raw:
        if key not in CONFIG_KEYS:
            refuse("", key, CONFIG_KEYS)
    for key in raw.get("info") or {}:
        if key not in INFO_KEYS and difflib.get_close_matches(str(key), sorted(INFO_KEYS), n=1, cutoff=0.85):
            refuse(" in info", key, INFO_KEYS)
    groups = [{"arguments": raw.get("arguments") or []}] + list(raw.get("argument_groups") or [])
    for group in groups:
        for key in group if isinstance(group, dict) else []:
            if key not in GROUP_KEYS:
                refuse(f" in argument group '{group.get('name')}'", key, GROUP_KEYS)
        for argument in (group.get("arguments") or []) if isinstance(group, dict) else []:
            for key in argument if isinstance(argument, dict) else []:
                if key not in ARGUMENT_KEYS:
                    refuse(f" in argument '{argument.get('name')}'", key, ARGUMENT_KEYS)


def load_config(path: str | os.PathLike) -> ComponentConfig:
    """Load `config.vsh.yaml` (or the directory holding one) with merges resolved and arguments normalised."""
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_FILE
    path = path.resolve()
    if not path.exists():
        raise ConfigError(f"{path}: no viash config here (expected a component directory with {CONFIG_FILE})")
    package_root = find_package_root(path)
    raw = resolve_merges(_load_yaml(path) or {}, path, package_root)
    if not isinstance(raw, dict) or "name" not in raw:
        raise ConfigError(f"{path}: a component config needs a `name`")
    if not NAME_PATTERN.match(str(raw["name"])):
        raise ConfigError(f"{path}: name '{raw['name']}' must match {NAME_PATTERN.pattern}")
    _check_keys(raw, path)
    package = load_package_config(package_root)
    if "version" not in raw and package.get("version") is not None:
        raw["version"] = str(package["version"])
    # viash moves top-level `arguments` into an argument group named "Arguments"
    groups = copy.deepcopy(raw.get("argument_groups") or [])
    if raw.get("arguments"):
        groups.insert(0, {"name": "Arguments", "arguments": raw.pop("arguments")})
    raw["argument_groups"] = groups
    arguments = [Argument.from_dict(arg, str(path)) for group in groups for arg in group.get("arguments") or []]
    seen = set()
    for argument in arguments:
        if argument.plain_name in seen:
            raise ConfigError(f"{path}: argument '{argument.name}' is defined twice")
        seen.add(argument.plain_name)
    config = ComponentConfig(path=path, package_root=package_root, raw=raw, arguments=arguments)
    _check_component(config, package)
    return config


def _package_labels(package: dict) -> set:
    """The resource labels `_viash.yaml` defines (its config_mods' `labels := {...}`); empty: not checked."""
    mods = str(package.get("config_mods") or "")
    found = re.search(r"labels\s*:=\s*\{(.*?)\}", mods, re.S)
    return set(re.findall(r"(\w+)\s*:\s*\"", found.group(1))) if found else set()


def _check_component(config: ComponentConfig, package: dict):
    """What makes a component unusable although its YAML loads: a name that is not its folder's, a script or
    resource that is not there, an unknown component type or resource label. One ConfigError naming the field."""
    path = config.path
    if path.name == CONFIG_FILE and path.parent.parent.parent.name == "src" and config.name != path.parent.name:
        raise ConfigError(f"{path}: `name: {config.name}` differs from its folder '{path.parent.name}'; expected "
                          f"`name: {path.parent.name}` (the folder is the component's id)")
    component_type = config.info.get("type")
    if path.parent.parent.parent.name == "src" and component_type is not None and component_type not in COMPONENT_TYPES:
        raise ConfigError(f"{path}: `info.type: {component_type}` is not a component type; expected one of "
                          f"{', '.join(COMPONENT_TYPES)}")
    for index, resource in enumerate(config.resources()):
        if not isinstance(resource, dict) or ("path" not in resource and "text" not in resource):
            raise ConfigError(f"{path}: `resources[{index}]` needs a `path` (or `text` and `dest`), got {resource!r}")
        if "path" in resource and not config.resolve_resource(resource).exists():
            what = "the component's script" if index == 0 else "a resource"
            raise ConfigError(f"{path}: `resources[{index}].path: {resource['path']}` ({what}) does not exist "
                              f"({config.resolve_resource(resource)})")
    known = _package_labels(package)
    for runner in config.raw.get("runners") or []:
        labels = ((runner or {}).get("directives") or {}).get("label") or [] if isinstance(runner, dict) else []
        for label in [labels] if isinstance(labels, str) else labels:
            if known and label not in known:
                raise ConfigError(f"{path}: `runners[{runner.get('type')}].directives.label: {label}` is not a label of "
                                  f"{PACKAGE_FILE}; expected some of {', '.join(sorted(known))}")


def discover_components(package_root: Path, errors: list | None = None) -> list[ComponentConfig]:
    """Every component config under `src/`, sorted by path (the API and utils folders hold none).

    A config that cannot be loaded is left out, so that it affects only its own steps: its
    ConfigError is appended to `errors` when given, else raised."""
    components = []
    # a method's supported_tasks name task folders (not loaded configs: a broken task is still a task)
    tasks = {p.parent.name for p in (package_root / "src" / "tasks").glob(f"*/{CONFIG_FILE}")}
    for path in sorted((package_root / "src").glob(f"*/*/{CONFIG_FILE}")):
        if path.parent.parent.name == WORKFLOWS_NAMESPACE:
            continue
        try:
            config = load_config(path)
            unknown = [t for t in config.info.get("supported_tasks") or [] if t not in tasks]
            if unknown:
                raise ConfigError(f"{path}: `info.supported_tasks` names {', '.join(map(str, unknown))}, which "
                                  f"{'is not a task' if len(unknown) == 1 else 'are not tasks'}; expected some of "
                                  f"{', '.join(sorted(tasks))}")
            components.append(config)
        except ConfigError as error:
            if errors is None:
                raise
            error.config_path = path
            errors.append(error)
    return components
