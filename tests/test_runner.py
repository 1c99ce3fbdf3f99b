"""Parity of `perturbcast run` / `perturbcast test` with viash 0.9 (../shared/docs/viash-runtime.md)."""
import json
import os
import textwrap
from pathlib import Path

import pytest
import yaml

from perturbcast import viash
from perturbcast.config import load_config
from perturbcast.runner import run_component, run_component_tests

HINT = 'Use "--help" to get more information on the parameters.'

ECHO_SCRIPT = """\
import json, os, sys
## VIASH START
par = {"this": "is replaced"}
meta = {}
## VIASH END
record = {"par": par, "meta": meta, "cwd": os.getcwd(), "listing": sorted(os.listdir(meta["resources_dir"])),
          "script": __file__}
with open(os.environ["ECHO_RECORD"], "w") as handle:
    json.dump(record, handle)
if par.get("write"):
    open(par["write"], "w").write("x")
sys.exit(int(par.get("exit_code") or 0))
"""

ECHO_CONFIG = {
    "name": "echo",
    "namespace": "testing",
    "arguments": [
        {"name": "--input", "alternatives": ["-i"], "type": "file"},
        {"name": "--names", "type": "string", "multiple": True},
        {"name": "--ints", "type": "integer", "multiple": True},
        {"name": "--flags", "type": "boolean", "multiple": True},
        {"name": "--times", "type": "integer", "default": 3, "min": 0, "max": 10},
        {"name": "--ratio", "type": "double", "default": 0.00001, "min": 0, "max": 2.5},
        {"name": "--shout", "type": "boolean_true"},
        {"name": "--quiet", "type": "boolean_false"},
        {"name": "--bool", "type": "boolean"},
        {"name": "--mode", "type": "string", "choices": ["fast", "slow"], "default": "fast"},
        {"name": "--needed", "type": "string", "required": True},
        {"name": "--with_example", "type": "string", "example": "not a default"},
        {"name": "--text", "type": "string", "default": "a $HOME\nb"},
        {"name": "-s", "type": "string"},
        {"name": "--exit_code", "type": "integer"},
        {"name": "--write", "type": "file", "direction": "output", "must_exist": False},
        {"name": "--result", "type": "file", "direction": "output"},
        {"name": "--label", "type": "string", "direction": "output"},
    ],
    "resources": [{"type": "python_script", "path": "script.py"}, {"path": "helper.txt"}],
    "requirements": {"cpus": 2},
}


@pytest.fixture
def package(tmp_path, monkeypatch):
    root = tmp_path / "pkg"
    component = root / "src" / "testing" / "echo"
    component.mkdir(parents=True)
    (root / "_viash.yaml").write_text("name: pkg\nversion: '1.0'\n")
    (component / "config.vsh.yaml").write_text(yaml.safe_dump(ECHO_CONFIG, sort_keys=False))
    (component / "script.py").write_text(ECHO_SCRIPT)
    (component / "helper.txt").write_text("resource")
    temp = tmp_path / "viash_temp"
    temp.mkdir()
    monkeypatch.setenv("VIASH_TEMP", str(temp))
    monkeypatch.setenv("ECHO_RECORD", str(tmp_path / "record.json"))
    monkeypatch.chdir(tmp_path)
    return component


def run(package, *args, **kwargs):
    record_path = Path(os.environ["ECHO_RECORD"])
    if record_path.exists():
        record_path.unlink()
    result = run_component(package, ["--needed", "n", *args], **kwargs)
    record = json.loads(record_path.read_text()) if record_path.exists() else None
    return result, record


def test_argument_forms(package):
    Path("in put.txt").write_text("")
    result, record = run(package, "-i", "in put.txt", "--times=4", "--ratio", "1.5", "-s", "short")
    assert result.exit_code == 0
    assert record["par"]["input"] == "in put.txt"
    assert record["par"]["times"] == 4
    assert record["par"]["ratio"] == 1.5
    assert record["par"]["s"] == "short"


