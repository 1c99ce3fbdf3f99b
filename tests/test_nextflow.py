"""The Nextflow workflow (main.nf, nextflow.config, conf/, nextflow_schema.json) checked without Nextflow.

- main.nf only wires channels from `perturbcast plan --json`: no discovery, selection or argument logic in it
  (grep), nf-check passes, its processes carry the components' label sets (scripts/nextflow_processes.py);
- the plan's JSON equals `engine.plan` for every selection used here (one planner for both engines);
- an emulated Nextflow run: every step of the plan in its own task folder staged as main.nf stages it
  (staged/in<i>/<name>, project/...), run by the command main.nf runs (`perturbcast step`), published as
  publishDir does; then AGGREGATE's command: the tables, OpenProblems files and report sections (cost and
  failures included) equal the engine's own run;
- the parameter schema: every param of nextflow.config, unknown and misspelled ones rejected (a small JSON-schema
  checker here, as nf-schema's validateParameters with failUnrecognisedParams), a spec file valid as params file.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from perturbcast import engine
from perturbcast.config import discover_components
from perturbcast.engine_guard import component_labels

ROOT = Path(__file__).resolve().parents[1]
MAIN_NF = ROOT / "main.nf"
CONFIG = ROOT / "nextflow.config"
BASE_CONFIG = ROOT / "conf" / "base.config"
SCHEMA = ROOT / "nextflow_schema.json"
NF_CHECK = Path(os.environ.get("NF_CHECK", ROOT.parent / "shared" / "tools" / "nf-check"))
GENERIC_WORDS = {
    "baseline", "control", "dataset", "default", "input", "linear", "mean", "median", "method", "metric", "none",
    "output", "random", "score", "split", "task", "test", "train",
}
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}


def perturbcast(*args, cwd=ROOT, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "perturbcast", *map(str, args)], cwd=cwd, env=ENV,
                            capture_output=True, text=True)
    if check:
        assert result.returncode == 0, f"perturbcast {' '.join(map(str, args))}:\n{result.stdout}\n{result.stderr}"
    return result


def config_params(text: str | None = None) -> dict:
    """Top-level names and literal defaults of nextflow.config's `params { }` block."""
    text = text or CONFIG.read_text()
    block = text[text.index("params {"):]
    params, depth = {}, 0
    for line in block.splitlines()[1:]:
        code = line.split("//", 1)[0]
        if depth == 0:
            match = re.match(r"^\s*(\w+)\s*=\s*(.+?)\s*$", code)
            if match:
                value = match.group(2)
                params[match.group(1)] = yaml.safe_load(value.replace("'", '"')) if value != "null" else None
        depth += code.count("{") - code.count("}")
        if depth < 0:
            break
    return params


# ---------------------------------------------------------------- static: main.nf, configs, nf-check

def test_nf_check_passes_on_every_nextflow_file():
    if shutil.which("java") is None or not NF_CHECK.exists():
        pytest.skip("nf-check needs java and ../shared/tools/nf-check")
    files = ["main.nf", "nextflow.config", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "conf").glob("*.config"))]
    result = subprocess.run([str(NF_CHECK), *files], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0 and "could not fetch the Groovy jar" in result.stderr:
        pytest.skip("nf-check could not fetch its Groovy jar (no network)")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "main.nf: OK" in result.stdout


def test_main_nf_holds_no_discovery_selection_or_argument_logic():
    text = MAIN_NF.read_text()
    for forbidden in ("config.vsh.yaml", "__merge__", "supported_tasks", "info.datasets", "info.test_arguments",
                      "concatDeepMerge", "discoverComponents", "input_train", "output_train", "input_solution",
                      "n_folds:", "'--seed", "arguments.put", "takesArgument"):
        assert forbidden not in text, f"main.nf still holds '{forbidden}'"
    assert "perturbcast plan --json" in text and "process PLAN" in text
    # no component is named in main.nf
    names = {p.name for p in (ROOT / "src").glob("*/*") if p.is_dir() and p.parent.name != "workflows"} - GENERIC_WORDS
    named = sorted(name for name in names if re.search(rf"\b{re.escape(name)}\b", text))
    assert not named, f"main.nf names components {named}"


def test_processes_carry_every_components_label_set():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "nextflow_processes.py"), "--check"],
                            capture_output=True, text=True, env=ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    text = MAIN_NF.read_text()
    stage_prefix = {"dataset_loader": "DATASET", "task": "SPLIT", "method": "PREDICT", "control_method": "PREDICT",
                    "metric": "SCORE"}
    for component in discover_components(ROOT, errors=[]):
        if component.component_type not in stage_prefix:
            continue  # priors (src/priors/) are no stage of the benchmark yet: main.nf has no process for them
        labels = sorted(set(component_labels(component)))
        name = stage_prefix[component.component_type] + "_" + "_".join(label.upper() for label in labels)
        block = re.search(rf"process {name} \{{(.*?)\n\}}", text, re.S)
        assert block, f"{component.name}: no process {name} in main.nf"
        assert sorted(re.findall(r"label '(\w+)'", block.group(1))) == labels


def _config_mod_labels() -> dict[str, str]:
    mods = yaml.safe_load((ROOT / "_viash.yaml").read_text())["config_mods"]
    return dict(re.findall(r'(\w+)\s*:\s*"([^"]+)"', mods))


def test_base_config_labels_agree_with_viash_config_mods():
    text = BASE_CONFIG.read_text()
    table = dict(re.findall(r"withLabel:\s*(\w+)\s*\{\s*([^\n]*?)\s*\}?\s*$", text, re.M))
    used = {label for c in discover_components(ROOT, errors=[]) for label in component_labels(c)}
    # GPU options only under the `gpu` profile (a Docker host without a GPU refuses --gpus all)
    gpu_profile = re.search(r"^    gpu \{\n(.*?)^    \}", CONFIG.read_text(), re.S | re.M).group(1)
    assert "withLabel: gpu" in gpu_profile and "--gpus all" in gpu_profile and "--nv" in gpu_profile
    assert "--gpus" not in text and "accelerator" not in text
    table["gpu"] = gpu_profile
    for label, setting in _config_mod_labels().items():
        assert label in table, f"conf/base.config has no withLabel: {label}"
        key, value = [part.strip() for part in setting.split("=")]
        if key == "accelerator":
            assert re.search(r"accelerator\s*=", table[label])
            continue
        assert re.search(rf"{key}\s*=\s*\{{?\s*{re.escape(value)}", table[label]), (label, table[label], setting)
    assert used <= set(table), f"labels without a withLabel: {sorted(used - set(table))}"
    # the tooling processes' labels are defined too
    for label in set(re.findall(r"label '(\w+)'", MAIN_NF.read_text())):
        assert label in table, f"main.nf's label '{label}' has no withLabel: in conf/base.config"


