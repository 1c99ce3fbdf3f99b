"""R and Bash components run as viash 0.9.4 runs them (perturbcast/languages.py).

Two kinds of parity: (1) viash's own injection template (copied from RScript.scala / BashScript.scala,
escaped as Bash.escapeString does, expanded by bash as the wrapper's heredoc is) gives exactly the text
perturbcast writes, for every argument type and quoting case; (2) real `Rscript` / `bash` runs of an echo
component see the values a Python component sees.
"""
import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

from perturbcast import languages, viash
from perturbcast.config import load_config
from perturbcast.runner import run_component, run_component_tests

needs_r = pytest.mark.skipif(shutil.which("Rscript") is None,
                             reason="Rscript not on PATH (scripts/install_r.sh installs R from Debian)")
HINT = 'Use "--help" to get more information on the parameters.'

# ------------------------------------------------------------------------- viash's template, expanded by bash

SLASH = "\\VIASH_SLASH\\"


def escape_string(text: str) -> str:
    """Bash.escapeString(allowUnescape = true) of viash 0.9.4 (helpers/Bash.scala, Escaper.scala)."""
    text = text.replace("\\", "\\\\").replace("$", "\\$").replace("`", "\\`")
    return (text.replace("\\$VIASH_DOLLAR\\$", "$").replace("\\\\VIASH_SLASH\\\\", "\\")
            .replace("\\$VIASH_", "$VIASH_").replace("\\${VIASH_", "${VIASH_"))


def r_template(plain: str, env: str, lhs: str, rhs: str) -> str:
    """One entry of RScript.generateInjectionMods (the Scala string after interpolation)."""
    return (f'"{plain}" = $VIASH_DOLLAR$( if [ ! -z ${{{env}+x}} ]; then echo -n "{lhs}\'"; '
            f'echo -n "${env}" | sed "s#[\'{SLASH}{SLASH}]#{SLASH}{SLASH}{SLASH}{SLASH}&#g"; '
            f'echo "\'{rhs}"; else echo NULL; fi )')


def bash_template(variable: str, env: str) -> str:
    """One line of BashScript.generateInjectionMods."""
    return (f'$VIASH_DOLLAR$( if [ ! -z ${{{env}+x}} ]; then echo "${{{env}}}" | '
            f'sed "s#\'#\'{SLASH}"\'{SLASH}"\'#g;s#.*#{variable}=\'&\'#" ; else echo "# {variable}="; fi )')


def expand(template: str, values: dict) -> str:
    """What the wrapper's unquoted `cat << VIASHEOF` gives for `template` with VIASH_PAR_* set to `values`."""
    script = f"cat << VIASHEOF\n{escape_string(template)}\nVIASHEOF\n"
    env = {"PATH": os.environ["PATH"], **{k: v for k, v in values.items() if v is not None}}
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=True).stdout[:-1]


VALUES = [
    "plain", "", "it's", "two ''quotes", 'dq "x"', "back\\slash", "ends\\", "\\'", "$HOME and `tick`",
    "${VIASH_PAR_X}", "new\nline", "trailing\n", "tab\there", "-n", "-e", "-nE", "-x", "- n", "a;b;c",
    "unicode é ✓", "#hash", "&amp", "semi;colon'", "%s %d", None,
]
TYPES = [("string", False), ("file", False), ("integer", False), ("long", False), ("double", False),
         ("boolean", False), ("boolean_true", False), ("string", True), ("integer", True), ("long", True),
         ("double", True), ("boolean", True), ("file", True)]


@pytest.mark.parametrize("kind,multiple", TYPES)
def test_r_entries_equal_viash_template_expanded_by_bash(kind, multiple):
    lhs, rhs = languages._r_converter(kind, multiple, ";")
    template = "\n".join(r_template(f"x{i}", f"VIASH_PAR_X{i}", lhs, rhs) for i in range(len(VALUES)))
    expected = expand(template, {f"VIASH_PAR_X{i}": v for i, v in enumerate(VALUES)})
    ours = "\n".join(f'"x{i}" = {languages.r_value(kind, multiple, ";", v)}' for i, v in enumerate(VALUES))
    assert ours == expected


