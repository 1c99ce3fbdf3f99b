"""`perturbcast run` and `perturbcast test`: viash's `run` and `test` commands for Python, R and Bash components.

`run` builds the component into a temporary directory the way `viash run` does (processed
`.config.vsh.yaml`, the non-main resources; the main script is only injected, never copied), runs it
with the current Python, `Rscript` or `bash` (by the main script's resource type), checks `must_exist`
outputs, and then validates every h5ad output against its API format. A component writes each output under
a temporary name beside it (layout.partial_name), renamed to the output path only once validated: a failed,
invalid or interrupted run leaves nothing half-right behind, and never replaces the file that was there.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import envs, formats, layout, viash
from .layout import NOT_APPLICABLE_EXIT_CODE
from .config import Argument, ComponentConfig, load_config
from .languages import language_of

VIASH_VERSION = "0.9.4"


@dataclass
class RunResult:
    exit_code: int
    wall_seconds: float = 0.0
    peak_rss_bytes: int = 0
    values: dict = field(default_factory=dict)
    problems: dict = field(default_factory=dict)


def _copy_resource(config: ComponentConfig, resource: dict, target_dir: Path):
    if "path" not in resource:  # inline `text:` resources
        destination = target_dir / resource["dest"]
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_text(resource.get("text", ""))
        return
    source = config.resolve_resource(resource)
    if not source.exists():
        made = " (test data: run `python scripts/create_test_resources.py` first)" if "resources_test" in source.parts else ""
        raise FileNotFoundError(f"{config.path}: resource '{resource['path']}' does not exist ({source}){made}")
    destination = target_dir / resource.get("dest", source.name)
    destination.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, destination, dirs_exist_ok=True)
    else:
        shutil.copy2(source, destination)


def processed_config(config: ComponentConfig, build_dir: Path, runner: str = "executable") -> dict:
    """The `.config.vsh.yaml` viash writes beside an executable: merged config plus `build_info`."""
    processed = dict(config.raw)
    processed["resources"] = [
        {**r, "path": r.get("dest", Path(r["path"]).name)} if "path" in r else r for r in config.resources()]
    processed["build_info"] = {
        "config": str(config.path), "runner": runner, "engine": "native",
        "output": str(build_dir), "executable": str(build_dir / config.name), "viash_version": VIASH_VERSION,
    }
    return processed


# libyaml's emitter when PyYAML has it: the pure-Python dumper took ~75 ms per processed config, once
# per step (a fifth of the engine process's time on the default benchmark)
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
# JSON of a processed config without its build_info -> that part's YAML text (the same for every step of
# a component; only build_info names the build folder)
_CONFIG_TEXT: dict[str, str] = {}
_CONFIG_TEXT_KEPT = 256


def processed_config_text(config: ComponentConfig, build_dir: Path) -> str:
    """`processed_config` as YAML. A block mapping's text is its entries' texts one after the other, so
    the text before build_info (which viash writes last) is kept per config and build_info appended."""
    import json

    processed = processed_config(config, build_dir)
    build_info = processed.pop("build_info")
    if "build_info" in config.raw:  # it keeps its place in the mapping: dump the whole
        return yaml.dump({**processed, "build_info": build_info}, Dumper=_DUMPER, sort_keys=False)
    try:
        key = json.dumps(processed, sort_keys=False)
    except (TypeError, ValueError):  # a value JSON cannot spell (a YAML date): no caching
        key = None
    text = _CONFIG_TEXT.get(key) if key is not None else None
    if text is None:
        text = yaml.dump(processed, Dumper=_DUMPER, sort_keys=False) if processed else ""
        if key is not None:
            if len(_CONFIG_TEXT) >= _CONFIG_TEXT_KEPT:
                _CONFIG_TEXT.pop(next(iter(_CONFIG_TEXT)))
            _CONFIG_TEXT[key] = text
    return text + yaml.dump({"build_info": build_info}, Dumper=_DUMPER, sort_keys=False)


def build(config: ComponentConfig, build_dir: Path, resources: bool = True) -> Path:
    """Write the processed config and the non-main resources into `build_dir` (viash's build layout)."""
    build_dir.mkdir(parents=True, exist_ok=True)
    (build_dir / ".config.vsh.yaml").write_text(processed_config_text(config, build_dir))
    if resources:
        for resource in config.resources()[1:]:
            _copy_resource(config, resource, build_dir)
    executable = build_dir / config.name
    # The executable lets test scripts call the component as viash's built wrapper would be called.
    executable.write_text(
        "#!/usr/bin/env bash\n"
        f"# {config.name}: built by perturbcast from {config.path}\n"
        f'exec "{sys.executable}" -m perturbcast exec "$(dirname "${{BASH_SOURCE[0]}}")" "$@"\n')
    executable.chmod(0o755)
    return build_dir


def execute(config: ComponentConfig, argv: list[str], resources_dir: Path, *, name: str | None = None,
            cwd: str | None = None, stdout=None, stderr=None, validate: bool = True, spawner=None,
            isolated: bool | None = None) -> RunResult:
    """Parse `argv`, run the main script with `par`/`meta` injected, check outputs. Never raises ViashExit.

    `isolated`: run a Python component in its own environment (perturbcast.envs; None = as its config
    or PERTURBCAST_ISOLATED_ENVIRONMENTS says); one that cannot be built ends with exit code 98."""
    try:
        language = language_of(config.main_script)
    except ValueError as error:
        print(f"[error] {config.path}: {error}", file=stderr if hasattr(stderr, "write") else sys.stderr, flush=True)
        return RunResult(1)
    try:
        invocation = viash.parse(config, argv)
        meta = viash.meta_values(config, Path(resources_dir), name)
        script_path = config.resolve_resource(config.main_script)
        if config.raw.get("set_wd_to_resources_dir"):
            cwd = str(resources_dir)
        final_values = dict(invocation.values)
        partial = _partial_outputs(config, invocation, cwd)
        try:
            script = viash.inject(script_path.read_text(), viash.language_block(language, config, invocation, meta))
            python_executable = None
            if language.type == "python_script" and envs.wanted(config.raw, isolated) and envs.install_steps(config.raw):
                python_executable = _own_environment(config, invocation, stderr)
                if python_executable is None:
                    return RunResult(envs.NOT_INSTALLED_EXIT_CODE, values=final_values)
            execution = viash.run_script(script, meta, cwd=cwd, stdout=stdout, stderr=stderr, spawner=spawner,
                                         language=language, python_executable=python_executable)
            result = RunResult(execution.exit_code, execution.wall_seconds, execution.peak_rss_bytes, final_values)
            if execution.exit_code != 0:
                return result  # what it wrote is discarded below; an earlier file at the output path stays
            for name, (_, temporary) in partial.items():
                if config.argument(name).must_exist and not os.path.exists(temporary):
                    viash.error_exit(f"Output file '{final_values[name]}' does not exist.")
            viash.check_outputs_exist(config, invocation)
            if validate:
                result.problems = formats.output_problems(config, _absolute(invocation.values, cwd))
                if result.problems:
                    _report_invalid_outputs(config, result, stderr)
                    return result
            for final, temporary in partial.values():  # validated: only now may it replace what was there
                if os.path.lexists(temporary):
                    os.replace(temporary, final)
            return result
        finally:
            for _, temporary in partial.values():
                _discard(temporary)
    except viash.ViashExit as stop:
        return RunResult(stop.code)


def _partial_outputs(config: ComponentConfig, invocation, cwd: str | None) -> dict:
    """Point every single-file output at a hidden name in its own folder (layout.partial_name), so that the
    component writes there and the file at the output path is replaced only once the output is validated (a
    failed, invalid or interrupted run leaves what was there before). Returns plain name -> (final, temporary)
    as absolute paths; `invocation.values` then hold the temporary names the script sees."""
    import secrets

    partial = {}
    tag = f"{os.getpid()}{secrets.token_hex(3)}"
    absolute = lambda value: os.path.realpath(os.path.join(cwd, value) if cwd and not os.path.isabs(value) else value)  # noqa: E731
    files = [(argument.direction, absolute(value)) for argument in config.arguments if argument.type == "file"
             for value in [invocation.values.get(argument.plain_name)] if value and "*" not in value]
    outputs = [path for direction, path in files if direction == "output"]
    shared = {path for direction, path in files if direction == "input"} | {p for p in outputs if outputs.count(p) > 1}
    for argument in config.arguments:
        value = invocation.values.get(argument.plain_name)
        if argument.type != "file" or argument.direction != "output" or argument.multiple or not value or "*" in value:
            continue
        final = os.path.join(cwd, value) if cwd and not os.path.isabs(value) else os.path.abspath(value)
        # a folder output (viash test's `dir`) is written in place; an output that is an input or another output
        # is left for the component to refuse (component_io names both arguments)
        if os.path.isdir(final) or absolute(value) in shared:
            continue
        partial[argument.plain_name] = (final, layout.partial_name(final, tag))
        invocation.values[argument.plain_name] = partial[argument.plain_name][1]
    return partial


def _discard(path: str):
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)
    except FileNotFoundError:
        pass