def test_quoting_round_trip(package):
    value = "it's a \"file\" with $dollar, `tick` and back\\slash and  spaces"
    result, record = run(package, "--names", value, "--names", "o'neil")
    assert result.exit_code == 0
    assert record["par"]["names"] == [value, "o'neil"]


def test_value_ending_in_backslash_is_a_python_syntax_error_as_in_viash(package, capfd):
    result, record = run(package, "--s", "x") if False else run(package, "-s", "ends\\")
    assert result.exit_code != 0 and record is None
    assert "SyntaxError" in capfd.readouterr().err


def test_multiple_values_repeat_and_separator(package):
    result, record = run(package, "--names", "a", "--names", "b;c", "--ints", "1;2", "--ints=3",
                         "--flags", "true;False", "--flags", "TRUE")
    assert record["par"]["names"] == ["a", "b", "c"]
    assert record["par"]["ints"] == [1, 2, 3]
    assert record["par"]["flags"] == [True, False, True]


def test_unset_optional_and_multiple_are_none(package):
    _, record = run(package)
    assert record["par"]["input"] is None and record["par"]["names"] is None and record["par"]["s"] is None


def test_defaults_and_examples(package):
    _, record = run(package)
    assert record["par"]["times"] == 3
    assert record["par"]["ratio"] == 1e-05
    assert record["par"]["mode"] == "fast"
    assert record["par"]["with_example"] is None  # example is not a default
    assert record["par"]["text"] == "a $HOME\\nb"  # default newline becomes a literal \n, $ stays


def test_output_string_does_not_reach_the_script(package):
    _, record = run(package)
    assert "label" not in record["par"] and "result" in record["par"]


def test_required_missing(package, capfd):
    result = run_component(package, [])
    assert result.exit_code == 1
    assert f"[error] '--needed' is a required argument. {HINT}" in capfd.readouterr().err


def test_empty_value_counts_as_given(package):
    result = run_component(package, ["--needed", ""])
    assert result.exit_code == 0


def test_empty_integer_passes_checks_then_fails_in_python(package, capfd):
    result, record = run(package, "--times", "")
    assert result.exit_code != 0 and record is None
    assert "ValueError" in capfd.readouterr().err


def test_booleans(package, capfd):
    _, record = run(package)
    assert record["par"]["shout"] is False and record["par"]["quiet"] is True and record["par"]["bool"] is None
    _, record = run(package, "--shout", "--quiet", "--bool", "yes")
    assert record["par"]["shout"] is True and record["par"]["quiet"] is False
    assert record["par"]["bool"] is False  # viash quirk: 'yes' passes the check, then 'yes' == 'true' is False
    _, record = run(package, "--shout=true")
    assert record["par"]["shout"] is False
    assert "--shout=true looks like a parameter but is not a defined parameter" in capfd.readouterr().err
    result, _ = run(package, "--shout", "--shout")
    assert result.exit_code == 1
    assert "Bad arguments for option '--shout'" in capfd.readouterr().err
    result, _ = run(package, "--bool", "maybe")
    assert result.exit_code == 1
    assert f"[error] '--bool' has to be a boolean. {HINT}" in capfd.readouterr().err


