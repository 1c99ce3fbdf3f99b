"""The `par`/`meta`/`dep` blocks viash 0.9 injects into R and Bash scripts, and how each language runs.

Read from viash 0.9.4 (the version `_viash.yaml` pins): `config/resources/RScript.scala`,
`BashScript.scala`, `Script.scala`, `helpers/Bash.scala` and `wrapper/BashWrapper.scala`. The wrapper
writes shell code into the script (`$( if [ ! -z ${VIASH_PAR_X+x} ]; then ... fi )`) that bash expands
when the outer heredoc is read; the functions here produce the text that expansion gives, so a script
sees what it would see under viash. `tests/test_languages.py` expands viash's own template with bash and
compares.

R (`RScript.generateInjectionMods`): every value is a single-quoted R string in which `'` and `\\` get a
backslash (`sed "s#['\\\\]#\\\\\\\\&#g"`), wrapped in a converter (`as.integer(...)`, `as.numeric(...)`,
`as.logical(toupper(...))`, `bit64::as.integer64(...)` for long, `strsplit(..., split = ';')[[1]]` for
`multiple`); unset values are `NULL`; the lists are built with `options(warn = 2)`, so a value R can only
coerce with a warning (an integer out of range) stops the script. Bash (`BashScript`): one
`par_x='value'` line per line of the value (`'` spliced as `'"'"'`), so a multi-line value keeps its
last line; unset values give the comment `# par_x=`; multiple values stay one string joined by the
separator. Both print values with bash's `echo`, so a value that is only echo options (`-n`, `-e`,
`-nE`, ...) comes out empty (R) or unset / empty (Bash) -- a viash quirk copied knowingly.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

BOOLEAN_TYPES = ("boolean", "boolean_true", "boolean_false")
ECHO_OPTIONS = re.compile(r"^-[neE]+$")


@dataclass(frozen=True)
class Language:
    """What viash's `ScriptCompanion` says about a script type."""

    type: str          # resource type in the config
    extension: str     # of the temp script `viash-run-<name>-XXXXXX.<ext>`
    executor: tuple    # the command before the script path (`Rscript`, `bash`; Python: see viash.run_script)


LANGUAGES = {
    "python_script": Language("python_script", "py", ("python", "-B")),
    "r_script": Language("r_script", "R", ("Rscript",)),
    "bash_script": Language("bash_script", "sh", ("bash",)),
}


def language_of(resource: dict) -> Language:
    kind = resource.get("type", "python_script" if str(resource.get("path", "")).endswith(".py") else None)
    if kind not in LANGUAGES:
        supported = ", ".join(LANGUAGES)
        raise ValueError(f"script type '{kind}' cannot be run by perturbcast (supported: {supported})")
    return LANGUAGES[kind]


META_STRINGS = ("name", "functionality_name", "resources_dir", "executable", "config", "temp_dir")
META_MEMORY = ("memory_b", "memory_kb", "memory_mb", "memory_gb", "memory_tb", "memory_pb",
               "memory_kib", "memory_mib", "memory_gib", "memory_tib", "memory_pib")


def injection_entries(config, values: dict, meta: dict, cpus: str | None, memory: dict) -> dict:
    """dest -> [(plain name, type, multiple, separator, raw value or None)] in viash's order
    (`getArgumentLikesGroupedByDest`: par, meta, dep; meta as `BashWrapper.metaArgs`, where `cpus` is an
    integer and the memory fields are longs)."""
    par = [(a.plain_name, a.type, a.multiple, a.multiple_sep, values.get(a.plain_name))
           for a in config.arguments if a.reaches_script]
    metas = [(key, "string", False, ";", meta[key]) for key in META_STRINGS]
    metas.append(("cpus", "integer", False, ";", cpus))
    metas += [(key, "long", False, ";", str(memory[key]) if key in memory else None) for key in META_MEMORY]
    return {"par": par, "meta": metas, "dep": []}


def _echo(value: str, newline: bool) -> str:
    """What bash's builtin `echo [-n] "$VALUE"` prints: an argument made only of echo options is consumed."""
    match = ECHO_OPTIONS.match(value)
    if match:
        return "" if (not newline or "n" in value) else "\n"
    return value + ("\n" if newline else "")


# ------------------------------------------------------------------------------------------------ R

def _r_converter(argument_type: str, multiple: bool, sep: str) -> tuple[str, str]:
    """`(lhs, rhs)` of RScript.generateInjectionMods around the quoted value."""
    if multiple:
        if argument_type in BOOLEAN_TYPES:
            return "as.logical(strsplit(toupper(", f"), split = '{sep}')[[1]])"
        if argument_type == "integer":
            return "as.integer(strsplit(", f", split = '{sep}')[[1]])"
        if argument_type == "long":
            return "bit64::as.integer64(strsplit(", f", split = '{sep}')[[1]])"
        if argument_type == "double":
            return "as.numeric(strsplit(", f", split = '{sep}')[[1]])"
        return "strsplit(", f", split = '{sep}')[[1]]"
    if argument_type in BOOLEAN_TYPES:
        return "as.logical(toupper(", "))"
    if argument_type == "integer":
        return "as.integer(", ")"
    if argument_type == "long":
        return "bit64::as.integer64(", ")"
    if argument_type == "double":
        return "as.numeric(", ")"
    return "", ""


def r_value(argument_type: str, multiple: bool, sep: str, value: str | None) -> str:
    if value is None:
        return "NULL"
    lhs, rhs = _r_converter(argument_type, multiple, sep)
    escaped = re.sub(r"(['\\])", r"\\\1", _echo(value, newline=False))
    return f"{lhs}'{escaped}'{rhs}"


def r_block(entries: dict[str, list[tuple[str, str, bool, str, str | None]]]) -> list[str]:
    """The R block as a list of template lines (a line may hold a multi-line value; only its first line is
    indented by `inject`). `entries`: dest -> [(plain name, type, multiple, sep, raw value or None)]."""
    lines = ["# treat warnings as errors", ".viash_orig_warn <- options(warn = 2)", ""]
    for dest, items in entries.items():
        rendered = [f'"{name}" = {r_value(kind, multiple, sep, value)}' for name, kind, multiple, sep, value in items]
        # one template line per entry, as viash's `parSet.mkString(",\n  ")` (an empty list leaves "  ")
        body = [f"  {item}," for item in rendered[:-1]] + [f"  {rendered[-1]}" if rendered else "  "]
        lines += [f"{dest} <- list(", *body, ")"]
    lines += ["", "", "# restore original warn setting", "options(.viash_orig_warn)", "rm(.viash_orig_warn)", ""]
    return lines


# --------------------------------------------------------------------------------------------- Bash

def bash_lines(variable: str, value: str | None) -> str:
    """`echo "$VALUE" | sed "s#'#'\\"'\\"'#g;s#.*#par_x='&'#"`, or `# par_x=` when unset."""
    if value is None:
        return f"# {variable}="
    printed = _echo(value, newline=True)
    if not printed:
        return ""  # sed gets no input and prints nothing: the variable stays unset
    rows = printed[:-1].split("\n")
    return "\n".join(f"{variable}='" + row.replace("'", "'\"'\"'") + "'" for row in rows)


def bash_block(entries: dict[str, list[tuple[str, str, bool, str, str | None]]]) -> list[str]:
    lines = []
    for dest, items in entries.items():
        lines += [bash_lines(f"{dest}_{name}", value) for name, _kind, _multiple, _sep, value in items]
    return lines + [""]

