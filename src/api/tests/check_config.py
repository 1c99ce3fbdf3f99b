"""Shared component test: the config carries the metadata the benchmark and its report need.

Offline by design: links are checked for form, never fetched.
"""
import re
import sys

import yaml

## VIASH START
meta = {"config": "src/control_methods/train_mean/config.vsh.yaml"}
## VIASH END

with open(meta["config"]) as handle:
    config = yaml.safe_load(handle)
info = config.get("info") or {}
problems = []


def need(mapping, key, where, kind=str):
    value = (mapping or {}).get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        problems.append(f"{where}.{key} is missing")
    elif not isinstance(value, kind):
        problems.append(f"{where}.{key} should be a {kind.__name__}, got {type(value).__name__}")
    return value


for key in ("name", "label", "summary", "description"):
    need(config, key, "config")
summary = config.get("summary") or ""
if len(summary) > 200 or summary.count(". ") > 1:
    problems.append("config.summary should be one short sentence")
references = config.get("references") or {}
if not (references.get("doi") or references.get("bibtex")):
    problems.append("config.references needs a doi or a bibtex entry")
for doi in ([references["doi"]] if isinstance(references.get("doi"), str) else references.get("doi") or []):
    if not re.match(r"^10\.\d{4,9}/\S+$", str(doi)):
        problems.append(f"config.references.doi '{doi}' is not a DOI (10.xxxx/...)")
links = config.get("links") or {}
for key, url in links.items():
    if not re.match(r"^https?://\S+$", str(url)):
        problems.append(f"config.links.{key} '{url}' is not an http(s) URL")
if "repository" not in links:
    problems.append("config.links.repository is missing")

component_type = info.get("type")
if component_type not in ("dataset_loader", "task", "method", "control_method", "metric", "prior"):
    problems.append(f"info.type '{component_type}' is not a known component type (did the config __merge__ its API?)")
if component_type == "metric":
    metrics = info.get("metrics") or []
    if not metrics:
        problems.append("info.metrics lists no metric")
    for index, metric in enumerate(metrics):
        where = f"info.metrics[{index}]"
        for key in ("name", "label", "summary", "description"):
            need(metric, key, where)
        for key in ("min", "max"):
            if key not in metric:
                problems.append(f"{where}.{key} is missing")
        if not isinstance(metric.get("maximize"), bool):
            problems.append(f"{where}.maximize must be true or false")
        refs = metric.get("references") or {}
        if not (refs.get("doi") or refs.get("bibtex")):
            problems.append(f"{where}.references needs a doi or a bibtex entry")
if component_type == "dataset_loader":
    datasets = info.get("datasets") or []
    if not datasets or not all(isinstance(d, dict) and d.get("id") for d in datasets):
        problems.append("info.datasets must list the dataset ids the loader makes ({id, arguments, default})")
if component_type == "control_method" and info.get("control_type") not in ("positive", "negative", "baseline"):
    problems.append("info.control_type must be positive, negative or baseline")

resources = config.get("resources") or []
# the script types the perturbcast runner runs as viash does (perturbcast/languages.py)
if not resources or resources[0].get("type") not in ("python_script", "r_script", "bash_script"):
    problems.append("the first resource must be the python_script, r_script or bash_script that runs the component")
engines = config.get("engines") or []
docker = [e for e in engines if e.get("type") == "docker"]
if not docker or not docker[0].get("image"):
    problems.append("engines needs a docker engine with an image")
runner_types = [r.get("type") for r in config.get("runners") or []]
for wanted in ("executable", "nextflow"):
    if wanted not in runner_types:
        problems.append(f"runners needs a `{wanted}` runner")
for runner in config.get("runners") or []:
    if runner.get("type") == "nextflow":
        labels = ((runner.get("directives") or {}).get("label")) or []
        if not labels:
            problems.append("the nextflow runner needs directives.label (time, memory and cpu labels)")

if problems:
    for problem in problems:
        print(f"[error] {meta['config']}: {problem}", file=sys.stderr)
    sys.exit(1)
print(f"{config['name']}: config metadata complete")