def test_bash_lines_equal_viash_template_expanded_by_bash():
    template = "\n".join(bash_template(f"par_x{i}", f"VIASH_PAR_X{i}") for i in range(len(VALUES)))
    expected = expand(template, {f"VIASH_PAR_X{i}": v for i, v in enumerate(VALUES)})
    ours = "\n".join(languages.bash_lines(f"par_x{i}", v) for i, v in enumerate(VALUES))
    assert ours == expected
    assert "par_x3='two '\"'\"''\"'\"'quotes'" in ours      # ' spliced as '"'"'
    assert "par_x10='new'\npar_x10='line'" in ours        # one assignment per line: the last wins
    assert "# par_x24=" in ours                           # unset


def test_r_block_layout_matches_viash():
    entries = {"par": [("input", "file", False, ";", "a'b"), ("n", "integer", True, ":", "1:2")],
               "meta": [("name", "string", False, ";", "comp")], "dep": []}
    block = "\n".join(languages.r_block(entries))
    assert block == textwrap.dedent("""\
        # treat warnings as errors
        .viash_orig_warn <- options(warn = 2)

        par <- list(
          "input" = 'a\\'b',
          "n" = as.integer(strsplit('1:2', split = ':')[[1]])
        )
        meta <- list(
          "name" = 'comp'
        )
        dep <- list(
        EMPTY
        )


        # restore original warn setting
        options(.viash_orig_warn)
        rm(.viash_orig_warn)
        """).replace("EMPTY", "  ")  # viash leaves "  " in an empty list (dedent would strip it)


def test_multiline_values_are_not_indented_inside_an_indented_block():
    script = "f <- function() {\n  ## VIASH START\n  ## VIASH END\n}\n"
    block = languages.r_block({"par": [("text", "string", False, ";", "a\nb")], "meta": [], "dep": []})
    injected = viash.inject(script, block)
    assert "\n    \"text\" = 'a\nb'\n" in injected  # the value's second line stays as given
    assert "  # The following code has been auto-generated by Viash.\n  # treat warnings as errors" in injected


# ------------------------------------------------------------------------------- real runs: R and Bash echo

R_ECHO = r"""
## VIASH START
par <- list(input = "not injected")
meta <- list()
## VIASH END
as_json <- function(v) {
  if (is.null(v)) return("null")
  cls <- class(v)[1]
  items <- vapply(seq_along(v), function(i) {
    x <- v[i]
    if (is.na(x)) "null"
    else if (is.character(x) || cls == "integer64") encodeString(as.character(x), quote = '"')
    else if (is.logical(x)) tolower(as.character(x))
    else format(x, digits = 17)
  }, "")
  sprintf('{"class": "%s", "values": [%s]}', cls, paste(items, collapse = ", "))
}
as_object <- function(l) {
  paste0("{", paste(encodeString(names(l), quote = '"'), vapply(l, as_json, ""), sep = ": ", collapse = ", "), "}")
}
record <- sprintf('{"par": %s, "meta": %s, "cwd": %s, "listing": [%s]}', as_object(par), as_object(meta),
                  encodeString(getwd(), quote = '"'),
                  paste(encodeString(list.files(meta$resources_dir, all.files = TRUE, no.. = TRUE), quote = '"'),
                        collapse = ", "))
writeLines(record, Sys.getenv("ECHO_RECORD"))
if (!is.null(par$write)) writeLines("x", par$write)
if (!is.null(par$exit_code)) quit(status = par$exit_code)
"""

BASH_ECHO = r"""#!/usr/bin/env bash
## VIASH START
par_input="not injected"
## VIASH END
set -eu
for variable in $(compgen -v | grep -E '^(par|meta)_'); do
  printf '%s\0%s\0' "$variable" "${!variable}"
done > "$ECHO_RECORD"
if [ -n "${par_write:-}" ]; then echo x > "$par_write"; fi
exit "${par_exit_code:-0}"
"""