def _own_environment(config: ComponentConfig, invocation, stderr) -> str | None:
    out = stderr if hasattr(stderr, "write") else sys.stderr
    gpu = "gpu" in ((config.raw.get("runners") or [{}])[-1].get("directives") or {}).get("label", [])
    try:
        # a first build takes minutes: say what it is doing
        environment = envs.ensure(config.name, config.raw, gpu=gpu and bool(os.environ.get("PERTURBCAST_GPU")),
                                  progress=lambda text: print(f"[environment] {text}", file=out, flush=True))
    except envs.EnvironmentError_ as error:
        print(f"[not installed] {error}", file=out, flush=True)
        return None
    if environment.built:
        print(f"{config.name}: built its environment {environment.path} in {environment.build_seconds:.0f} s",
              file=out, flush=True)
    return str(environment.python)


def _absolute(values: dict, cwd: str | None) -> dict:
    if not cwd:
        return values
    return {key: (os.path.join(cwd, value) if isinstance(value, str) and value and not os.path.isabs(value)
                  and os.path.exists(os.path.join(cwd, value)) else value) for key, value in values.items()}


def _report_invalid_outputs(config: ComponentConfig, result: RunResult, stderr):
    out = stderr if stderr not in (None, -1) and hasattr(stderr, "write") else None
    for name, problems in result.problems.items():
        path = result.values.get(name.lstrip("-"))
        message = f"[error] {config.name}: output {name} file '{path}' does not match its API format: " + "; ".join(problems[:5])
        print(message, file=out or sys.stderr, flush=True)
    # the invalid files are discarded (execute); a file that was at the output path before is left as it was
    print(f"[error] {config.name}: its outputs were not written", file=out or sys.stderr, flush=True)
    result.exit_code = 1


