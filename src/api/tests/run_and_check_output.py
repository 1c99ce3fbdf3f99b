"""Shared component test: run the component on the test resources and check every output file.

Inputs come from each file argument's `example` (paths under the copied `resources_test/`); extra
arguments from `info.test_arguments`. Outputs are checked against their API format, their alignment
with the other files, and the ids and ranges the benchmark relies on.
"""
import os
import subprocess
import sys

import yaml

## VIASH START
meta = {"executable": "target/train_mean", "config": "src/control_methods/train_mean/config.vsh.yaml",
        "resources_dir": "src/utils", "temp_dir": "/tmp"}
## VIASH END

sys.path.append(meta["resources_dir"])
from formats import FormatError, alignment_problems, check_anndata, read_h5ad  # noqa: E402

with open(meta["config"]) as handle:
    config = yaml.safe_load(handle)
info = config.get("info") or {}
arguments = [a for group in config.get("argument_groups") or [] for a in group.get("arguments") or []]
arguments += config.get("arguments") or []

command, paths = [meta["executable"]], {}
for argument in arguments:
    plain = argument["name"].lstrip("-")
    if argument["type"] != "file":
        continue
    if argument.get("direction", "input") == "output":
        paths[plain] = os.path.join(os.getcwd(), f"output_{plain}.h5ad")
        command += [argument["name"], paths[plain]]
        continue
    example = argument.get("example")
    example = example[0] if isinstance(example, list) else example
    path = os.path.join(meta["resources_dir"], example) if example else None
    if path is None or not os.path.exists(path):
        if argument.get("required"):
            sys.exit(f"[error] required input {argument['name']}: test resource '{path}' is missing "
                     "(run scripts/create_test_resources.py)")
        continue
    paths[plain] = path
    command += [argument["name"], path]
for key, value in (info.get("test_arguments") or {}).items():
    command += [f"--{key}", str(value)]

print("running:", " ".join(command), flush=True)
completed = subprocess.run(command)
if completed.returncode == 99:
    # the component says, in one line, that it does not apply to these test data (e.g. additive without a
    # combination): that is its contract, and it must leave no output behind
    outputs = [paths[a["name"].lstrip("-")] for a in arguments
               if a["type"] == "file" and a.get("direction") == "output" and a["name"].lstrip("-") in paths]
    left = [p for p in outputs if os.path.exists(p)]
    if left:
        sys.exit(f"[error] {config['name']} exited 99 (not applicable) but left output {left[0]}")
    print(f"{config['name']}: not applicable to the test resources (exit 99); no output, as the contract says")
    sys.exit(0)
if completed.returncode != 0:
    sys.exit(f"[error] {config['name']} exited with code {completed.returncode}")

problems = []
for argument in arguments:
    plain = argument["name"].lstrip("-")
    if argument["type"] != "file" or argument.get("direction") != "output":
        continue
    path = paths[plain]
    if not os.path.exists(path):
        if argument.get("must_exist", True) is False:
            continue  # an optional output the component may leave out (e.g. cells without cell inputs)
        problems.append(f"{argument['name']}: '{path}' was not written")
        continue
    try:
        adata = read_h5ad(path)
    except FormatError as error:
        problems.append(str(error))
        continue
    file_format = (argument.get("info") or {}).get("format") or {}
    problems += [f"{argument['name']}: {p}" for p in check_anndata(adata, file_format)]
    for axis in ("obs", "var"):
        reference = (argument.get("info") or {}).get(f"same_{axis}_names_as")
        if reference in paths and os.path.exists(paths[reference]):
            other = read_h5ad(paths[reference], backed=True)
            problems += [f"{argument['name']}: {p}" for p in alignment_problems(
                getattr(adata, f"{axis}_names"), getattr(other, f"{axis}_names"), f"{axis}_names", f"--{reference}")]
    if info.get("type") in ("method", "control_method") and adata.uns.get("method_id") != config["name"]:
        problems.append(f"{argument['name']}: uns['method_id'] is {adata.uns.get('method_id')!r}, expected {config['name']!r}")
    if info.get("type") == "metric":
        declared = {m["name"]: m for m in info.get("metrics") or []}
        for metric_id, value in zip(list(adata.uns.get("metric_ids", [])), list(adata.uns.get("metric_values", []))):
            if metric_id not in declared:
                problems.append(f"metric '{metric_id}' is not declared in info.metrics")
                continue
            low, high = float(declared[metric_id]["min"]), float(declared[metric_id]["max"])
            if not (low <= float(value) <= high):
                problems.append(f"metric '{metric_id}' = {value} lies outside its declared range [{low}, {high}]")
            if metric_id not in adata.obs.columns:
                problems.append(f"score obs has no per-condition column '{metric_id}'")
        # a metric may leave out an id that is undefined on this dataset, if it says so
        missing = set(declared) - set(adata.uns.get("metric_ids", [])) - set(adata.uns.get("metrics_not_computed", []))
        if missing:
            problems.append(f"declared metrics missing from the score: {sorted(missing)}")

if problems:
    for problem in problems:
        print(f"[error] {problem}", file=sys.stderr)
    sys.exit(1)
print(f"{config['name']}: outputs conform")