ARGUMENTS = [
    {"name": "--input", "alternatives": ["-i"], "type": "file"},
    {"name": "--names", "type": "string", "multiple": True},
    {"name": "--ints", "type": "integer", "multiple": True},
    {"name": "--ratios", "type": "double", "multiple": True, "multiple_sep": ":"},
    {"name": "--flags", "type": "boolean", "multiple": True},
    {"name": "--times", "type": "integer", "default": 3},
    {"name": "--ratio", "type": "double", "default": 0.00001},
    {"name": "--big", "type": "long"},
    {"name": "--shout", "type": "boolean_true"},
    {"name": "--quiet", "type": "boolean_false"},
    {"name": "--bool", "type": "boolean"},
    {"name": "--text", "type": "string"},
    {"name": "--exit_code", "type": "integer"},
    {"name": "--write", "type": "file", "direction": "output", "must_exist": False},
    {"name": "--result", "type": "file", "direction": "output"},
    {"name": "--label", "type": "string", "direction": "output"},
]


def make_component(tmp_path, monkeypatch, kind: str, script: str, name: str = "echo"):
    root = tmp_path / "pkg"
    component = root / "src" / "testing" / name
    component.mkdir(parents=True)
    (root / "_viash.yaml").write_text("name: pkg\nversion: '1.0'\n")
    suffix = {"r_script": "R", "bash_script": "sh"}[kind]
    (component / "config.vsh.yaml").write_text(yaml.safe_dump({
        "name": name, "namespace": "testing", "arguments": ARGUMENTS,
        "resources": [{"type": kind, "path": f"script.{suffix}"}, {"path": "helper.txt"}],
        "requirements": {"cpus": 2}}, sort_keys=False))
    (component / f"script.{suffix}").write_text(script)
    (component / "helper.txt").write_text("resource")
    (tmp_path / "viash_temp").mkdir(exist_ok=True)
    monkeypatch.setenv("VIASH_TEMP", str(tmp_path / "viash_temp"))
    monkeypatch.setenv("ECHO_RECORD", str(tmp_path / "record"))
    monkeypatch.chdir(tmp_path)
    return component


def r_record(tmp_path):
    record = json.loads((tmp_path / "record").read_text())
    simple = {}
    for part in ("par", "meta"):
        simple[part] = {k: (None if v is None else (v["class"], v["values"])) for k, v in record[part].items()}
    return simple, record


@needs_r
def test_r_component_sees_every_argument_type(tmp_path, monkeypatch):
    component = make_component(tmp_path, monkeypatch, "r_script", R_ECHO)
    Path("in put.txt").write_text("")
    text = "it's \"q\" $HOME `t` back\\slash\nline two"
    result = run_component(component, [
        "-i", "in put.txt", "--names", "a", "--names", "b;o'neil", "--ints", "1;-2", "--ratios", "1.5:1e-3",
        "--flags", "true;False", "--flags", "yes", "--big", "9007199254740993", "--shout", "--text", text,
        "---memory", "2GiB"])
    assert result.exit_code == 0
    values, record = r_record(tmp_path)
    par, meta = values["par"], values["meta"]
    assert par["input"] == ("character", ["in put.txt"])
    assert par["names"] == ("character", ["a", "b", "o'neil"])
    assert par["ints"] == ("integer", [1, -2])
    assert par["ratios"] == ("numeric", [1.5, 0.001])
    assert par["flags"] == ("logical", [True, False, None])  # 'yes' passes viash's check, then as.logical gives NA
    assert par["times"] == ("integer", [3]) and par["ratio"] == ("numeric", [1e-05])
    assert par["big"] == ("integer64", ["9007199254740993"])  # exact beyond 2^53: bit64, as viash
    assert par["shout"] == ("logical", [True]) and par["quiet"] == ("logical", [True])
    assert par["bool"] is None and par["exit_code"] is None and par["write"] is None
    assert par["text"] == ("character", [text])
    assert "label" not in par and "result" in par  # output strings do not reach the script, files do
    assert meta["name"] == meta["functionality_name"] == ("character", ["echo"])
    assert meta["cpus"] == ("integer", [2])
    assert meta["memory_b"] == ("integer64", [str(2 * 1024 ** 3)]) and meta["memory_gib"] == ("integer64", ["2"])
    assert meta["memory_gb"] == ("integer64", ["3"]) and meta["memory_tb"] == ("integer64", ["1"])
    assert "helper.txt" in record["listing"] and ".config.vsh.yaml" in record["listing"]
    assert "script.R" not in record["listing"] and record["cwd"] == str(tmp_path)