def test_repeated_single_value(package, capfd):
    result, _ = run(package, "--times", "1", "--times", "2")
    assert result.exit_code == 1
    assert ("[error] Bad arguments for option '--times': '1' & '2' - you should provide exactly one argument "
            "for this option.") in capfd.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--times", "abc"], f"'--times' has to be an integer. {HINT}"),
    (["--ratio", "1e"], f"'--ratio' has to be a double. {HINT}"),
    (["--ints", "1;x"], f"'--ints' has to be an integer. {HINT}"),
    (["--times", "-1"], f"'--times' has be more than or equal to 0. {HINT}"),
    (["--times", "11"], f"'--times' has be less than or equal to 10. {HINT}"),
    (["--ratio", "3"], f"'--ratio' has to be less than or equal to 2.5. {HINT}"),
    (["--ratio", "-.5"], f"'--ratio' has be more than or equal to 0.0. {HINT}"),
    (["--mode", "medium"], f"'--mode' specified value of 'medium' is not in the list of allowed values. {HINT}"),
    (["--input", "missing.txt"], "Input file 'missing.txt' does not exist."),
    (["--times"], f"Not enough arguments passed to --times. {HINT}"),
    (["---memory", "lots"], "'---memory' has to be an amount of memory"),
])
def test_checks_and_error_texts(package, capfd, args, message):
    result, record = run(package, *args)
    assert result.exit_code == 1 and record is None
    assert f"[error] {message}" in capfd.readouterr().err


def test_unknown_option_is_warned_and_dropped(package, capfd):
    result, record = run(package, "--nope", "value")
    assert result.exit_code == 0
    assert "[warning] --nope looks like a parameter" in capfd.readouterr().err


def test_missing_output_after_run(package, capfd):
    result, _ = run(package, "--result", "out/never.txt")
    assert result.exit_code == 1
    assert "[error] Output file 'out/never.txt' does not exist." in capfd.readouterr().err
    assert Path("out").is_dir()  # create_parent made the parent before the run


def test_output_without_must_exist_and_exit_code(package):
    result, _ = run(package, "--write", "sub/dir/file.txt")
    assert result.exit_code == 0 and Path("sub/dir/file.txt").exists()
    result, _ = run(package, "--exit_code", "42")
    assert result.exit_code == 42


def test_meta_fields_and_layout(package, tmp_path):
    result, record = run(package, "---memory", "2GiB")
    meta = record["meta"]
    resources_dir = Path(meta["resources_dir"])
    assert resources_dir.parent == tmp_path / "viash_temp" and resources_dir.name.startswith("viash_echo")
    assert meta["name"] == meta["functionality_name"] == "echo"
    assert meta["executable"] == str(resources_dir / "echo")
    assert meta["config"] == str(resources_dir / ".config.vsh.yaml")
    assert meta["temp_dir"] == str(tmp_path / "viash_temp")
    assert meta["cpus"] == 2  # from requirements
    assert meta["memory_b"] == 2 * 1024 ** 3 and meta["memory_gib"] == 2 and meta["memory_gb"] == 3
    assert meta["memory_mib"] == 2048 and meta["memory_kb"] == 2147484
    assert "helper.txt" in record["listing"] and ".config.vsh.yaml" in record["listing"]
    assert "script.py" not in record["listing"]  # the main script is injected, not copied
    assert Path(record["script"]).name.startswith("viash-run-echo-")
    assert record["cwd"] == str(tmp_path)
    assert not resources_dir.exists()  # removed after a successful run


def test_build_dir_kept_on_failure_and_on_request(package, tmp_path):
    _, record = run(package, "--exit_code", "3")
    assert Path(record["meta"]["resources_dir"]).exists()
    _, record = run(package, keep=True)
    assert Path(record["meta"]["resources_dir"]).exists()


def test_cpus_and_memory_flags(package):
    _, record = run(package, "---cpus=4", "---memory", "500MB")
    assert record["meta"]["cpus"] == 4
    assert record["meta"]["memory_mb"] == 500 and record["meta"]["memory_mib"] == 477


def test_help_and_version(package, capsys):
    assert run_component(package, ["--help"]).exit_code == 0
    out = capsys.readouterr().out
    assert "--needed" in out and "required parameter" in out
    assert run_component(package, ["--version"]).exit_code == 0
    assert capsys.readouterr().out.strip() == "echo 1.0"


