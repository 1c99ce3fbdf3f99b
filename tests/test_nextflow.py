"""The Nextflow workflow (main.nf, nextflow.config) checked without Nextflow.

- static: nf-check (Groovy syntax, DSL2 sections), no component named in main.nf, every label a
  component uses defined in nextflow.config, the image naming convention in one place;
- the helper section of main.nf (plain Groovy + snakeyaml) run with a Groovy jar: the plan equals
  perturbcast/engine.py's, and the task scripts it writes run in task folders staged the way the
  processes of main.nf stage them (project/..., input/...), through to the aggregated results.

Groovy comes from nf-check's cache (`$GROOVY_JAR` or ~/.cache/nf-check/groovy-4.0.26.jar, fetched by
running nf-check once; without java or the jar those tests skip with the reason). YAML is read with
snakeyaml as in Nextflow when a jar is found (`$SNAKEYAML_JAR`, ~/.m2 or a Nextflow install), else
through PyYAML-made Groovy literals.
"""
from __future__ import annotations

import base64
import hashlib
import glob
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from perturbcast import engine
from perturbcast.config import discover_components, load_config

ROOT = Path(__file__).resolve().parents[1]
MAIN_NF = ROOT / "main.nf"
CONFIG = ROOT / "nextflow.config"
DOCS = ROOT / "docs" / "nextflow.md"
NF_CHECK = Path(os.environ.get("NF_CHECK", ROOT.parent / "shared" / "tools" / "nf-check"))
HELPERS_BEGIN = "// ==================================================================== helpers: begin"
HELPERS_END = "// ==================================================================== helpers: end"
IMAGE_CONVENTION = "<registry>/<organization>/<package>/<namespace>/<name>:<version>"
# folder names that are ordinary words and may appear in main.nf for other reasons
GENERIC_WORDS = {
    "baseline", "control", "dataset", "default", "input", "linear", "mean", "median", "method", "metric", "none",
    "output", "random", "score", "split", "task", "test", "train",
}


def main_text() -> str:
    return MAIN_NF.read_text()


def helpers_section() -> str:
    text = main_text()
    return text[text.index(HELPERS_BEGIN):text.index(HELPERS_END)]


def wiring_section() -> str:
    text = main_text()
    return text[:text.index(HELPERS_BEGIN)]


def package_config() -> dict:
    return yaml.safe_load((ROOT / "_viash.yaml").read_text())


def config_block(text: str, name: str) -> str:
    """The body of the first `name { ... }` block of a config text (braces balanced)."""
    match = re.search(rf"(?m)^\s*{re.escape(name)}\s*\{{", text)
    assert match, f"no '{name} {{' block in nextflow.config"
    depth, start = 0, match.end() - 1
    for index in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return text[start + 1:index]
    raise AssertionError(f"unbalanced block '{name}'")


def resource_labels() -> dict[str, dict[str, float]]:
    block = config_block(CONFIG.read_text(), "resource_labels")
    table = {}
    for label, body in re.findall(r"(\w+)\s*\{([^{}]*)\}", block):
        table[label] = {key: float(value) for key, value in re.findall(r"(\w+)\s*=\s*([\d.]+)", body)}
    return table


def config_param(name: str):
    match = re.search(rf"(?m)^\s*{name}\s*=\s*(null|'[^']*'|\S+)", config_block(CONFIG.read_text(), "params"))
    assert match, f"params.{name} is not set in nextflow.config"
    value = match.group(1)
    return None if value == "null" else value.strip("'")


# ---------------------------------------------------------------- Groovy