def run_component(component: str | os.PathLike, argv: list[str], *, keep: bool = False, stdout=None,
                  stderr=None, cpus: int | None = None, memory: str | None = None, validate: bool = True,
                  spawner=None, isolated: bool | None = None, cwd: str | None = None) -> RunResult:
    """`viash run COMPONENT -- ARGS`: build into `$VIASH_TEMP/viash_<name>XXXX`, run, clean up on success."""
    config = load_config(component)
    argv = list(argv) + ([f"---cpus={cpus}"] if cpus else []) + ([f"---memory={memory}"] if memory else [])
    temp_root = viash.viash_temp_dir()
    os.makedirs(temp_root, exist_ok=True)
    build_dir = Path(tempfile.mkdtemp(prefix=f"viash_{config.name}", dir=temp_root))
    try:
        build(config, build_dir)
        result = execute(config, argv, build_dir, stdout=stdout, stderr=stderr, validate=validate, spawner=spawner,
                         isolated=isolated, cwd=cwd)
    except BaseException:
        shutil.rmtree(build_dir, ignore_errors=True)
        raise
    # "not applicable to this input" is an answer, not a failure to inspect
    if result.exit_code in (0, NOT_APPLICABLE_EXIT_CODE) and not keep:
        shutil.rmtree(build_dir, ignore_errors=True)
    elif spawner is None:  # under the engine the step's log is shared with the fork server: it keeps its own records
        out = stderr if stderr not in (None, -1) and hasattr(stderr, "write") else sys.stderr
        why = "kept (-k)" if result.exit_code in (0, NOT_APPLICABLE_EXIT_CODE) else "kept for inspection after the failure; remove it when done"
        print(f"[notice] {config.name}: build folder {build_dir} {why}", file=out, flush=True)
    return result