def test_injection_block_matches_viash_text(package):
    config = load_config(package)
    invocation = viash.Invocation(values={"input": "a'b", "names": "x;y", "times": "3", "shout": "true"})
    meta = {"name": "echo", "functionality_name": "echo", "resources_dir": "/r", "executable": "/r/echo",
            "config": "/r/.config.vsh.yaml", "temp_dir": "/tmp"}
    block = viash.injection_block(config, invocation, meta)
    assert block.startswith("par = {\n  'input': r'a'\"'\"r'b',\n  'names': r'x;y'.split(';'),\n")
    assert "  'ints': None,\n" in block and "  'times': int(r'3'),\n" in block
    assert "  'shout': r'true'.lower() == 'true',\n" in block
    assert "meta = {\n  'name': r'echo',\n  'functionality_name': r'echo',\n" in block
    assert "  'cpus': None,\n  'memory_b': None," in block
    assert block.endswith("dep = {\n  \n}\n")
    namespace = {}
    exec(block, namespace)
    assert namespace["par"]["input"] == "a'b" and namespace["par"]["names"] == ["x", "y"]


def test_injection_keeps_indent_and_prepends_without_markers():
    script = "def main():\n    ## VIASH START\n    par = {}\n    ## VIASH END\n    return par\n"
    injected = viash.inject(script, "par = {\n  'a': r'1'\n}\n")
    assert "    # The following code has been auto-generated by Viash.\n    par = {\n      'a': r'1'\n    }\n" in injected
    assert "    par = {}" not in injected
    bare = viash.inject("print(par)\n", "par = {\n  \n}\n")
    assert bare.startswith("## VIASH START\n# The following code has been auto-generated by Viash.\npar = {")
    assert "## VIASH END\nprint(par)" in bare


def test_positional_arguments(tmp_path, monkeypatch):
    root = tmp_path / "pkg"
    component = root / "src" / "testing" / "pos"
    component.mkdir(parents=True)
    (root / "_viash.yaml").write_text("name: pkg\n")
    (component / "config.vsh.yaml").write_text(yaml.safe_dump({
        "name": "pos", "arguments": [{"name": "first", "type": "string"},
                                     {"name": "rest", "type": "string", "multiple": True}],
        "resources": [{"type": "python_script", "path": "script.py"}]}))
    (component / "script.py").write_text(ECHO_SCRIPT)
    monkeypatch.setenv("ECHO_RECORD", str(tmp_path / "r.json"))
    monkeypatch.setenv("VIASH_TEMP", str(tmp_path))
    assert run_component(component, ["a", "b", "c"]).exit_code == 0
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["par"]["first"] == "a" and record["par"]["rest"] == ["b", "c"]


def test_viash_test_layout(tmp_path, monkeypatch, capsys):
    root = tmp_path / "pkg"
    component = root / "src" / "testing" / "comp"
    component.mkdir(parents=True)
    (root / "_viash.yaml").write_text("name: pkg\n")
    (component / "config.vsh.yaml").write_text(yaml.safe_dump({
        "name": "comp", "namespace": "testing",
        "arguments": [{"name": "--output", "type": "file", "direction": "output"}],
        "resources": [{"type": "python_script", "path": "script.py"}],
        "test_resources": [{"type": "python_script", "path": "check.py"},
                           {"type": "python_script", "path": "fails.py"},
                           {"path": "data.txt"}]}))
    (component / "script.py").write_text("## VIASH START\n## VIASH END\nopen(par['output'], 'w').write('ok')\n")
    (component / "data.txt").write_text("payload")
    (component / "check.py").write_text(textwrap.dedent("""\
        import os, subprocess
        ## VIASH START
        ## VIASH END
        assert os.getcwd() == meta["resources_dir"]
        assert meta["executable"] == os.path.join(meta["resources_dir"], "comp")
        assert meta["temp_dir"] == os.path.join(meta["resources_dir"], "tmp")
        assert open("data.txt").read() == "payload"
        assert os.path.exists(meta["config"]) and "dir" in par
        subprocess.run([meta["executable"], "--output", "out.txt"], check=True)
        assert open("out.txt").read() == "ok"
        """))
    (component / "fails.py").write_text("raise SystemExit(1)\n")
    monkeypatch.setenv("VIASH_TEMP", str(tmp_path / "t"))
    report = run_component_tests(component)
    assert report.passed == ["check"] and report.failed == ["fails"]
    folder = report.directory / "test_check"
    assert (folder / "comp").exists() and (folder / ".config.vsh.yaml").exists()
    assert (report.directory / ".build.yaml").exists()