def test_retries_cover_kills_sigterm_and_spot_reclaims():
    text = BASE_CONFIG.read_text()
    strategy = re.search(r"^\s*errorStrategy\s*=\s*\{(.*)\}\s*$", text, re.M).group(1)
    for code in ("137", "138", "139", "140", "143", "50001", "Integer.MAX_VALUE"):
        assert code in strategy, f"exit code {code} is not retried"
    assert "resourceLimits" in text and "task.attempt" in text
    config = CONFIG.read_text()
    assert "maxSpotAttempts" in config and "includeConfig 'conf/base.config'" in config
    assert config.index("profiles {") < config.index("includeConfig 'conf/base.config'")
    from perturbcast.step_cli import RETRIED_EXIT_CODES
    assert set(RETRIED_EXIT_CODES) <= {137, 138, 139, 140, 143}


def test_config_pins_nextflow_and_nf_schema_and_publishes_where_openproblems_looks():
    text = CONFIG.read_text()
    assert re.search(r"nextflowVersion\s*=\s*'!>=24\.04", text)
    assert re.search(r"id 'nf-schema@\d+\.\d+\.\d+'", text), "nf-schema must be pinned"
    assert "failUnrecognisedParams  = true" in text or re.search(r"failUnrecognisedParams\s*=\s*true", text)
    assert re.search(r"help\s*\{\s*enabled\s*=\s*true", text)
    assert '"${params.publish_dir}/trace.txt"' in text  # OpenProblems' process_task_results reads input_execution: trace.txt
    for profile in ("local", "docker", "singularity", "awsbatch", "google_batch", "slurm", "test"):
        assert re.search(rf"^\s*{profile}\s*\{{", text, re.M), f"no profile {profile}"
    main = MAIN_NF.read_text()
    assert "validateParameters()" in main and "include { validateParameters } from 'plugin/nf-schema'" in main
    assert "workflow process_datasets" in main and "params.datasets_dir" in main
    assert "write_state" in (ROOT / "perturbcast" / "plan_cli.py").read_text() and "--state-id" in main


def test_image_builds_cover_every_component_and_the_tooling_image():
    script = (ROOT / "scripts" / "build_images.sh").read_text()
    assert "perturbcast:$TAG" in script and 'TAG="dev"' in script and "viash ns build" in script
    assert "src/*/*/config.vsh.yaml" in script
    workflows = list((ROOT / ".github" / "workflows").glob("*.yml"))
    text = "\n".join(w.read_text() for w in workflows)
    assert "scripts/build_images.sh" in text and "-profile test,docker" in text
    assert "branches: [main]" in text and 'tags: ["v*"]' in text


# ---------------------------------------------------------------- the plan: one planner for both engines

def _as_json(step: engine.Step, output: Path) -> dict:
    rel = lambda v: v.relative_to(output).as_posix() if isinstance(v, Path) and v.is_relative_to(output) else v  # noqa: E731
    return {"id": step.id, "stage": step.stage, "component": step.component.name,
            "inputs": {k: rel(v) for k, v in step.inputs.items()}, "outputs": {k: rel(v) for k, v in step.outputs.items()},
            "arguments": {k: rel(v) for k, v in step.arguments.items()}, "depends": step.depends, "labels": step.labels,
            "resource_labels": component_labels(step.component),
            "config": step.component.path.relative_to(ROOT).as_posix()}


def _from_plan(step: dict) -> dict:
    return {"id": step["id"], "stage": step["stage"], "component": step["component"]["name"],
            "inputs": step["inputs"], "outputs": step["outputs"], "arguments": {**step["staged"], **step["arguments"]},
            "depends": step["depends"], "labels": step["labels"], "resource_labels": step["resource_labels"],
            "config": step["component"]["config"]}


SELECTIONS = {
    "default": ([], engine.Selection()),
    "subset": (["--tasks", "unseen_perturbation,unseen_combination", "--methods", "linear_baseline", "--metrics",
                "delta_error", "--seeds", "0", "1", "--n-folds", "3", "--folds", "0", "2"], None),
    "datasets": (["--datasets", "simulated_grn", "--tasks", "cell_type_transfer"], None),
    # prior steps (per dataset) and the variants that read them, as any other stage
    "priors": (["--datasets", "norman2019_devel", "--tasks", "unseen_perturbation", "--methods", "linear_baseline",
                "--metrics", "delta_error", "--priors", "go_embedding", "--n-folds", "2"], None),
    "spec": (["--spec", "{spec}"], None),  # the selection of the emulated run below, as a spec file
}
SPEC = {"datasets": [{"id": "simulated_grn", "arguments": {"n_genes": 60}}], "tasks": ["unseen_perturbation"],
        "methods": ["train_mean"], "metrics": ["delta_error", "weighted_error"], "n_folds": 2, "seeds": [0, 3]}


def _engine_selection(args: list[str]) -> engine.Selection:
    from perturbcast.cli import build_parser
    from perturbcast.engine_cli import selection_from_args

    parsed = build_parser().parse_args(["benchmark", *args])
    _, selection, code = selection_from_args(parsed, "benchmark")
    assert selection is not None, code
    return selection


@pytest.mark.parametrize("name", sorted(SELECTIONS))
def test_plan_json_equals_engine_plan(name, tmp_path):
    args, _ = SELECTIONS[name]
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(SPEC))
    args = [a.replace("{spec}", str(tmp_path / "spec.yaml")) for a in args]
    document = json.loads(perturbcast("plan", "--json", "--output", tmp_path, *args).stdout)
    steps, declared = engine.plan(ROOT, tmp_path.resolve(), _engine_selection(args))
    component_steps = [s for s in document["steps"] if s["stage"] != "check"]
    assert [_from_plan(s) for s in component_steps] == [_as_json(s, tmp_path.resolve()) for s in steps]
    assert [r["id"] for r in document["not_applicable"]] == [r.id for r in declared]
    # the checks: one per split, one per complete partition
    checks = [s for s in document["steps"] if s["stage"] == "check"]
    assert {c["guards"] for c in checks if c["kind"] == "split"} == {s.id for s in steps if s.stage == "split"}
    if name == "default":
        # main.nf's tasks: one per step but the score steps, one per score unit (and PLAN, AGGREGATE); the default
        # metrics share one image, so one SCORE task per prediction (1294 -> 394 tasks when this was written)
        from perturbcast.steps import image_key
        predictions = [s for s in steps if s.stage == "predict"]
        images = {image_key(s.component) for s in steps if s.stage == "score"}
        scores = [s for s in document["steps"] if s["stage"] == "score"]
        assert len(document["score_units"]) == len(predictions) * len(images) < len(scores)
        print(f"default run: {len(document['steps'])} tasks with a task per score step, "
              f"{len(document['steps']) - len(scores) + len(document['score_units'])} with score units")
    for step in document["steps"]:
        assert not Path(str(step["directory"])).is_absolute()
        assert all(not Path(v).is_absolute() for v in {**step["inputs"], **step["outputs"]}.values())