@needs_r
def test_r_warnings_during_injection_are_errors_and_exit_codes_pass_through(tmp_path, monkeypatch, capfd):
    component = make_component(tmp_path, monkeypatch, "r_script", R_ECHO)
    result = run_component(component, ["--ints", "3000000000"])  # valid for viash's regex, not an R integer
    assert result.exit_code == 1
    assert "NAs introduced by coercion to integer range" in capfd.readouterr().err
    assert run_component(component, ["--exit_code", "42"]).exit_code == 42
    result = run_component(component, ["--result", "out/never.txt"])
    assert result.exit_code == 1 and Path("out").is_dir()
    assert "[error] Output file 'out/never.txt' does not exist." in capfd.readouterr().err
    assert run_component(component, ["--write", "sub/w.txt"]).exit_code == 0 and Path("sub/w.txt").exists()


@needs_r
def test_r_unset_values_are_null_and_checks_run_before_r(tmp_path, monkeypatch, capfd):
    component = make_component(tmp_path, monkeypatch, "r_script", R_ECHO)
    assert run_component(component, []).exit_code == 0
    par = r_record(tmp_path)[0]["par"]
    assert par["input"] is None and par["names"] is None and par["bool"] is None
    assert par["shout"] == ("logical", [False]) and par["quiet"] == ("logical", [True])
    (tmp_path / "record").unlink()
    result = run_component(component, ["--times", "x"])
    assert result.exit_code == 1 and not (tmp_path / "record").exists()
    assert f"[error] '--times' has to be an integer. {HINT}" in capfd.readouterr().err


def bash_record(tmp_path) -> dict:
    parts = (tmp_path / "record").read_bytes().split(b"\0")[:-1]
    return {parts[i].decode(): parts[i + 1].decode() for i in range(0, len(parts), 2)}


def test_bash_component_sees_viash_variables(tmp_path, monkeypatch):
    component = make_component(tmp_path, monkeypatch, "bash_script", BASH_ECHO)
    Path("in put.txt").write_text("")
    result = run_component(component, ["-i", "in put.txt", "--names", "a", "--names", "b;o'neil",
                                       "--flags", "True", "--text", "two\nlines", "--bool", "yes"])
    assert result.exit_code == 0
    seen = bash_record(tmp_path)
    assert seen["par_input"] == "in put.txt"
    assert seen["par_names"] == "a;b;o'neil"           # one string, as viash: split it with IFS
    assert seen["par_flags"] == "True" and seen["par_bool"] == "yes"  # not normalised
    assert seen["par_times"] == "3" and seen["par_ratio"] == "1.0E-5"  # Scala's Double.toString
    assert seen["par_shout"] == "false" and seen["par_quiet"] == "true"
    assert seen["par_text"] == "lines"                  # viash quirk: one assignment per line
    assert "par_big" not in seen and "par_label" not in seen and "par_write" not in seen
    assert seen["meta_name"] == "echo" and seen["meta_cpus"] == "2" and "meta_memory_b" not in seen
    assert Path(seen["meta_resources_dir"], "helper.txt").exists() is False  # removed after success


def test_bash_exit_codes_and_output_checks(tmp_path, monkeypatch, capfd):
    component = make_component(tmp_path, monkeypatch, "bash_script", BASH_ECHO)
    assert run_component(component, ["--exit_code", "3"]).exit_code == 3
    result = run_component(component, ["--result", "never.txt"])
    assert result.exit_code == 1
    assert "[error] Output file 'never.txt' does not exist." in capfd.readouterr().err


def test_missing_interpreter_is_one_error_line(tmp_path, monkeypatch, capfd):
    component = make_component(tmp_path, monkeypatch, "r_script", R_ECHO)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    result = run_component(component, [])
    assert result.exit_code == 127
    assert "[error] Rscript not found on PATH" in capfd.readouterr().err


def test_unknown_script_type_is_one_error_line(tmp_path, monkeypatch, capfd):
    component = make_component(tmp_path, monkeypatch, "bash_script", BASH_ECHO)
    config = yaml.safe_load((component / "config.vsh.yaml").read_text())
    config["resources"][0]["type"] = "scala_script"
    (component / "config.vsh.yaml").write_text(yaml.safe_dump(config))
    assert run_component(component, []).exit_code == 1
    assert "config.vsh.yaml: script type 'scala_script' cannot be run by perturbcast" in capfd.readouterr().err