def exec_built(build_dir: str, argv: list[str]) -> int:
    """Entry point of a built executable (`<dir>/<name>`): run with `resources_dir = <dir>`."""
    build_dir = Path(build_dir).resolve()
    with open(build_dir / ".config.vsh.yaml") as handle:
        processed = yaml.safe_load(handle)
    config = load_config(processed["build_info"]["config"])
    return execute(config, argv, build_dir).exit_code


# ---------------------------------------------------------------- viash test

def _test_executable_config(config: ComponentConfig, test_resource: dict) -> ComponentConfig:
    """The wrapper viash builds around a test script: same name, one positional output `dir`."""
    raw = {"name": config.name, "namespace": config.namespace, "version": "test",
           "resources": [test_resource], "set_wd_to_resources_dir": True,
           "argument_groups": [{"name": "Arguments", "arguments": [
               {"name": "dir", "type": "file", "direction": "output", "must_exist": False, "create_parent": False}]}]}
    dir_argument = Argument.from_dict(raw["argument_groups"][0]["arguments"][0], str(config.path))
    return ComponentConfig(path=config.path, package_root=config.package_root, raw=raw, arguments=[dir_argument])


@dataclass
class ComponentTestReport:
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    directory: Path | None = None


def run_component_tests(component: str | os.PathLike, *, keep: bool = False, cpus: int | None = None,
                   memory: str | None = None, stdout=None, stderr=None) -> ComponentTestReport:
    """`viash test`: every script in `test_resources` runs in its own folder next to a built component."""
    config = load_config(component)
    config.raw["version"] = "test"
    temp_root = Path(viash.viash_temp_dir())
    temp_root.mkdir(parents=True, exist_ok=True)
    test_root = Path(tempfile.mkdtemp(prefix=f"viash_test_{config.name}_", dir=temp_root))
    (test_root / ".build.yaml").write_text("")
    report = ComponentTestReport(directory=test_root)
    test_resources = config.resources("test_resources")
    scripts = [r for r in test_resources if str(r.get("type", "file")).endswith("_script")]
    plain_files = [r for r in test_resources if r not in scripts]
    for test in scripts:
        test_name = Path(test["path"]).stem
        folder = test_root / f"test_{test_name}"
        build(config, folder)
        for resource in plain_files:
            _copy_resource(config, resource, folder)
        (folder / "tmp").mkdir(exist_ok=True)
        test_config = _test_executable_config(config, test)
        extra = [f"---cpus={cpus}"] if cpus else []
        extra += [f"---memory={memory}"] if memory else []
        previous = os.environ.get("VIASH_TEMP")
        os.environ["VIASH_TEMP"] = str(folder / "tmp")
        try:
            result = execute(test_config, [str(test_root), *extra], folder, name=config.name,
                             stdout=stdout, stderr=stderr, validate=False)
        finally:
            if previous is None:
                os.environ.pop("VIASH_TEMP", None)
            else:
                os.environ["VIASH_TEMP"] = previous
        (report.passed if result.exit_code == 0 else report.failed).append(test_name)
    if not report.failed and not keep:
        shutil.rmtree(test_root, ignore_errors=True)
        report.directory = None
    return report