def test_score_units_batch_each_predictions_metrics_by_image(tmp_path):
    """One SCORE task per prediction and image (steps.score_units, shared with the engine's worker jobs): every
    score step in exactly one unit; limma_de (R image) apart from the Python metrics."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"datasets": ["simulated_grn"], "tasks": ["unseen_perturbation"],
                                    "methods": ["train_mean"], "metrics": ["delta_error", "weighted_error", "limma_de"],
                                    "n_folds": 2}))
    plan = json.loads(perturbcast("plan", "--json", "--spec", spec).stdout)
    predictions = [s["id"] for s in plan["steps"] if s["stage"] == "predict"]
    scores = [s for s in plan["steps"] if s["stage"] == "score"]
    assert len(scores) == 3 * len(predictions)
    units = plan["score_units"]
    assert len(units) == 2 * len(predictions)
    members = [[m["component"]["name"] for m in u["steps"]] for u in units]
    assert sorted(map(tuple, members)) == sorted([("delta_error", "weighted_error"), ("limma_de",)] * len(predictions))
    assert sorted(m["id"] for u in units for m in u["steps"]) == sorted(s["id"] for s in scores)
    for unit in units:
        assert {m["unit"] for m in unit["steps"]} == {unit["id"]}
        assert unit["depends"] == unit["steps"][0]["depends"] and unit["depends"][0] in predictions
        assert set(unit["inputs"].values()) == {p for m in unit["steps"] for p in m["inputs"].values()}
        assert all(Path(m["directory"]).parent.as_posix() == unit["directory"] for m in unit["steps"])
    # the engine runs the same units as its worker jobs
    from perturbcast.engine_run import _units
    steps, _ = engine.plan(ROOT, tmp_path.resolve(), _engine_selection(["--spec", str(spec)]))
    jobs = [[s.id for s in job] for job in _units([s for s in steps if s.stage == "score"], True)]
    assert sorted(jobs) == sorted([m["id"] for m in u["steps"]] for u in units)
    # the largest label of each kind a member carries: limma_de's own, the Python pair's (both lowmem) own
    from perturbcast.engine_guard import merged_labels
    assert merged_labels([["lowcpu", "lowmem", "lowtime"], ["midtime", "midmem", "lowcpu"], ["gpu"]]) == [
        "gpu", "lowcpu", "midmem", "midtime"]


def test_plan_reads_a_spec_with_own_files_excludes_and_test_arguments(tmp_path, tiny_common_dataset):
    shutil.copy(tiny_common_dataset, tmp_path / "mine.h5ad")
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "datasets": ["simulated_grn", {"file": "mine.h5ad", "id": "mine"}], "tasks": ["unseen_perturbation"],
        "methods": "train_mean,linear_baseline", "exclude_methods": ["random_perturbation"], "metrics": ["delta_error"],
        "n_folds": 2, "use_test_arguments": True, "publish_dir": "results", "max_retries": 1}))
    document = json.loads(perturbcast("plan", "--json", "--project", ROOT, "--spec", spec, cwd=tmp_path).stdout)
    dataset_steps = {s["id"]: s for s in document["steps"] if s["stage"] == "dataset"}
    loader = discover_components(ROOT, errors=[])
    test_arguments = next(c for c in loader if c.name == "simulated_grn").info["test_arguments"]
    assert {k: dataset_steps["dataset/simulated_grn"]["arguments"][k] for k in test_arguments} == test_arguments
    own = dataset_steps["dataset/mine"]
    assert own["staged"] == {"input": str((tmp_path / "mine.h5ad").resolve())} and "input" not in own["arguments"]
    methods = {s["labels"]["method_id"] for s in document["steps"] if s["stage"] == "predict"}
    assert "linear_baseline" in methods and "random_perturbation" not in methods and "train_mean" in methods
    bad = perturbcast("plan", "--json", "--project", ROOT, "--exclude-methods", "no_such_method", check=False)
    assert bad.returncode != 0 and "no_such_method" in bad.stderr


@pytest.fixture
def tiny_common_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "dataset.h5ad"
    result = subprocess.run([sys.executable, "-m", "perturbcast", "run", "src/datasets/simulated_grn", "--",
                             "--output", str(out), "--n_genes", "40", "--n_regulators", "8", "--n_perturbed_genes", "8",
                             "--n_combos", "4", "--cells_per_perturbation", "10", "--n_control_cells", "30"],
                            cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


# ---------------------------------------------------------------- the parameter schema

TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "array": list, "object": dict,
         "null": type(None)}


def _type_ok(value, kind) -> bool:
    if kind in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, TYPES[kind])


def check_value(schema: dict, value, where: str) -> list[str]:
    """The draft 2020-12 keywords nextflow_schema.json uses: type (one or a list), enum, minimum, items, oneOf,
    properties with additionalProperties."""
    errors = []
    kinds = schema.get("type")
    if kinds is not None:
        kinds = kinds if isinstance(kinds, list) else [kinds]
        if not any(_type_ok(value, k) for k in kinds):
            return [f"{where} ({value!r}): expected {' or '.join(kinds)}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where} ({value!r}): expected one of {schema['enum']}")
    if "minimum" in schema and isinstance(value, (int, float)) and value < schema["minimum"]:
        errors.append(f"{where} ({value!r}): below {schema['minimum']}")
    if "oneOf" in schema:
        matching = [s for s in schema["oneOf"] if not check_value(s, value, where)]
        if len(matching) != 1:
            errors.append(f"{where} ({value!r}): matches {len(matching)} of oneOf")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            errors += check_value(schema["items"], item, f"{where}[{index}]")
    if isinstance(value, dict) and "properties" in schema:
        for key, item in value.items():
            if key in schema["properties"]:
                errors += check_value(schema["properties"][key], item, f"{where}.{key}")
            elif schema.get("additionalProperties") is False:
                errors.append(f"{where}.{key}: not allowed")
    return errors


def schema_properties(schema: dict) -> dict:
    properties = dict(schema.get("properties") or {})
    for ref in schema.get("allOf") or []:
        name = ref["$ref"].split("/")[-1]
        properties.update(schema["$defs"][name]["properties"])
    return properties


def validate_params(params: dict, schema: dict | None = None) -> list[str]:
    """nf-schema's validateParameters() with validation.failUnrecognisedParams = true, as far as this schema needs:
    an unknown parameter is an error; known ones are type-checked (null = not set)."""
    schema = schema or json.loads(SCHEMA.read_text())
    properties = schema_properties(schema)
    errors = []
    for name, value in params.items():
        if name not in properties:
            close = [p for p in properties if p[:3] == name[:3] or sorted(p) == sorted(name)]
            errors.append(f"--{name}: not a parameter of this pipeline" + (f" (did you mean --{close[0]}?)" if close else ""))
        elif value is not None:
            errors += check_value(properties[name], value, f"--{name}")
    return errors


def test_schema_lists_every_parameter_with_its_default():
    schema = json.loads(SCHEMA.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    properties = schema_properties(schema)
    params = config_params()
    assert set(params) == set(properties), (sorted(set(params) - set(properties)), sorted(set(properties) - set(params)))
    for name, value in params.items():
        assert properties[name].get("description"), f"--{name} has no description"
        if value is not None and "default" in properties[name]:
            assert properties[name]["default"] == value, (name, properties[name]["default"], value)
    assert validate_params(params) == []


def test_schema_rejects_unknown_misspelled_and_mistyped_parameters():
    params = config_params()
    errors = validate_params({**params, "mehtods": "linear_baseline"})
    assert errors and "--mehtods" in errors[0] and "--methods" in errors[0]
    assert validate_params({**params, "method": "linear_baseline"})
    assert validate_params({**params, "n_folds": "three"})
    assert validate_params({**params, "n_folds": 1})
    assert validate_params({**params, "publish_mode": "teleport"})
    assert validate_params({**params, "datasets": [{"id": "x", "fiel": "x.h5ad"}]})


def test_a_spec_file_is_a_valid_params_file():
    """Issue 14: the YAML of `perturbcast benchmark --spec` works as `nextflow run . -params-file`."""
    spec = {"datasets": ["norman2019_devel", {"id": "datlinger2017", "arguments": {"n_top_genes": 1000}},
                         {"file": "data/my_screen.h5ad", "id": "my_screen", "arguments": {"perturbation_column": "target_gene"}}],
            "tasks": ["unseen_perturbation"], "methods": ["linear_baseline", "train_mean"],
            "metrics": "delta_error,delta_correlation", "seeds": [0, 1], "n_folds": 5, "folds": [0],
            "publish_dir": "results/mine", "max_retries": 1}
    assert validate_params({**config_params(), **spec}) == []
    from perturbcast.spec import ENGINE_KEYS, nextflow_params
    assert ENGINE_KEYS <= set(schema_properties(json.loads(SCHEMA.read_text())))
    assert nextflow_params(ROOT) == set(config_params())


# ---------------------------------------------------------------- main.nf's functions, run with Groovy

FUNCTIONS_BEGIN = "// ==================================================================== functions: wiring from the plan"
FUNCTIONS_END = "// ==================================================================== generated by"


JSON_OUTPUT_STUB = r'''package groovy.json
class JsonOutput {
    static String toJson(Object value) {
        if (value == null) return 'null'
        if (value instanceof Map) return '{' + value.collect { k, v -> toJson(k.toString()) + ':' + toJson(v) }.join(',') + '}'
        if (value instanceof Collection) return '[' + value.collect { toJson(it) }.join(',') + ']'
        if (value instanceof Boolean || value instanceof Number) return value.toString()
        def text = value.toString().replace('\\', '\\\\').replace('"', '\\"').replace('\n', '\\n').replace('\t', '\\t')
        return '"' + text + '"'
    }
}
'''


def groovy_literal(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value).replace("$", "\\$")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(groovy_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "[" + (", ".join(f"{groovy_literal(str(k))}: {groovy_literal(v)}" for k, v in value.items()) or ":") + "]"
    raise TypeError(type(value))


def _groovy_jar() -> Path | None:
    jar = Path(os.environ.get("GROOVY_JAR", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                              / "nf-check" / "groovy-4.0.26.jar"))
    return jar if jar.is_file() and shutil.which("java") else None


def run_groovy(code: str, tmp_path: Path) -> str:
    """main.nf's functions (plain Groovy: no process or channel is called) followed by `code`."""
    jar = _groovy_jar()
    if jar is None:
        pytest.skip("needs java and the Groovy jar of nf-check (run ../shared/tools/nf-check once)")
    text = MAIN_NF.read_text()
    selection = re.search(r"^SELECTION_KEYS = \[.*?\]", text, re.S | re.M).group(0)
    functions = text[text.index(FUNCTIONS_BEGIN):text.index(FUNCTIONS_END)]
    script = tmp_path / "functions.groovy"
    script.write_text(selection + "\n" + functions + "\n" + code + "\n")
    # groovy-json ships with Nextflow, not in nf-check's core jar: small stand-ins (JSON out; nothing read here)
    stubs = tmp_path / "stubs" / "groovy" / "json"
    stubs.mkdir(parents=True, exist_ok=True)
    (stubs / "JsonOutput.groovy").write_text(JSON_OUTPUT_STUB)
    (stubs / "JsonSlurper.groovy").write_text(
        "package groovy.json\nclass JsonSlurper {\n    Object parseText(String text) { throw new UnsupportedOperationException() }\n}\n")
    result = subprocess.run(["java", "-cp", f"{jar}{os.pathsep}{tmp_path / 'stubs'}", "groovy.ui.GroovyMain", str(script)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_main_nf_functions_name_images_and_write_the_spec(tmp_path):
    out = run_groovy("""
def p = [container_registry: 'ghcr.io', container_organization: 'openproblems-bio', package_name: 'task_x',
         component_version: null, tooling_container: null, datasets: ['a', [id: 'b', arguments: [n: 1]]],
         tasks: 'unseen_perturbation', methods: null, seeds: '0,1', n_folds: 3, folds: '', use_test_arguments: true,
         publish_dir: 'out', max_retries: 2]
println imageName([namespace: 'methods', name: 'linear_baseline', version: 'dev'], p)
println toolingImage(p, '1.0')
println labelKey([resource_labels: ['lowtime', 'lowmem', 'lowcpu']])
println inputPaths([inputs: [input_train: 'a/train.h5ad', input_test: 'a/test.h5ad'], staged: [input: '/x/y.h5ad']]).join(';')
println planSpec(p)
""", tmp_path).splitlines()
    assert out[0] == "ghcr.io/openproblems-bio/task_x/methods/linear_baseline:dev"
    assert out[1] == "ghcr.io/openproblems-bio/task_x/perturbcast:1.0"
    assert out[2] == "lowcpu,lowmem,lowtime"
    assert out[3] == "a/train.h5ad;a/test.h5ad;/x/y.h5ad"
    assert json.loads(out[4]) == {"datasets": ["a", {"id": "b", "arguments": {"n": 1}}], "tasks": "unseen_perturbation",
                                  "seeds": "0,1", "n_folds": 3, "use_test_arguments": True}


def step_scripts(steps: list[dict], tmp_path: Path, container_engine: str | None = None,
                 cache_dir: str | None = None) -> dict[str, str]:
    """main.nf's task script (stepScript) of each component step or score unit, as the processes write it."""
    out = run_groovy(f"""
def steps = {groovy_literal(steps)}
def p = [python: {json.dumps(sys.executable)}, max_retries: 2, fail_fast: false, cache_dir: {groovy_literal(cache_dir)}]
steps.each {{ step -> println(step.id + '\\t' + stepScript(step, 1, 2, 4096, p, {groovy_literal(container_engine)}).bytes.encodeBase64().toString()) }}
""", tmp_path)
    import base64
    return {line.split("\t")[0]: base64.b64decode(line.split("\t")[1]).decode() for line in out.splitlines() if "\t" in line}


# ---------------------------------------------------------------- an emulated Nextflow run vs the engine

def _stage_project(task: Path, component_dirs: list[Path], root: Path = ROOT):
    project = task / "project"
    (project / "src").mkdir(parents=True)
    os.symlink(root / "_viash.yaml", project / "_viash.yaml")
    os.symlink(ROOT / "perturbcast", project / "perturbcast")
    for shared in ("api", "utils"):
        os.symlink(root / "src" / shared, project / "src" / shared)
    if component_dirs:
        (project / "src" / "component").mkdir()
    for component_dir in component_dirs:
        os.symlink(component_dir, project / "src" / "component" / component_dir.name)


def _stage_inputs(task: Path, files: list[Path]):
    """As `path(x, stageAs: 'staged/in*/*')`: staged/in1/<name>, staged/in2/<name>, ..."""
    for index, source in enumerate(files, start=1):
        (task / "staged" / f"in{index}").mkdir(parents=True)
        os.symlink(source, task / "staged" / f"in{index}" / source.name)


def _publish(task: Path, directory: str, publish: Path, patterns=("*.h5ad", "step.json", "log.txt",
                                                                   "dataset_uns.yaml", "state.yaml", "check.json",
                                                                   "partition_check.json")):
    """publishDir: the declared outputs, at their path relative to the task folder."""
    for pattern in patterns:
        for made in (task / directory).glob(pattern):
            if made.is_symlink():
                continue  # a linked input, not an output
            target = publish / directory / made.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(made, target)


def emulated_tasks(plan: dict) -> list[dict]:
    """What main.nf makes a task of: every step of the plan but the score steps, and one task per score unit."""
    return [s for s in plan["steps"] if s["stage"] != "score"] + plan["score_units"]


def emulate_nextflow(plan: dict, publish: Path, work: Path, scripts: dict | None = None, root: Path = ROOT,
                     env: dict | None = None) -> list[str]:
    """Every task of `plan` as main.nf runs it (its task script from `scripts` where given); returns the ids of
    the tasks that ran (a score unit's id for its member steps)."""
    scripts = scripts or {}
    ran = []
    passed = set()
    order = {"dataset": 0, "split": 1, "check": 2, "prior": 3, "predict": 4, "score": 5}
    for number, step in enumerate(sorted(emulated_tasks(plan), key=lambda s: order[s["stage"]])):
        inputs = [publish / p for p in step["inputs"].values()]
        if not all(p.exists() for p in inputs):
            continue  # an upstream step made nothing: this one never starts
        if step["stage"] in ("predict", "score") and not any(d in passed or d.startswith("predict/") for d in step["depends"]):
            continue
        # a prior learnt from a split takes the checked split's files (main.nf: checkedSplitFiles)
        if step["stage"] == "prior" and any(d.startswith("split/") and d not in passed for d in step["depends"]):
            continue
        if step["stage"] == "score" and step["depends"][0].replace("predict/", "split/").rsplit("/", 1)[0] not in passed:
            continue
        task = work / f"{number:04d}"
        task.mkdir(parents=True)
        members = step.get("steps") or [step]
        _stage_project(task, [root / m["component"]["dir"] for m in members if m["component"]], root)
        _stage_inputs(task, inputs + [Path(p) for p in step["staged"].values()])
        (task / "plan_step.json").write_text(json.dumps(step))
        if step.get("steps"):
            command = ["step", "plan_step.json", "--components", "project/src/component", "--attempt", "1",
                       "--max-attempts", "3"]
        elif step["component"]:
            command = ["step", "plan_step.json", "--component", f"project/src/component/{step['component']['name']}",
                       "--attempt", "1", "--max-attempts", "3"]
        else:
            command = ["step", "plan_step.json"]
        if step["id"] in scripts:
            command = ["bash", "-euo", "pipefail", "-c", scripts[step["id"]]]
        else:
            command = [sys.executable, "-m", "perturbcast", *command]
        result = subprocess.run(command, cwd=task, capture_output=True, text=True,
                                env={**os.environ, "PYTHONPATH": str(task / "project"),
                                     "VIASH_TEMP": str(task / ".viash_temp"), **(env or {})})
        assert result.returncode == 0, f"{step['id']}:\n{result.stdout}\n{result.stderr}"
        for member in members:
            _publish(task, member["directory"], publish)
        if step["stage"] == "check" and step["kind"] == "split":
            if json.loads((task / step["directory"] / "check.json").read_text())["status"] == "ok":
                passed.add(step["guards"])
        ran.append(step["id"])
    return ran


def emulate_aggregate(plan_path: Path, publish: Path, work: Path, root: Path = ROOT) -> Path:
    """AGGREGATE: step records, logs, dataset uns and score files staged, then its command."""
    task = work / "aggregate"
    task.mkdir(parents=True)
    _stage_project(task, [], root)
    os.unlink(task / "project" / "src" / "api")
    os.unlink(task / "project" / "src" / "utils")
    os.rmdir(task / "project" / "src")
    os.symlink(root / "src", task / "project" / "src")
    names = ("step.json", "check.json", "partition_check.json", "log.txt", "dataset_uns.yaml", "score.h5ad")
    paths = sorted(str(p.relative_to(publish)) for p in publish.rglob("*") if p.name in names
                   and not (p.name == "score.h5ad" and not p.parent.relative_to(publish).parts[0] == "scores"))
    _stage_inputs(task, [publish / p for p in paths])
    (task / "staged_paths.json").write_text(json.dumps(paths))
    (task / "pipeline_info").mkdir()
    shutil.copy(plan_path, task / "pipeline_info" / "plan.json")
    root = os.path.dirname(os.path.realpath(task / "project" / "src"))  # as AGGREGATE's script finds it
    result = subprocess.run([sys.executable, "-m", "perturbcast", "aggregate", ".", "--project", root, "--plan",
                             "pipeline_info/plan.json", "--staged", "staged", "--staged-paths", "staged_paths.json",
                             "--state-id", "emulated", "--n-resamples", "50"],
                            cwd=task, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(task / "project")})
    assert result.returncode == 0, result.stdout + result.stderr
    return task


def _sections(html: str) -> dict[str, str]:
    """id -> text (tags and numbers that measure this run's time or memory left out) of each report section."""
    sections = {}
    for match in re.finditer(r'<section id="([\w-]+)"(.*?)</section>', html, re.S):
        text = re.sub(r"<[^>]+>", " ", match.group(2))
        sections[match.group(1)] = " ".join(text.split())
    return sections


def test_nextflow_layout_aggregates_like_the_engine(tmp_path):
    """The engine's run and an emulated Nextflow run of the same spec give the same tables, OpenProblems files and
    report sections (cost and failures included: a metric that fails on purpose is in both)."""
    import pandas as pd

    project = tmp_path / "project"
    project.mkdir()
    for name in ("_viash.yaml", "nextflow.config"):
        shutil.copy(ROOT / name, project)
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "tests" / "fixtures" / "fault_components" / "metrics" / "delta_exit",
                    project / "src" / "metrics" / "delta_exit")
    # with delta_error's image (engines), so the two share a score unit: one task, where delta_exit fails alone
    exiting = yaml.safe_load((project / "src" / "metrics" / "delta_exit" / "config.vsh.yaml").read_text())
    exiting["engines"] = yaml.safe_load((ROOT / "src" / "metrics" / "delta_error" / "config.vsh.yaml").read_text())["engines"]
    (project / "src" / "metrics" / "delta_exit" / "config.vsh.yaml").write_text(yaml.safe_dump(exiting, sort_keys=False))
    # a method that fails: its score steps are skipped, blocked by it
    shutil.copytree(ROOT / "tests" / "fixtures" / "fault_components" / "methods" / "needs_argument",
                    project / "src" / "methods" / "needs_argument")
    loader = next(c for c in discover_components(ROOT, errors=[]) if c.name == "simulated_grn")
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"datasets": [{"id": "simulated_grn", "arguments": loader.info["test_arguments"]}],
                                    "tasks": ["unseen_perturbation"], "methods": ["train_mean", "needs_argument",
                                                                                  "ridge_regulators"],
                                    "metrics": ["delta_error", "delta_exit"], "n_folds": 2,
                                    # a prior learnt from each split, read by ridge_regulators' variant
                                    "priors": ["coexpression_network"]}))
    engine_out = tmp_path / "engine"
    engine_run = perturbcast("benchmark", "--project", project, "--spec", spec, "--output", engine_out, "--jobs", "2",
                             "--n-resamples", "50", check=False)
    assert engine_run.returncode == 1, engine_run.stderr[-2000:]  # needs_argument and delta_exit fail on purpose

    plan_path = tmp_path / "plan.json"
    plan_path.write_text(perturbcast("plan", "--json", "--project", project, "--spec", spec).stdout)
    plan = json.loads(plan_path.read_text())
    publish = tmp_path / "publish"
    scripts = step_scripts([s for s in emulated_tasks(plan) if s["component"]], tmp_path) if _groovy_jar() else {}
    ran = emulate_nextflow(plan, publish, tmp_path / "work", scripts, project)
    assert any(s.startswith("check/partition/") for s in ran) and any(s.startswith("score_unit/") for s in ran)
    assert sum(s.startswith("prior/") for s in ran) == 2 and any(s.endswith("/ridge_regulators+coexpression_network")
                                                                for s in ran)
    # one unit of its 2 metrics per prediction (2 folds x the methods and the controls a selection always gets);
    # the units of needs_argument's failed predictions never start
    units = plan["score_units"]
    predictions = [s for s in plan["steps"] if s["stage"] == "predict"]
    assert len(predictions) >= 4 and len(units) == len(predictions)
    assert all([m["component"]["name"] for m in u["steps"]] == ["delta_error", "delta_exit"] for u in units)
    scores = [s for s in plan["steps"] if s["stage"] == "score"]
    assert len(emulated_tasks(plan)) == len(plan["steps"]) - len(scores) + len(units) == len(plan["steps"]) - len(units)
    assert sorted(r for r in ran if r.startswith("score")) == sorted(
        u["id"] for u in units if u["labels"]["method_id"] != "needs_argument")
    task = emulate_aggregate(plan_path, publish, tmp_path / "work", project)

    for name in ("results.parquet",):
        ours, theirs = pd.read_parquet(task / name), pd.read_parquet(engine_out / name)
        keys = [c for c in theirs.columns if theirs[c].dtype == object]
        pd.testing.assert_frame_equal(ours.sort_values(keys).reset_index(drop=True),
                                      theirs.sort_values(keys).reset_index(drop=True), check_like=True)
    for name in ("score_uns.yaml", "dataset_uns.yaml", "method_configs.yaml", "metric_configs.yaml", "task_info.yaml"):
        ours, theirs = yaml.safe_load((task / name).read_text()), yaml.safe_load((engine_out / name).read_text())
        assert ours == theirs, name
        assert ours, f"{name} is empty"
    ours = pd.read_csv(task / "trace.tsv", sep="\t", keep_default_na=False)
    theirs = pd.read_csv(engine_out / "trace.tsv", sep="\t", keep_default_na=False)
    columns = ["step", "stage", "component", "status", "exit_code", "reason", "blocked_by", "blocked_by_status"]
    for table in (ours, theirs):
        table["exit_code"] = [str(int(float(x))) if str(x) != "" else "" for x in table["exit_code"]]
    assert ours[columns].astype(str).values.tolist() == theirs[columns].astype(str).values.tolist()
    assert (ours["wall_seconds"] > 0).any() and (ours["peak_rss_mib"] > 0).any()
    skipped = ours[ours["status"] == "skipped"]
    assert len(skipped) and (skipped["blocked_by"].str.startswith("predict/") & (skipped["blocked_by_status"] == "failed")).all()

    html_ours, html_theirs = (task / "report.html").read_text(), (engine_out / "report.html").read_text()
    sections_ours, sections_theirs = _sections(html_ours), _sections(html_theirs)
    assert list(sections_ours) == list(sections_theirs)
    for section in ("cost", "failures"):
        assert section in sections_ours and "No trace.tsv" not in sections_ours[section], sections_ours.get(section)
    assert "delta_exit" in sections_ours["failures"] and "exit code 3 on purpose" in sections_ours["failures"]
    # the report groups the skipped steps by their root cause (blocked_by) as on the engine's output
    from perturbcast.report.tables import failure_tables
    groups_ours, groups_theirs = failure_tables(ours)["skipped"], failure_tables(theirs)["skipped"]
    assert groups_ours.astype(str).values.tolist() == groups_theirs.astype(str).values.tolist()
    # one group per failing component (its first root named, the others counted), holding every skipped step
    assert set(groups_ours["cause"]) <= set(skipped["blocked_by"].unique())
    assert groups_ours["roots"].sum() == skipped["blocked_by"].nunique()
    assert sum(len(steps) for steps in groups_ours["steps"]) == len(skipped)
    assert (ours["status"] == "failed").sum() == (theirs["status"] == "failed").sum() > 0
    # in each unit that ran, delta_exit failed alone: delta_error's score of the same task is kept
    statuses = dict(zip(ours["step"], ours["status"]))
    for unit in units:
        if unit["labels"]["method_id"] != "needs_argument":
            assert [statuses[m["id"]] for m in unit["steps"]] == ["ok", "failed"]
            assert (publish / unit["steps"][0]["directory"] / "score.h5ad").is_file()
    dataset_state = yaml.safe_load((publish / "datasets" / "simulated_grn" / "state.yaml").read_text()
                                   .replace("!file ", ""))
    assert dataset_state == {"id": "simulated_grn", "output_dataset": "dataset.h5ad"}
    # a split's state: an input state of src/workflows/run_benchmark (OpenProblems' --input_states, --rename_keys)
    split = next(s for s in plan["steps"] if s["id"] == "split/simulated_grn/unseen_perturbation/seed_0/fold_1")
    split_state = yaml.safe_load((publish / split["directory"] / "state.yaml").read_text().replace("!file ", ""))
    assert split_state == {"id": "simulated_grn/unseen_perturbation/seed_0/fold_1", "dataset_id": "simulated_grn",
                           "task_id": "unseen_perturbation", "output_train": "train.h5ad", "output_test": "test.h5ad",
                           "output_solution": "solution.h5ad"}
    state = (task / "state.yaml").read_text()
    assert "id: 'emulated'" in state and "output_scores: !file 'score_uns.yaml'" in state