def test_bash_test_scripts_run_like_viash_test(tmp_path, monkeypatch):
    component = make_component(tmp_path, monkeypatch, "bash_script", BASH_ECHO)
    config = yaml.safe_load((component / "config.vsh.yaml").read_text())
    config["test_resources"] = [{"type": "bash_script", "path": "check.sh"}]
    (component / "config.vsh.yaml").write_text(yaml.safe_dump(config))
    (component / "check.sh").write_text(textwrap.dedent("""\
        set -eu
        ## VIASH START
        ## VIASH END
        [ "$PWD" = "$meta_resources_dir" ]
        [ "$meta_executable" = "$meta_resources_dir/echo" ]
        "$meta_executable" --write out.txt
        grep -q x out.txt
        """))
    report = run_component_tests(component)
    assert report.passed == ["check"] and report.failed == []


def test_engine_peak_memory_of_a_bash_step_is_its_own(tmp_path):
    """Launched from the (large) calling process, ru_maxrss would include it; R/Bash steps start from a
    small server instead of the engine's preloaded one."""
    import numpy as np

    ballast = np.ones(300_000_000 // 8)
    meta = {"name": "b", "temp_dir": str(tmp_path)}
    with open(tmp_path / "log.txt", "w") as log:
        run = viash.run_script("echo hello; exit 4", meta, stdout=log, stderr=log,
                               language=languages.LANGUAGES["bash_script"])
    assert ballast.sum() > 0
    assert run.exit_code == 4 and run.peak_rss_bytes < 50 * 2**20
    assert "hello" in (tmp_path / "log.txt").read_text()


def test_config_type_decides_the_language(tmp_path, monkeypatch):
    component = make_component(tmp_path, monkeypatch, "r_script", R_ECHO)
    assert languages.language_of(load_config(component).main_script).executor == ("Rscript",)


@needs_r
def test_r_test_scripts_run_like_viash_test(tmp_path, monkeypatch):
    component = make_component(tmp_path, monkeypatch, "bash_script", BASH_ECHO)
    config = yaml.safe_load((component / "config.vsh.yaml").read_text())
    config["test_resources"] = [{"type": "r_script", "path": "check.R"}, {"type": "r_script", "path": "fails.R"}]
    (component / "config.vsh.yaml").write_text(yaml.safe_dump(config))
    (component / "check.R").write_text(textwrap.dedent("""\
        ## VIASH START
        ## VIASH END
        stopifnot(normalizePath(getwd()) == normalizePath(meta$resources_dir))
        stopifnot(meta$executable == file.path(meta$resources_dir, "echo"), meta$name == "echo")
        stopifnot(system2(meta$executable, c("--write", "out.txt")) == 0, file.exists("out.txt"))
        stopifnot(system2(meta$executable, c("--exit_code", "5")) == 5)
        """))
    (component / "fails.R").write_text("stop('this test fails')\n")
    report = run_component_tests(component)
    assert report.passed == ["check"] and report.failed == ["fails"]


def test_outputs_of_a_bash_component_are_validated_and_removed_when_invalid(tmp_path, monkeypatch, capfd):
    root = tmp_path / "pkg"
    component = root / "src" / "testing" / "writer"
    component.mkdir(parents=True)
    (root / "_viash.yaml").write_text("name: pkg\n")
    (root / "src" / "utils").mkdir()
    shutil.copy(Path(__file__).resolve().parents[1] / "src" / "utils" / "formats.py", root / "src" / "utils")
    (component / "config.vsh.yaml").write_text(yaml.safe_dump({
        "name": "writer", "resources": [{"type": "bash_script", "path": "script.sh"}],
        "arguments": [{"name": "--output", "type": "file", "direction": "output",
                       "info": {"format": {"type": "h5ad"}}}]}))
    (component / "script.sh").write_text("## VIASH START\n## VIASH END\necho 'not an h5ad' > \"$par_output\"\n")
    monkeypatch.setenv("VIASH_TEMP", str(tmp_path))
    result = run_component(component, ["--output", str(tmp_path / "out.h5ad")])
    assert result.exit_code == 1 and not (tmp_path / "out.h5ad").exists()
    err = capfd.readouterr().err
    assert "does not match its API format" in err and "no HDF5 signature" in err