def _groovy_jar() -> Path | None:
    candidates = [os.environ.get("GROOVY_JAR"),
                  Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nf-check" / "groovy-4.0.26.jar"]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def _snakeyaml_jar() -> Path | None:
    patterns = [os.environ.get("SNAKEYAML_JAR") or "",
                str(Path.home() / ".m2/repository/org/yaml/snakeyaml/*/snakeyaml-*.jar"),
                str(Path.home() / ".nextflow/framework/*/nextflow-*-one.jar")]
    for pattern in patterns:
        found = sorted(glob.glob(pattern)) if pattern else []
        if found:
            return Path(found[-1])
    return None


def nextflow_scripts() -> list[str]:
    """Every .nf file of the project (relative names), outside environments, work and output folders."""
    skip = {".git", ".venv", "work", "output", "results", "node_modules", ".nextflow"}
    found = []
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [d for d in subfolders if d not in skip]
        found += [str((Path(folder) / f).relative_to(ROOT)) for f in files if f.endswith(".nf")]
    return found


def run_nf_check(*files: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(NF_CHECK), *files], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="session")
def groovy_jar() -> Path:
    if shutil.which("java") is None:
        pytest.skip("java is not installed (nf-check and the Groovy checks need it)")
    jar = _groovy_jar()
    if jar is None and NF_CHECK.exists():
        run_nf_check("main.nf")  # its first run fetches the Groovy jar with npm
        jar = _groovy_jar()
    if jar is None:
        pytest.skip("no Groovy jar: run ../shared/tools/nf-check once (needs npm and network) or set GROOVY_JAR")
    return jar