# ---------------------------------------------------------------- records of lost tasks, Nextflow's trace

def test_records_of_lost_tasks_and_nextflow_trace(tmp_path):
    from perturbcast.plan_cli import _parse_duration, _parse_memory, nextflow_trace, records_from_layout

    assert _parse_duration("1h 2m 3s") == 3723 and _parse_duration("850ms") == 0.85 and _parse_duration("2.5s") == 2.5
    assert _parse_duration("1500") == 1.5 and _parse_duration("-") is None
    assert _parse_memory("1 GB") == 2**30 and _parse_memory("12.5 MB") == int(12.5 * 2**20) and _parse_memory("100") == 100
    plan = {"steps": [
        {"id": "dataset/d", "stage": "dataset", "component": {"name": "loader"}, "directory": "datasets/d",
         "inputs": {}, "outputs": {"output": "datasets/d/dataset.h5ad"}, "depends": [], "labels": {"dataset_id": "d"}},
        {"id": "split/d/t/seed_0", "stage": "split", "component": {"name": "t"}, "directory": "tasks/d/t/seed_0",
         "inputs": {"input": "datasets/d/dataset.h5ad"}, "outputs": {}, "depends": ["dataset/d"], "labels": {}},
    ], "not_applicable": [], "broken_configs": []}
    (tmp_path / "trace.txt").write_text("task_id\ttag\tstatus\texit\tattempt\trealtime\tpeak_rss\n"
                                        "1\tdataset/d\tFAILED\t137\t1\t2s\t1 GB\n2\tdataset/d\tFAILED\t137\t3\t4s\t3 GB\n")
    records = records_from_layout(plan, tmp_path, nextflow_trace(tmp_path / "trace.txt"))
    assert records[0].status == "failed" and "exit code 137" in records[0].reason and "attempt 3" in records[0].reason
    assert records[1].status == "skipped" and records[1].reason == "upstream dataset/d failed"
    assert records[1].blocked_by == {"step": "dataset/d", "status": "failed"}  # as the engine's


