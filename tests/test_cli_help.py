"""The command line a newcomer meets: help, `perturbcast list`, config typos, missing test data."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap

import pytest

from perturbcast.cli import build_parser
from perturbcast.config import ConfigError, discover_components, load_config

from conftest import ROOT


def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "perturbcast", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def subcommands(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                for inner_name, inner in subcommands(sub):
                    yield f"{name} {inner_name}", inner


def test_help_shows_no_hidden_command_and_every_option_has_help():
    text = cli("--help").stdout
    assert "SUPPRESS" not in text and "exec" not in text
    for command in ("run", "test", "benchmark", "cache", "list"):
        assert f"    {command} " in text or f"    {command}\n" in text
    missing = [f"{name} {action.option_strings or action.dest}" for name, sub in subcommands(build_parser())
               for action in sub._actions
               if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) and not action.help]
    assert missing == []


def test_list_prints_every_component_with_its_summary():
    lines = cli("list").stdout.splitlines()
    components = discover_components(ROOT)
    def shows(line: str, summary: str) -> bool:
        # a line is cut at 120 columns ("…"): marks such as "[environment not built: …]" leave less of the
        # summary, but at least 30 characters of it must show
        if summary in line:
            return True
        cut = line.rstrip().endswith("…")
        head = summary[:30]
        return cut and head in line and summary.startswith(line[line.index(head):].rstrip()[:-1])

    for config in components:
        # a name may be both a loader and a method (gears): one of its lines carries this config's summary
        summary = " ".join(str(config.raw["summary"]).split())
        assert any(line.split()[:1] == [config.name] and shows(line, summary) for line in lines), config.name
    methods = cli("list", "--kind", "methods").stdout.splitlines()
    assert methods[0] == "methods:" and len(methods) == 1 + sum(c.namespace == "methods" for c in components)
    ids = cli("list", "--kind", "dataset_ids").stdout
    assert "simulated_grn" in ids and "(default)" in ids and "loader scperturb" in ids


def component(tmp_path, config: str):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "_viash.yaml").write_text("name: toy\nversion: dev\n")
    folder = tmp_path / "src" / "methods" / "toy"
    folder.mkdir(parents=True)
    (folder / "config.vsh.yaml").write_text(textwrap.dedent(config))
    (folder / "script.py").write_text("## VIASH START\npar = {}\n## VIASH END\nprint('ran')\n")
    return folder


GOOD = """\
name: toy
namespace: methods
summary: A toy.
info:
  supported_tasks: [unseen_perturbation]
  anything_else_of_ours: 1
arguments:
  - name: --value
    type: integer
    default: 1
resources:
  - type: python_script
    path: script.py
"""


@pytest.mark.parametrize("old, new, message", [
    ("arguments:", "arguemnts:", "unknown key `arguemnts`; did you mean `arguments`?"),
    ("supported_tasks:", "supported_task:", "unknown key `supported_task` in info; did you mean `supported_tasks`?"),
    ("default: 1", "defualt: 1", "unknown key `defualt` in argument '--value'; did you mean `default`?"),
])
def test_config_typos_are_one_line_errors(tmp_path, old, new, message):
    assert load_config(component(tmp_path / "good", GOOD)).name == "toy"  # free-form info keys stay allowed
    folder = component(tmp_path / "bad", GOOD.replace(old, new))
    with pytest.raises(ConfigError) as error:
        load_config(folder)
    assert message in str(error.value) and "\n" not in str(error.value)
    result = cli("run", folder, "--", "--help")
    assert result.returncode == 1 and result.stderr.strip() == f"[error] {error.value}"


def test_missing_test_resources_name_the_script(tmp_path):
    folder = component(tmp_path, GOOD + "test_resources:\n  - path: /resources_test/simulated_grn\n"
                                        "  - type: python_script\n    path: script.py\n")
    result = cli("test", folder, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("[error]") and "scripts/create_test_resources.py" in result.stderr
    assert result.stderr.strip().count("\n") == 0