def test_peak_memory_is_the_components_own_through_the_spawner(tmp_path):
    """Forked from a large parent, ru_maxrss would include the parent; the fork server avoids that."""
    import numpy as np

    from perturbcast.spawner import Spawner

    ballast = np.ones(300_000_000 // 8)  # the parent holds 300 MB
    meta = {"name": "m", "temp_dir": str(tmp_path)}
    spawner = Spawner()
    with open(tmp_path / "log.txt", "w") as log:
        small = viash.run_script("print('small')", meta, stdout=log, stderr=log, spawner=spawner)
        large = viash.run_script("import numpy as np; a = np.ones(200_000_000 // 8); print(a.sum())", meta,
                                 stdout=log, stderr=log, spawner=spawner)
        failing = viash.run_script("raise SystemExit(7)", meta, stdout=log, stderr=log, spawner=spawner)
    spawner.close()
    assert ballast.sum() > 0
    assert small.peak_rss_bytes < 100 * 2**20
    assert 190 * 2**20 < large.peak_rss_bytes < 300 * 2**20
    assert failing.exit_code == 7 and small.exit_code == 0
    assert "small" in (tmp_path / "log.txt").read_text()


def test_a_preloaded_spawner_runs_scripts_as_python_would(tmp_path):
    """The engine's spawner imports numpy/pandas/anndata once and runs each script in a forked child:
    exit codes, output, sys.argv, sys.path and stdin must be what `python -B script` gives."""
    from perturbcast.engine import PRELOADED_MODULES
    from perturbcast.spawner import Spawner

    meta = {"name": "m", "temp_dir": str(tmp_path)}
    (tmp_path / "formats.py").write_text("WHERE = 'beside the script'\n")  # perturbcast/formats.py must not win
    spawner = Spawner(preload=PRELOADED_MODULES)
    runs = {}
    with open(tmp_path / "log.txt", "w") as log:
        for name, text in {
            "ok": "import sys, formats; print('argv', sys.argv[0].endswith('.py'), formats.WHERE, sys.stdin.read() == '')",
            "preloaded": "import sys; print('preloaded', 'anndata' in sys.modules, __name__)",
            "code": "raise SystemExit(7)",
            "message": "import sys; sys.exit('stopped with a message')",
            "crash": "def broken():\n    raise ValueError('broken input')\nbroken()",
            "atexit": "import atexit; atexit.register(lambda: print('at exit ran'))",
        }.items():
            runs[name] = viash.run_script(text, meta, cwd=str(tmp_path), stdout=log, stderr=log, spawner=spawner)
    spawner.close()
    text = (tmp_path / "log.txt").read_text()
    assert {name: run.exit_code for name, run in runs.items()} == {
        "ok": 0, "preloaded": 0, "code": 7, "message": 1, "crash": 1, "atexit": 0}
    assert "argv True beside the script True" in text
    assert "preloaded True __main__" in text
    assert "stopped with a message" in text and "ValueError: broken input" in text and "at exit ran" in text


def test_the_engine_replaces_a_fork_server_that_died():
    from perturbcast import engine

    first = engine._spawner()
    assert engine._spawner() is first  # one per worker thread, reused
    first.process.kill()
    first.process.wait()
    second = engine._spawner()
    assert second is not first and second.process.poll() is None