def test_a_leaky_split_fails_and_blocks_the_steps_below(tmp_path):
    """A split whose check failed is failed, and the prediction Nextflow then never ran is skipped, blocked by it
    (the plan lists the checks after every component step)."""
    from perturbcast.plan_cli import records_from_layout

    split = {"id": "split/d/t/seed_0", "stage": "split", "component": {"name": "t"}, "directory": "tasks/d/t/seed_0",
             "inputs": {}, "outputs": {}, "depends": [], "labels": {}}
    predict = {"id": "predict/d/t/seed_0/m", "stage": "predict", "component": {"name": "m"},
               "directory": "predictions/d/t/seed_0/m", "inputs": {}, "outputs": {}, "depends": [split["id"]], "labels": {}}
    check = {"id": "check/split/d/t/seed_0", "stage": "check", "kind": "split", "directory": "tasks/d/t/seed_0",
             "guards": split["id"], "depends": [split["id"]], "labels": {}}
    (tmp_path / split["directory"]).mkdir(parents=True)
    (tmp_path / split["directory"] / "step.json").write_text(json.dumps(
        {"id": split["id"], "stage": "split", "component": "t", "status": "ok", "exit_code": 0}))
    (tmp_path / split["directory"] / "check.json").write_text(json.dumps({"status": "failed", "problems": ["A in train"]}))
    records = records_from_layout({"steps": [split, predict, check]}, tmp_path)
    assert [(r.id, r.status, r.reason) for r in records] == [
        (split["id"], "failed", "leakage: A in train"), (predict["id"], "skipped", "upstream split/d/t/seed_0 failed")]
    assert records[1].blocked_by == {"step": split["id"], "status": "failed"}