def groovy_literal(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(groovy_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "[" + ", ".join(f"{groovy_literal(str(k))}: {groovy_literal(v)}" for k, v in value.items()) + "]" if value else "[:]"
    text = str(value).replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return "'" + text.replace("$", "\\$") + "'"


class Groovy:
    """Runs the helper section of main.nf followed by a driver script.

    The driver may call `loadParams(profile, overrides)`: the params of nextflow.config as Nextflow
    sees them with that profile (`'__none__'` for none), with `overrides` laid over them, and
    `section(name) { ... }`: prints `### name` and the block's output; an IllegalArgumentException
    (an unknown id) is printed as `ERROR<tab>message`.
    """

    PRELUDE = """
def ROOT = new File(%(root)s)
def loadParams = { String profile, Map overrides ->
    def slurper = new ConfigSlurper()
    slurper.registerConditionalBlock('profiles', profile)
    def params = new LinkedHashMap(slurper.parse(new File(ROOT, 'nextflow.config').toURI().toURL()).params)
    params.putAll(overrides)
    params
}
def section = { String name, Closure body ->
    println '### ' + name
    try { body() } catch (IllegalArgumentException problem) { println 'ERROR\t' + problem.message }
}
"""

    def __init__(self, jar: Path, snakeyaml: Path | None, tmp: Path):
        self.jar, self.snakeyaml, self.tmp = jar, snakeyaml, tmp

    def run(self, driver: str) -> str:
        helpers = helpers_section()
        prelude = self.PRELUDE % {"root": groovy_literal(str(ROOT))}
        if self.snakeyaml is None:
            # No snakeyaml jar: every YAML file of the project, read by PyYAML, as a Groovy literal
            # that readYaml evaluates instead (YAML_FILES: canonical path -> literal file).
            literals = self.tmp / "yaml_literals"
            if not literals.exists():
                literals.mkdir()
                for path in [ROOT / "_viash.yaml", *ROOT.glob("src/**/*.yaml")]:
                    name = hashlib.md5(str(path.resolve()).encode()).hexdigest()
                    (literals / f"{name}.groovy").write_text(groovy_literal(yaml.safe_load(path.read_text())))
            helpers = helpers.replace(
                "new org.yaml.snakeyaml.Yaml().load(file.text)",
                "Eval.me(new File(" + groovy_literal(str(literals)) + ", file.canonicalPath.md5() + '.groovy').text)")
        script = self.tmp / f"driver_{len(list(self.tmp.glob('driver_*')))}.groovy"
        script.write_text(helpers + prelude + driver)
        classpath = os.pathsep.join(str(j) for j in (self.jar, self.snakeyaml) if j)
        result = subprocess.run(["java", "-cp", classpath, "groovy.ui.GroovyMain", str(script)],
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"Groovy failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def sections(self, driver: str) -> dict[str, str]:
        found, name = {}, None
        for line in self.run(driver).splitlines(keepends=True):
            if line.startswith("### "):
                name = line[4:].strip()
                found[name] = ""
            elif name is not None:
                found[name] += line
        return found


@pytest.fixture(scope="session")
def groovy(groovy_jar, tmp_path_factory) -> Groovy:
    return Groovy(groovy_jar, _snakeyaml_jar(), tmp_path_factory.mktemp("groovy"))


def _components_by_type() -> dict[str, list[str]]:
    by_type: dict[str, list[str]] = {}
    for config in discover_components(ROOT):
        by_type.setdefault(config.component_type, []).append(config.name)
    return by_type


def _first_component_dir() -> Path:
    return sorted(ROOT.glob("src/*/*/config.vsh.yaml"))[0].parent


def _selection() -> dict:
    """A small selection for the plan comparison: three predictors, the last task, two seeds."""
    by_type = _components_by_type()
    predictors = (by_type.get("control_method", []) + by_type.get("method", []))[:3]
    return {"methods": predictors, "tasks": by_type.get("task", [])[-1:], "seeds": [0, 3]}


def _emulated_selection() -> dict:
    """The test profile, restricted to one task, two control methods and one method."""
    by_type = _components_by_type()
    predictors = by_type.get("control_method", [])[:2] + by_type.get("method", [])[:1]
    return {"tasks": ",".join(by_type.get("task", [])[-1:]) or None, "methods": ",".join(predictors) or None}


PLAN_LINES = """
        def planned = plannedSteps(planBenchmark(ROOT, %s))
        planned.steps.each { println 'STEP\t' + it.id + '\t' + it.component.namespace + '/' + it.component.name }
        planned.not_applicable.each { println 'NA\t' + it.id + '\t' + it.reason }
"""

EMULATION_LINES = """
        def p = loadParams('test', %s)
        plannedSteps(planBenchmark(ROOT, p)).steps.each { step ->
            def meta = step.meta
            def component = step.component
            def arguments = meta.stage == 'dataset' ? loaderArguments(meta) : meta.stage == 'split' ? splitArguments(meta) :
                meta.stage == 'predict' ? predictArguments(meta, component) : scoreArguments(meta)
            def script = componentScript(component, meta.dir, arguments, %s, taskCpus(component, p), null)
            println([meta.stage, meta.id, meta.dir, meta.split_id ?: '', component.name, component.path,
                     takesArgument(component, 'input_solution'), script.bytes.encodeBase64().toString()].join('\t'))
        }
"""

FAKE_PYTHON = "/nonexistent/fake-python"


@pytest.fixture(scope="session")
def basic(groovy) -> dict[str, str]:
    """Outputs of the functions that need no YAML, from one Groovy run."""
    config = load_config(_first_component_dir())
    component = {"name": config.name, "namespace": config.namespace, "version": config.version}
    driver = f"""
def p = loadParams('__none__', [:])
section('image') {{
    println imageName({groovy_literal(component)}, p)
    println imageName({groovy_literal(component)}, p + [component_version: '1.2.3'])
}}
section('resources') {{
    def component = [name: 'x', namespace: 'methods', labels: ['lowtime', 'midmem', 'lowcpu', 'gpu']]
    println taskCpus(component, p)
    println taskMemory(component, p, 1)
    println taskMemory(component, p, 2)
    println taskTime(component, p, 3)
    println taskAccelerator(component, p)
    println taskContainerOptions(component, p, 'docker')
    println taskContainerOptions(component, p, 'singularity')
    println taskMemory([labels: []], p, 1)
    println componentErrorStrategy(137, 1, p)
    println componentErrorStrategy(137, (p.max_retries as int) + 1, p)
    println componentErrorStrategy(1, 1, p)
    println componentErrorStrategy(1, 1, p + [fail_fast: true])
}}
section('supports') {{
    def method = [name: 'm', info: [supported_tasks: ['a']]]
    println supportsTask(method, 'a')
    println supportsTask(method, 'b')
    println supportsTask([name: 'n', info: [:]], 'b')
}}
section('script') {{
    def component = [name: 'x', namespace: 'methods', labels: []]
    print componentScript(component, 'predictions/d/t/seed_0/x', [output: 'predictions/d/t/seed_0/x/prediction.h5ad'], {groovy_literal(FAKE_PYTHON)}, null, null)
}}
"""
    return groovy.sections(driver)


@pytest.fixture(scope="session")
def full(groovy) -> dict[str, str]:
    """Outputs of the functions that read the configs (discovery, plans), from one Groovy run."""
    selection = _selection()
    predictors = selection["methods"]
    selection_params = {"methods": ",".join(predictors), "tasks": ",".join(selection["tasks"]),
                        "seeds": ",".join(str(s) for s in selection["seeds"])}
    params = lambda overrides: f"loadParams('__none__', {groovy_literal(overrides)})"
    driver = f"""
section('plan_default') {{ {PLAN_LINES % params({})} }}
section('plan_selection') {{ {PLAN_LINES % params(selection_params)} }}
section('plan_exclude') {{ {PLAN_LINES % params({"exclude_methods": predictors[0] if predictors else None})} }}
section('unknown_method') {{ {PLAN_LINES % params({"methods": "no_such_method_xyz"})} }}
section('unknown_dataset') {{ {PLAN_LINES % params({"exclude_datasets": "no_such_dataset_xyz"})} }}
section('images') {{
    def p = loadParams('__none__', [:])
    discoverComponents(ROOT).each {{ println it.dir + '\t' + imageName(it, p) }}
}}
section('test_datasets') {{
    def p = loadParams('test', [:])
    chooseDatasets(discoverComponents(ROOT).findAll {{ it.type == 'dataset_loader' }}, p.datasets, p.exclude_datasets,
                   p.use_test_arguments as boolean).each {{ println it.id + '\t' + it.arguments }}
}}
section('emulation') {{ {EMULATION_LINES % (groovy_literal(_emulated_selection()), groovy_literal(sys.executable))} }}
"""
    return groovy.sections(driver)


# ---------------------------------------------------------------- (a) nf-check

def test_nf_check_passes_on_every_nextflow_file():
    if shutil.which("java") is None:
        pytest.skip("java is not installed: nf-check cannot run")
    if not NF_CHECK.exists():
        pytest.skip(f"nf-check not found at {NF_CHECK}")
    files = sorted(nextflow_scripts())
    result = run_nf_check(*files, "nextflow.config")  # relative names, as .ci/run passes them
    if result.returncode == 2 and "could not fetch the Groovy jar" in result.stderr:
        pytest.skip("nf-check could not fetch its Groovy jar with npm (offline?)")
    assert result.returncode == 0, result.stdout + result.stderr
    for name in [*files, "nextflow.config"]:
        assert f"{name}: OK" in result.stdout


def test_main_nf_compiles_as_groovy(groovy, tmp_path):
    """Beyond nf-check's parse: Groovy's semantic analysis (scopes, duplicate variables, classes) of
    the whole script, processes and workflow included, as Nextflow's compiler would run it."""
    source = main_text()
    if groovy.snakeyaml is None:
        source = source.replace("new org.yaml.snakeyaml.Yaml().load(file.text)", "null")
    script = tmp_path / "main.nf"
    script.write_text(source)
    compiler = tmp_path / "compile.groovy"
    compiler.write_text(
        "def unit = new org.codehaus.groovy.control.CompilationUnit(new org.codehaus.groovy.control.CompilerConfiguration())\n"
        "unit.addSource(new File(args[0]))\n"
        "unit.compile(org.codehaus.groovy.control.Phases.CLASS_GENERATION)\n")
    classpath = os.pathsep.join(str(j) for j in (groovy.jar, groovy.snakeyaml) if j)
    result = subprocess.run(["java", "-cp", classpath, "groovy.ui.GroovyMain", str(compiler), str(script)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- (b) no hard-coded components

def test_main_nf_names_no_component():
    text = main_text()
    names = sorted({p.parent.name for p in ROOT.glob("src/*/*/config.vsh.yaml")})
    assert names, "no components under src/"
    named = [name for name in names
             if name.lower() not in GENERIC_WORDS and re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", text)]
    assert not named, f"main.nf names components {named}: discover them from src/ instead"


def test_components_are_discovered_from_src_at_run_time():
    helpers = helpers_section()
    assert "config.vsh.yaml" in helpers and "__merge__" in helpers
    assert "planBenchmark(projectDir.toFile(), params)" in wiring_section()


# ---------------------------------------------------------------- (c) labels

def test_every_component_label_is_defined_in_nextflow_config():
    table = resource_labels()
    missing = {}
    for config in discover_components(ROOT):
        runner = next((r for r in config.raw.get("runners") or [] if r.get("type") == "nextflow"), {})
        labels = (runner.get("directives") or {}).get("label") or []
        labels = [labels] if isinstance(labels, str) else labels
        undefined = [label for label in labels if label not in table]
        if undefined:
            missing[f"{config.namespace}/{config.name}"] = undefined
    assert not missing, f"labels not defined in nextflow.config params.resource_labels: {missing}"
    assert table["gpu"].get("accelerator") == 1


def test_resource_labels_agree_with_viash_config_mods():
    """The Nextflow label values are those viash-built modules get from _viash.yaml's config_mods."""
    mods = package_config().get("config_mods") or ""
    labels = dict(re.findall(r"(\w+)\s*:\s*\"([^\"]+)\"", mods))
    assert labels, "no labels in _viash.yaml config_mods"
    table = resource_labels()
    units = {"memory": ("memory_gb", r"([\d.]+)\.GB"), "cpus": ("cpus", r"([\d.]+)"), "time": ("time_h", r"([\d.]+)\.h")}
    for label, directive in labels.items():
        name, value = (part.strip() for part in directive.split("=", 1))
        if name not in units:  # e.g. an accelerator: not a number to compare
            continue
        key, pattern = units[name]
        assert table[label].get(key) == float(re.fullmatch(pattern, value).group(1)), (label, directive, table[label])


# ---------------------------------------------------------------- (d) image names

def expected_image(component_dir: Path) -> str:
    """viash's convention, from _viash.yaml and the component's config (the Python side)."""
    package = package_config()
    config = load_config(component_dir)
    return (f"{package['links']['docker_registry']}/{package['organization']}/{package['name']}/"
            f"{config.namespace}/{config.name}:{config.version}")


def test_image_convention_is_written_once_in_main_nf_and_documented():
    helpers = helpers_section()
    function = helpers[helpers.index("String imageName("):]
    function = function[:function.index("\n}\n")]
    assert IMAGE_CONVENTION in helpers, "the convention comment above imageName changed"
    assert re.search(r"\[p\.container_registry,\s*p\.container_organization,\s*p\.package_name,\s*"
                     r"component\.namespace,\s*component\.name\]", function), function
    assert "join('/') + ':' + version" in function
    assert IMAGE_CONVENTION in DOCS.read_text(), "docs/nextflow.md does not state the image naming convention"
    package = package_config()
    assert config_param("container_registry") == package["links"]["docker_registry"]
    assert config_param("container_organization") == package["organization"]
    assert config_param("package_name") == package["name"]


def test_image_name_function_matches_python(basic):
    default, released = basic["image"].strip().splitlines()
    assert default == expected_image(_first_component_dir())
    assert released == expected_image(_first_component_dir()).rsplit(":", 1)[0] + ":1.2.3"


def test_discovered_components_get_their_images(full):
    images = dict(line.split("\t") for line in full["images"].strip().splitlines())
    configs = sorted(ROOT.glob("src/*/*/config.vsh.yaml"))
    assert set(images) == {str(c.parent.relative_to(ROOT)) for c in configs}
    for config in configs:
        assert images[str(config.parent.relative_to(ROOT))] == expected_image(config.parent)


# ---------------------------------------------------------------- one DAG, two engines

def parse_plan(text: str) -> tuple[list[str], dict[str, str]]:
    steps, not_applicable = [], {}
    for line in text.splitlines():
        kind, step_id, rest = line.split("\t", 2)
        assert kind in ("STEP", "NA"), line
        if kind == "STEP":
            steps.append(step_id)
        else:
            not_applicable[step_id] = rest
    return steps, not_applicable


def engine_plan(tmp_path, **selection) -> tuple[list[str], dict[str, str]]:
    steps, skipped = engine.plan(ROOT, tmp_path, engine.Selection(**selection))
    return [s.id for s in steps], {r.id: r.reason for r in skipped}


def test_plan_matches_engine_by_default(full, tmp_path):
    assert parse_plan(full["plan_default"]) == engine_plan(tmp_path)


def test_plan_matches_engine_for_a_selection(full, tmp_path):
    selection = _selection()
    if not selection["methods"] or not selection["tasks"]:
        pytest.skip("needs a task and a method")
    assert parse_plan(full["plan_selection"]) == engine_plan(tmp_path, **selection)


def test_exclude_lists_and_unknown_names(full):
    excluded = _selection()["methods"][:1]
    if not excluded:
        pytest.skip("needs a method")
    all_steps, _ = parse_plan(full["plan_default"])
    fewer, _ = parse_plan(full["plan_exclude"])
    assert not [s for s in fewer if s.startswith("predict/") and s.endswith(f"/{excluded[0]}")]
    assert set(fewer) < set(all_steps)
    assert full["unknown_method"].startswith("ERROR\tunknown method(s) [no_such_method_xyz]; known: [")
    assert full["unknown_dataset"].startswith("ERROR\tunknown dataset(s) [no_such_dataset_xyz]; known: [")


def test_supported_tasks_decide_applicability(basic):
    assert basic["supports"].split() == ["true", "false", "true"]


# ---------------------------------------------------------------- task scripts, staged as main.nf stages them

def test_process_inputs_are_staged_where_the_scripts_expect_them():
    wiring, helpers = wiring_section(), helpers_section()
    stage_names = set(re.findall(r"stageAs: '([^']+)'", wiring))
    for name in set(re.findall(r"'(input/[a-z_]+\.h5ad)'", helpers)):
        assert name in stage_names, f"{name} is used by a task script but no process input is staged there"
    assert {"project/*", "project/src/*", "project/src/component/*", "staged*/*", "project/src"} <= stage_names
    assert "project/src/component/${component.name}" in helpers


def test_resources_errors_and_retries(basic):
    assert basic["resources"].strip().splitlines() == [
        "2", "32768 MB", "65536 MB", "180m", "1", "--gpus all", "--nv", "null", "retry", "ignore", "ignore", "terminate"]


def _fake_python(tmp_path: Path, body: str) -> Path:
    fake = tmp_path / "fake_python"
    fake.write_text("#!/usr/bin/env bash\n" + body + "\n")
    fake.chmod(0o755)
    return fake


@pytest.mark.parametrize("body,exit_code,marker", [
    ("echo '[not applicable] the dataset has one cell type' >&2; exit 99", 0, "[not applicable] the dataset has one cell type"),
    ("echo '[error] broken' >&2; exit 3", 3, None),
    ("exit 137", 137, None),
    ("echo ok", 0, None),
])
def test_task_script_exit_codes(basic, tmp_path, body, exit_code, marker):
    python = _fake_python(tmp_path, body)
    script = basic["script"].replace(f"'{FAKE_PYTHON}'", f"'{python}'")
    assert str(python) in script
    task = tmp_path / "task"
    task.mkdir()
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=task, capture_output=True, text=True)
    assert result.returncode == exit_code, result.stdout + result.stderr
    marker_file = task / "predictions/d/t/seed_0/x/not_applicable.txt"
    assert (task / "predictions/d/t/seed_0/x/log.txt").exists()
    if marker:
        assert marker_file.read_text().strip() == marker
    else:
        assert not marker_file.exists()


def _stage_project(task: Path, component_path: Path | None, whole_src: bool = False):
    """What the processes stage (copied, as cloud executors do, so the task needs nothing else)."""
    project = task / "project"
    (project / "src").mkdir(parents=True)
    shutil.copy2(ROOT / "_viash.yaml", project / "_viash.yaml")
    shutil.copytree(ROOT / "perturbcast", project / "perturbcast", ignore=shutil.ignore_patterns("__pycache__"))
    if whole_src:
        shutil.rmtree(project / "src")
        shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__"))
        return
    for shared in ("api", "utils"):
        shutil.copytree(ROOT / "src" / shared, project / "src" / shared, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(component_path, project / "src" / "component" / component_path.name,
                    ignore=shutil.ignore_patterns("__pycache__"))


def test_emulated_run_of_the_test_profile(full, groovy, tmp_path):
    """Every task of a small test-profile run, each in its own folder staged as main.nf stages it,
    outputs published as publishDir does, then the aggregation: the published layout is the engine's."""
    selection = _emulated_selection()
    if not selection["tasks"]:
        pytest.skip("no task component")
    predictors = (selection["methods"] or "").split(",")
    out = full["emulation"]
    publish = tmp_path / "publish"
    work = tmp_path / "work"
    ran = {}
    for number, line in enumerate(out.strip().splitlines()):
        stage, step_id, step_dir, split_id, name, component_path, needs_solution, script = line.split("\t")
        split_dir = publish / ("tasks/" + split_id.split("/", 1)[1] if split_id else "")
        inputs = {
            "dataset": {},
            "split": {"dataset.h5ad": publish / "datasets" / step_dir.split("/")[1] / "dataset.h5ad"},
            "predict": {"train.h5ad": split_dir / "train.h5ad", "test.h5ad": split_dir / "test.h5ad",
                        **({"solution.h5ad": split_dir / "solution.h5ad"} if needs_solution == "true" else {})},
            "score": {"solution.h5ad": split_dir / "solution.h5ad",
                      "prediction.h5ad": publish / "predictions" / "/".join(step_dir.split("/")[1:-1]) / "prediction.h5ad"},
        }[stage]
        if not all(path.exists() for path in inputs.values()):
            ran[step_id] = "skipped"  # an upstream step emitted nothing (not applicable or failed)
            continue
        # cells files are staged under these names when the step's arguments name them (main.nf stages them
        # only then)
        arguments = base64.b64decode(script).decode()
        cells = {"dataset_cells.h5ad": publish / "datasets" / step_dir.split("/")[1] / "dataset_cells.h5ad",
                 "train_cells.h5ad": split_dir / "train_cells.h5ad",
                 "solution_cells.h5ad": split_dir / "solution_cells.h5ad",
                 "prediction_cells.h5ad": publish / "predictions" / "/".join(step_dir.split("/")[1:-1]) / "prediction_cells.h5ad"}
        inputs.update({name: path for name, path in cells.items() if f"'input/{name}'" in arguments})
        task = work / f"{number:04d}"
        _stage_project(task, Path(component_path))
        (task / "input").mkdir()
        for staged, source in inputs.items():
            (task / "input" / staged).symlink_to(source)
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", base64.b64decode(script).decode()],
                                cwd=task, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
        assert result.returncode == 0, f"{step_id} failed:\n{result.stdout}\n{result.stderr}"
        shutil.copytree(task / step_dir, publish / step_dir)  # publishDir: the step folder's outputs
        ran[step_id] = "not_applicable" if (publish / step_dir / "not_applicable.txt").exists() else "ok"
    assert ran and list(ran.values())[0] == "ok", ran
    dataset_dirs = list((publish / "datasets").iterdir())
    assert len(dataset_dirs) == 1 and (dataset_dirs[0] / "dataset.h5ad").exists()
    for step_id, status in ran.items():
        stage, key = step_id.split("/", 1)
        folder = publish / {"dataset": "datasets", "split": "tasks", "predict": "predictions", "score": "scores"}[stage] / key
        expected = {"dataset": ["dataset.h5ad"], "split": ["train.h5ad", "test.h5ad", "solution.h5ad"],
                    "predict": ["prediction.h5ad"], "score": ["score.h5ad"]}[stage]
        if status == "ok":
            assert all((folder / name).exists() for name in expected), (step_id, list(folder.iterdir()))
            assert (folder / "log.txt").exists()
    scores = sorted(str(p.relative_to(publish)) for p in publish.glob("scores/**/score.h5ad"))
    markers = sorted(str(p.relative_to(publish)) for p in publish.glob("**/not_applicable.txt"))
    if not scores:
        pytest.skip(f"no score was produced to aggregate (steps: {ran})")

    # AGGREGATE: the files staged as staged<i>/<name>, linked back into the layout by its script
    paths = scores + markers
    script = groovy.run(f"print aggregateScript({groovy_literal(paths)}, {groovy_literal(sys.executable)})")
    task = work / "aggregate"
    _stage_project(task, None, whole_src=True)
    for index, path in enumerate(paths, start=1):
        (task / f"staged{index}").mkdir()
        shutil.copy2(publish / path, task / f"staged{index}" / Path(path).name)
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=task, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": ""})
    assert result.returncode == 0, result.stdout + result.stderr
    assert (task / "results.parquet").exists()
    import pandas as pd
    results = pd.read_parquet(task / "results.parquet")
    assert set(results["method_id"]) <= set(predictors) and len(results) > 0


# ---------------------------------------------------------------- config and docs

def test_config_pins_nextflow_and_defines_profiles_and_reports():
    text = CONFIG.read_text()
    pin = re.search(r"nextflowVersion\s*=\s*'!>=([\d.]+)'", text)
    assert pin, "manifest.nextflowVersion is not pinned"
    assert pin.group(1) in DOCS.read_text(), "docs/nextflow.md does not state the pinned Nextflow version"
    profiles = config_block(text, "profiles")
    for profile in ("local", "docker", "singularity", "awsbatch", "google_batch", "slurm", "test"):
        assert re.search(rf"(?m)^\s*{profile}\s*\{{", profiles), f"profile {profile} missing"
    assert "'awsbatch'" in config_block(profiles, "awsbatch") and "'google-batch'" in config_block(profiles, "google_batch")
    assert "'slurm'" in config_block(profiles, "slurm")
    for report in ("trace", "report", "timeline", "dag"):
        block = config_block(text, report)
        assert "enabled   = true" in block and "${params.publish_dir}/pipeline_info/" in block
    for name in ("datasets", "tasks", "methods", "metrics"):
        assert re.search(rf"(?m)^\s*{name}\s*=", config_block(text, "params"))
        assert re.search(rf"(?m)^\s*exclude_{name}\s*=", config_block(text, "params"))


def test_test_profile_selects_tiny_simulated_data(full):
    out = full["test_datasets"]
    dataset_id, arguments = out.strip().split("\t")
    loader = next(c for c in discover_components(ROOT) if c.component_type == "dataset_loader"
                  and dataset_id in [d["id"] for d in engine.dataset_instances(c)])
    for key, value in (loader.info.get("test_arguments") or {}).items():
        assert f"{key}:{value}" in arguments


def test_image_build_workflow_pushes_on_release_tags():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "build-images.yml").read_text())
    triggers = workflow.get("on", workflow.get(True))
    assert "tags" in triggers["push"]
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    commands = "\n".join(step.get("run", "") for step in steps)
    assert "viash ns build" in commands and "--push" in commands