def test_staged_files_keep_the_order_main_nf_listed(tmp_path):
    from perturbcast.step_cli import _staged_files

    for index in (1, 2, 10, 11, 3):
        (tmp_path / f"in{index}").mkdir()
        (tmp_path / f"in{index}" / f"f{index}.h5ad").write_text("")
    assert [p.name for p in _staged_files(tmp_path)] == ["f1.h5ad", "f2.h5ad", "f3.h5ad", "f10.h5ad", "f11.h5ad"]


def test_a_killed_step_is_retried_then_recorded(tmp_path, monkeypatch):
    """Exit code 137 before the last attempt: `perturbcast step` exits 137 (Nextflow retries with more memory);
    on the last attempt it records the failure and exits 0 (the rest of the benchmark runs)."""
    from types import SimpleNamespace

    from perturbcast import runner, step_cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(runner, "run_component", lambda *a, **k: runner.RunResult(-9, 1.5, 2**20))
    step = {"id": "predict/d/t/seed_0/m", "stage": "predict", "directory": "predictions/d/t/seed_0/m",
            "component": {"name": "m", "dir": "src/methods/m", "digest": "x"}, "inputs": {}, "staged": {},
            "outputs": {"output": "predictions/d/t/seed_0/m/prediction.h5ad"}, "arguments": {}, "labels": {}}
    args = lambda attempt: SimpleNamespace(staged="staged", component="c", project="project", attempt=attempt,  # noqa: E731
                                           max_attempts=3, cpus=None, memory=None, fail_fast=False)
    assert step_cli.run_component_step(step, args(1)) == 137
    assert not (tmp_path / step["directory"] / "step.json").exists()
    assert step_cli.run_component_step(step, args(3)) == 0
    record = json.loads((tmp_path / step["directory"] / "step.json").read_text())
    assert record["status"] == "failed" and "exit code 137" in record["reason"] and record["attempt"] == 3


# ---------------------------------------------------------------- a loader task in a container, as any user

def test_a_loader_task_downloads_with_an_unwritable_home(tmp_path):
    """A dataset task as main.nf writes it for a container (docker runs as the launching user, whose HOME is not
    writable there): the task's own HOME, cache and VIASH_TEMP, and the loader's real download path (fetch:
    request, checksum against the pinned sha256, cache record) on the source file served on 127.0.0.1 (through
    PERTURBCAST_MIRROR). The same task without main.nf's script fails: its cache would be under HOME."""
    import threading
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from conftest import shared_file

    source = shared_file("perturbench_devel.h5ad")
    if _groovy_jar() is None:
        pytest.skip("needs java and the Groovy jar of nf-check (run ../shared/tools/nf-check once)")
    url_path = "raw.githubusercontent.com/altoslabs/perturbench/d357dfae/src/perturbench/data/resources/devel.h5ad"
    served = tmp_path / "mirror" / url_path
    served.parent.mkdir(parents=True)
    shutil.copy(source, served)
    requests = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requests.append(self.path)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(tmp_path / "mirror")))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        plan = json.loads(perturbcast("plan", "--json", "--datasets", "norman2019_devel", "--stages", "dataset").stdout)
        step = plan["steps"][0]
        assert step["component"]["name"] == "perturbench_devel"
        # no cache of the caller's (an empty PERTURBCAST_CACHE is unset for the loaders)
        env = {"HOME": "/dev/null", "PERTURBCAST_CACHE": "", "PERTURBCAST_MIRROR": f"http://127.0.0.1:{httpd.server_port}",
               "no_proxy": "127.0.0.1", "NO_PROXY": "127.0.0.1", "http_proxy": "", "HTTP_PROXY": ""}
        script = step_scripts([step], tmp_path, container_engine="docker")[step["id"]]
        assert 'export HOME="$PWD/.home"' in script and "PERTURBCAST_ISOLATED_ENVIRONMENTS=0" in script
        assert 'export PERTURBCAST_CACHE="$PWD/.perturbcast_cache"' in script and 'VIASH_TEMP="$PWD/.viash_temp"' in script
        publish = tmp_path / "publish"
        ran = emulate_nextflow({"steps": [step], "score_units": []}, publish, tmp_path / "work", {step["id"]: script},
                               env=env)
        assert ran == [step["id"]]
        record = json.loads((publish / step["directory"] / "step.json").read_text())
        assert record["status"] == "ok", record["reason"]
        assert requests and requests[0] == "/" + url_path
        task = tmp_path / "work" / "0000"
        cached = task / ".perturbcast_cache" / url_path
        assert cached.is_file() and json.loads(Path(f"{cached}.checksum.json").read_text())["verified_against"].endswith("(pinned sha256)")
        # without main.nf's script (HOME unwritable, no cache set) the loader cannot cache the file: failed, said so
        plain = tmp_path / "plain"
        emulate_nextflow({"steps": [step], "score_units": []}, plain, tmp_path / "work_plain", env=env)
        failed = json.loads((plain / step["directory"] / "step.json").read_text())
        assert failed["status"] == "failed" and "/dev/null" in failed["reason"] and "PERTURBCAST_CACHE" in failed["reason"]
        # a cloud param: a cache shared by the tasks
        shared = step_scripts([step], tmp_path, container_engine="docker", cache_dir="/mnt/cache")[step["id"]]
        assert "export PERTURBCAST_CACHE='/mnt/cache'" in shared
        # without a container a writable home and the user's cache are kept
        local = step_scripts([step], tmp_path)[step["id"]]
        assert "ISOLATED_ENVIRONMENTS" not in local and '${PERTURBCAST_CACHE:-$HOME/.cache/perturbcast}' in local
    finally:
        httpd.shutdown()


# ---------------------------------------------------------------- the OpenProblems entry: src/workflows/run_benchmark

RUN_BENCHMARK = ROOT / "src" / "workflows" / "run_benchmark"


def test_run_benchmark_workflow_passes_the_static_checks():
    validator = ROOT.parent / "shared" / "tools" / "validate-viash-config"
    if not validator.exists():
        pytest.skip("needs ../shared/tools/validate-viash-config")
    result = subprocess.run([sys.executable, str(validator), str(RUN_BENCHMARK / "config.vsh.yaml")], capture_output=True, text=True)
    assert result.returncode == 0 and ": OK" in result.stdout, result.stdout + result.stderr
    if shutil.which("java") is None or not NF_CHECK.exists():
        pytest.skip("nf-check needs java and ../shared/tools/nf-check")
    result = subprocess.run([str(NF_CHECK), "src/workflows/run_benchmark/main.nf"], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0 and "could not fetch the Groovy jar" in result.stderr:
        pytest.skip("nf-check could not fetch its Groovy jar (no network)")
    assert result.returncode == 0 and "workflows=[auto, run_wf]" in result.stdout, result.stdout + result.stderr


def test_run_benchmark_workflow_lists_every_component_and_selects_as_the_plan(tmp_path):
    """Its dependencies and its methods / metrics lists name exactly the components of src/ (the engine does not
    discover src/workflows); its selection functions, run with Groovy on the components' configs, choose per task
    what `perturbcast plan` chooses for the default selection."""
    config = yaml.safe_load((RUN_BENCHMARK / "config.vsh.yaml").read_text())
    text = (RUN_BENCHMARK / "main.nf").read_text()
    components = discover_components(ROOT, errors=[])
    assert "run_benchmark" not in {c.name for c in components}
    predictors = sorted(c.name for c in components if c.component_type in ("method", "control_method"))
    metrics = sorted(c.name for c in components if c.component_type == "metric")
    listed = lambda name: sorted(re.findall(r"\b(\w+)\b", re.search(rf"^{name} = \[(.*?)\]", text, re.S | re.M).group(1)))  # noqa: E731
    assert listed("methods") == predictors and listed("metrics") == metrics
    local = sorted(d["name"].split("/")[1] for d in config["dependencies"] if "repository" not in d)
    assert local == sorted(predictors + metrics)
    assert {"name": "h5ad/extract_uns_metadata", "repository": "core"} in config["dependencies"]
    # OpenProblems' rename_keys of a split state (what `perturbcast step` publishes) reach its inputs
    arguments = {a["name"].lstrip("-") for g in config["argument_groups"] for a in g["arguments"]}
    assert {"input_train", "input_test", "input_solution", "task_id", "dataset_id"} <= arguments

    if _groovy_jar() is None:
        pytest.skip("needs java and the Groovy jar of nf-check (run ../shared/tools/nf-check once)")
    functions = text[text.index("// a component runs when"):text.index("workflow run_wf")]
    plan = json.loads(perturbcast("plan", "--json").stdout)
    tasks = sorted({s["labels"]["task_id"] for s in plan["steps"] if s["stage"] == "split"})
    comps = {c.name: {"config": {"name": c.name, "info": c.info}} for c in components}
    code = functions + f"""
def comps = {groovy_literal(comps)}
def predictors = {groovy_literal(predictors)}
def metrics = {groovy_literal(metrics)}
{groovy_literal(tasks)}.each {{ task ->
    println(task + '\\t' + predictors.findAll {{ methodRuns(comps[it], [task_id: task, method_ids: null]) }}.join(','))
}}
println('metrics\\t' + metrics.findAll {{ selected(comps[it], null) }}.join(','))
println('named\\t' + predictors.findAll {{ methodRuns(comps[it], [task_id: 'unseen_perturbation', method_ids: ['gears', 'train_mean']]) }}.join(','))
"""
    rows = dict(line.split("\t") for line in run_groovy(code, tmp_path).splitlines() if "\t" in line)
    for task in tasks:
        planned = sorted({s["labels"]["method_id"] for s in plan["steps"] if s["stage"] == "predict" and s["labels"]["task_id"] == task})
        assert sorted(rows[task].split(",")) == planned, task
    assert sorted(rows["metrics"].split(",")) == sorted({s["labels"]["metric_component"] for s in plan["steps"]
                                                         if s["stage"] == "score"})
    assert rows["named"] == "gears,train_mean"
