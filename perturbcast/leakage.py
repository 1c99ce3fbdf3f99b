"""Leakage checks of a task split: `check_split(train, test, solution)`, `check_partition(test_paths)` (the
folds of one partition test every eligible condition exactly once) and `perturbcast check-split [--partition]`.

A split leaks when a method could read a held-out condition's expression (in the training file, in the
test file) or when training shows a perturbation the task promises is unseen. The checks:

Every task
- the three files agree on `uns` task_id / dataset_id / split_seed and on the genes (same order);
  test and solution have identical obs_names (same order);
- the test file reveals only what DESIGN §3 allows: `X` all zero, no layers / obsm / obsp, obs columns
  only `perturbation, perturbation_type, n_targets, cell_type, condition, stratum, target_expression`,
  var columns only `gene_id, highly_variable_rank`;
- no control among the test conditions; no training row with the (perturbation, cell_type, condition) of a
  test row; as a content check, no training profile equal (to 4 decimals) to a solution profile (`X`,
  `replicate_1`, `replicate_2`), whatever its labels;
- `train.var['mean_expression']`, when present, is the mean over the training profiles only, and
  `highly_variable_rank` (the same in all three files) orders the genes by their training variance;
- the three files agree on `uns` n_folds / fold when they are a fold of a partition;
- with `common_path`: every control profile of the common dataset is in training.

Per task (`task_id`, else `train.uns['task_id']`)
- `unseen_perturbation`: no training perturbation targets a held-out gene (`solution.uns['held_out_targets']`;
  without it, the targets of `single` and `combo_seen0` test rows) and every test perturbation targets one;
- `unseen_combination`: test rows are combinations absent from training in every context; the stratum
  `combo_seen<k>` of each has exactly k targets whose single perturbation is in training; no training
  perturbation targets a gene of `solution.uns['held_out_singles']`;
- `cell_type_transfer`: every test perturbation is in training in another context; the test rows are in
  the declared `solution.uns['heldout_contexts']` / `heldout_context`, and in one context for a split made
  before folds (no `uns['n_folds']`).
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import scipy.sparse as sp

from . import layout
from .layout import vocabulary

# The control label and the one parser of target labels are the components' (src/utils/vocabulary.py).
CONTROL = vocabulary.CONTROL
ALLOWED_TEST_OBS = ("perturbation", "perturbation_type", "n_targets", "cell_type", "condition", "stratum",
                    "target_expression")
ALLOWED_TEST_VAR = ("gene_id", "highly_variable_rank")
SPLIT_FILES = ("train", "test", "solution")
# decimals of the profile comparison: a copy survives float32/float64 round trips at this precision
DECIMALS = 4
_BLOCK = 1024


def _load(value, role: str):
    """An AnnData object as given, or read from a path; (adata, problem)."""
    if value is None:
        return None, f"{role}: no file given"
    if not isinstance(value, (str, os.PathLike)):
        return value, None
    import anndata as ad

    path = os.fspath(value)
    if not os.path.isfile(path):
        return None, f"{role}: '{path}' does not exist"
    try:
        return ad.read_h5ad(path), None
    except Exception as error:  # damaged files raise many types
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return None, f"{role}: '{path}' cannot be read as AnnData ({detail})"


def _strings(frame: pd.DataFrame, column: str) -> np.ndarray:
    if column not in frame.columns:
        return np.array([""] * len(frame), dtype=object)
    return frame[column].astype(str).to_numpy()


def _examples(items, n: int = 3) -> str:
    items = sorted(set(map(str, items)))
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(repr(i) for i in items[:n]) + more


def _dense_rows(matrix, start: int, stop: int) -> np.ndarray:
    block = matrix[start:stop]
    block = block.toarray() if sp.issparse(block) else np.asarray(block)
    return block.astype(np.float64)


def _profile_keys(matrix) -> list[bytes | None]:
    """A hashable key per row: the profile rounded to DECIMALS (None for an all-zero row)."""
    keys: list[bytes | None] = []
    if matrix is None:
        return keys
    for start in range(0, matrix.shape[0], _BLOCK):
        block = np.round(_dense_rows(matrix, start, start + _BLOCK), DECIMALS) + 0.0  # -0.0 -> 0.0
        for row in block:
            keys.append(row.tobytes() if np.any(row) else None)
    return keys


def _column_mean(matrix) -> np.ndarray:
    total = np.zeros(matrix.shape[1], dtype=np.float64)
    for start in range(0, matrix.shape[0], _BLOCK):
        total += _dense_rows(matrix, start, start + _BLOCK).sum(axis=0)
    return total / max(matrix.shape[0], 1)


def _general_problems(train, test, solution) -> list[str]:
    problems = []
    for key in ("task_id", "dataset_id", "split_seed", "n_folds", "fold"):
        values = {role: adata.uns.get(key) for role, adata in zip(SPLIT_FILES, (train, test, solution))}
        if len({str(v) for v in values.values()}) > 1:
            problems.append(f"uns['{key}'] differs between the files: "
                            + ", ".join(f"{role} {value!r}" for role, value in values.items()))
    for role, adata in (("test", test), ("solution", solution)):
        if list(adata.var_names) != list(train.var_names):
            problems.append(f"{role}: genes (var_names) differ from train's or are in another order")
    if list(test.obs_names) != list(solution.obs_names):
        problems.append("test and solution obs_names are not identical (same conditions in the same order)")

    # the test file reveals nothing of the held-out expression
    X = test.X
    if X is not None:
        nonzero = int(X.count_nonzero()) if sp.issparse(X) else int(np.count_nonzero(np.asarray(X)))
        if nonzero:
            problems.append(f"test: X holds {nonzero} nonzero values (held-out expression revealed); "
                            f"expected an all-zero X")
    for slot in ("layers", "obsm", "obsp"):
        names = list(getattr(test, slot).keys())
        if names:
            problems.append(f"test: {slot} {_examples(names)} present; the test file may carry no expression")
    extra = [c for c in test.obs.columns if c not in ALLOWED_TEST_OBS]
    if extra:
        problems.append(f"test: obs columns {_examples(extra)} are not allowed (only {', '.join(ALLOWED_TEST_OBS)})")
    extra = [c for c in test.var.columns if c not in ALLOWED_TEST_VAR]
    if extra:
        problems.append(f"test: var columns {_examples(extra)} are not allowed (only {', '.join(ALLOWED_TEST_VAR)}); "
                        f"e.g. a mean over all profiles includes the held-out ones")

    # controls stay in training
    test_perturbations = _strings(test.obs, "perturbation")
    if (test_perturbations == CONTROL).any():
        problems.append(f"test: {int((test_perturbations == CONTROL).sum())} control conditions are held out; "
                        f"all controls must stay in training")

    # no held-out condition's rows in training, by labels ...
    keys = lambda adata: set(zip(*(_strings(adata.obs, c) for c in ("perturbation", "cell_type", "condition"))))  # noqa: E731
    shared = keys(train) & keys(test)
    if shared:
        problems.append(f"train: {len(shared)} held-out conditions have rows in training, e.g. "
                        f"{_examples('|'.join(k) for k in shared)}")
    # ... and by content
    train_keys = _profile_keys(train.X)
    index: dict[bytes, int] = {}
    for i, key in enumerate(train_keys):
        if key is not None:
            index.setdefault(key, i)
    leaked = {}
    for slot in ("X", "replicate_1", "replicate_2"):
        matrix = solution.X if slot == "X" else solution.layers[slot] if slot in solution.layers else None
        for k, key in enumerate(_profile_keys(matrix)):
            if key is not None and key in index:
                leaked.setdefault(str(solution.obs_names[k]), (slot, str(train.obs_names[index[key]])))
    if leaked:
        name, (slot, row) = sorted(leaked.items())[0]
        problems.append(f"train: {len(leaked)} held-out conditions have their profile in training, e.g. solution "
                        f"{slot} of '{name}' equals train row '{row}'")

    # statistics of the training file are computed on training rows only
    if "mean_expression" in train.var.columns and train.n_obs:
        observed = train.var["mean_expression"].to_numpy(dtype=np.float64)
        expected = _column_mean(train.X)
        if not np.allclose(observed, expected, rtol=1e-4, atol=1e-5):
            worst = int(np.argmax(np.abs(observed - expected)))
            problems.append(f"train: var['mean_expression'] is not the mean of the training profiles (gene "
                            f"'{train.var_names[worst]}': {observed[worst]:.6g} vs {expected[worst]:.6g}); it may "
                            f"average held-out profiles")
    problems += _rank_problems(train, test, solution)
    return problems


def _rank_problems(train, test, solution) -> list[str]:
    """`highly_variable_rank` orders the genes by their variance over the training profiles (ties aside)."""
    problems = []
    if "highly_variable_rank" not in train.var.columns or train.n_obs < 2:
        return problems
    rank = train.var["highly_variable_rank"].to_numpy()
    for role, adata in (("test", test), ("solution", solution)):
        if "highly_variable_rank" in adata.var.columns and not np.array_equal(
                adata.var["highly_variable_rank"].to_numpy(), rank):
            problems.append(f"{role}: var['highly_variable_rank'] differs from train's")
    variance = np.zeros(train.n_vars)
    mean = _column_mean(train.X)
    for start in range(0, train.n_obs, _BLOCK):
        variance += ((_dense_rows(train.X, start, start + _BLOCK) - mean) ** 2).sum(axis=0)
    variance /= train.n_obs
    if sorted(rank.tolist()) != list(range(train.n_vars)):
        return problems + ["train: var['highly_variable_rank'] is not a ranking 0..n_genes-1"]
    by_rank = variance[np.argsort(rank)]
    rises = np.flatnonzero(np.diff(by_rank) > 1e-6 * np.maximum(np.abs(by_rank[1:]), 1e-3))
    if len(rises):
        gene = train.var_names[np.argsort(rank)[rises[0] + 1]]
        problems.append(f"train: var['highly_variable_rank'] does not follow the variance of the training profiles "
                        f"(gene '{gene}' is more variable than a gene ranked above it); it may rank held-out profiles")
    return problems


def _train_targets(train) -> tuple[set[str], set[str]]:
    """(perturbation strings, target genes) of the training perturbations (controls excluded)."""
    perturbations = {p for p in _strings(train.obs, "perturbation") if p != CONTROL}
    genes = {g for p in perturbations for g in vocabulary.targets(p)}
    return perturbations, genes


def _unseen_perturbation_problems(train, test, solution) -> list[str]:
    problems = []
    train_perturbations, train_genes = _train_targets(train)
    test_perturbations = _strings(test.obs, "perturbation")
    strata = _strings(test.obs, "stratum")
    again = sorted(set(test_perturbations) & train_perturbations)
    if again:
        problems.append(f"train: test perturbations {_examples(again)} are also in training")
    if "held_out_targets" in solution.uns:
        held = {str(g) for g in np.atleast_1d(solution.uns["held_out_targets"])}
        touching = sorted(p for p in train_perturbations if not held.isdisjoint(vocabulary.targets(p)))
        if touching:
            problems.append(f"train: {len(touching)} training perturbations target a held-out gene, e.g. "
                            f"{_examples(touching)}")
        untouched = sorted({p for p in test_perturbations if held.isdisjoint(vocabulary.targets(p))})
        if untouched:
            problems.append(f"test: perturbations {_examples(untouched)} target no held-out gene")
    else:
        unseen = {g for p, s in zip(test_perturbations, strata) if s in ("single", "combo_seen0") for g in vocabulary.targets(p)}
        seen_unseen = sorted(unseen & train_genes)
        if seen_unseen:
            problems.append(f"train: held-out genes {_examples(seen_unseen)} (targets of single / combo_seen0 test "
                            f"rows) are perturbed in training")
        no_unseen = sorted({p for p, s in zip(test_perturbations, strata)
                            if s == "combo_seen1" and set(vocabulary.targets(p)) <= train_genes})
        if no_unseen:
            problems.append(f"train: every target of combo_seen1 test perturbations {_examples(no_unseen)} is "
                            f"perturbed in training")
    return problems


def _unseen_combination_problems(train, test, solution) -> list[str]:
    problems = []
    train_perturbations, _ = _train_targets(train)
    train_singles = {p for p in train_perturbations if len(vocabulary.targets(p)) == 1}
    test_perturbations = _strings(test.obs, "perturbation")
    singles = sorted({p for p in test_perturbations if len(vocabulary.targets(p)) < 2})
    if singles:
        problems.append(f"test: {_examples(singles)} are not combinations (need two or more targets)")
    again = sorted(set(test_perturbations) & train_perturbations)
    if again:
        problems.append(f"train: held-out combinations {_examples(again)} are in training (in some context)")
    wrong = []
    for perturbation, stratum in zip(test_perturbations, _strings(test.obs, "stratum")):
        n_seen = sum(1 for g in vocabulary.targets(perturbation) if g in train_singles)
        if stratum != f"combo_seen{n_seen}":
            wrong.append(f"{perturbation} ({stratum}, {n_seen} single(s) in training)")
    if wrong:
        problems.append(f"test: {len(wrong)} strata disagree with the singles in training, e.g. {_examples(wrong)}")
    if "held_out_singles" in solution.uns:
        held = {str(g) for g in np.atleast_1d(solution.uns["held_out_singles"])}
        touching = sorted(p for p in train_perturbations if not held.isdisjoint(vocabulary.targets(p)))
        if touching:
            problems.append(f"train: {len(touching)} training perturbations target a withheld single's gene, e.g. "
                            f"{_examples(touching)}")
    return problems


def _cell_type_transfer_problems(train, test, solution) -> list[str]:
    problems = []
    contexts = {f"{c}|{d}" for c, d in zip(_strings(test.obs, "cell_type"), _strings(test.obs, "condition"))}
    # a fold of a partition tests several contexts; a split made before folds held out one
    if len(contexts) > 1 and "n_folds" not in train.uns:
        problems.append(f"test: rows from {len(contexts)} contexts ({_examples(contexts)}), expected one held-out context")
    declared = solution.uns.get("heldout_context")
    if declared is not None and contexts and contexts != {str(declared)}:
        problems.append(f"test: rows are in {_examples(contexts)}, not in the declared held-out context {str(declared)!r}")
    listed = solution.uns.get("heldout_contexts")
    if listed is not None and contexts != {str(c) for c in np.atleast_1d(listed)}:
        problems.append(f"test: rows are in {_examples(contexts)}, not in the declared held-out contexts "
                        f"{_examples(np.atleast_1d(listed))}")
    observed: dict[tuple[str, str], set[str]] = {}
    for p, t, c, d in zip(*(_strings(train.obs, col) for col in ("perturbation", "perturbation_type", "cell_type",
                                                                  "condition"))):
        if p != CONTROL:
            observed.setdefault((p, t), set()).add(f"{c}|{d}")
    lonely = []
    for p, t, c, d in zip(*(_strings(test.obs, col) for col in ("perturbation", "perturbation_type", "cell_type",
                                                                 "condition"))):
        if not (observed.get((p, t), set()) - {f"{c}|{d}"}):
            lonely.append(f"{p} ({t}) in {c}|{d}")
    if lonely:
        problems.append(f"train: {len(lonely)} test perturbations are not observed in another context, e.g. "
                        f"{_examples(lonely)}")
    return problems


TASK_CHECKS = {
    "unseen_perturbation": _unseen_perturbation_problems,
    "unseen_combination": _unseen_combination_problems,
    "cell_type_transfer": _cell_type_transfer_problems,
}


def check_split(train_path, test_path, solution_path, task_id: str | None = None,
                common_path=None, train_cells_path=None, solution_cells_path=None, cells_path=None) -> list[str]:
    """Leakage problems of a split (one sentence each); empty when the split is clean.

    Each argument is a path to an .h5ad file or an AnnData object. `task_id` defaults to
    `train.uns['task_id']`; `common_path` (optional) is the common dataset the split was made from. The cells
    files of the split (paths, optional) are checked by `perturbcast.leakage_cells`, against the dataset
    cells `cells_path` when given.
    """
    loaded, problems = [], []
    for role, value in zip(SPLIT_FILES, (train_path, test_path, solution_path)):
        adata, problem = _load(value, role)
        loaded.append(adata)
        if problem:
            problems.append(problem)
    if problems:
        return problems
    train, test, solution = loaded
    problems += _general_problems(train, test, solution)
    task_id = task_id or train.uns.get("task_id")
    check = TASK_CHECKS.get(str(task_id))
    if check is not None:
        problems += check(train, test, solution)
    if train_cells_path is not None or solution_cells_path is not None:
        from .leakage_cells import check_split_cells

        problems += check_split_cells(train, test, solution, train_cells_path, solution_cells_path, cells_path)
    if common_path is not None:
        common, problem = _load(common_path, "common")
        if problem:
            problems.append(problem)
        else:
            is_control = common.obs["is_control"].to_numpy().astype(bool) if "is_control" in common.obs else \
                _strings(common.obs, "perturbation") == CONTROL
            problems += _control_part_problems(common, is_control, train, solution)
    return problems


def _control_part_problems(common, is_control: np.ndarray, train, solution) -> list[str]:
    """Every control profile of the common dataset is in train or in the reference part that observed deltas
    subtract (solution layer `control_reference`), and the two parts are disjoint: per context of a test row,
    the mean of the controls missing from train must be the reference (so no training control is in it)."""
    missing = sorted(set(common.obs_names[is_control]) - set(train.obs_names))
    if "control_reference" not in solution.layers:
        return [f"train: {len(missing)} control profiles of the common dataset are missing, e.g. "
                f"{_examples(missing)}"] if missing else []
    problems = []
    contexts = list(zip(_strings(common.obs, "cell_type"), _strings(common.obs, "condition")))
    position = {name: i for i, name in enumerate(common.obs_names)}
    held = {}
    for name in missing:
        held.setdefault(contexts[position[name]], []).append(position[name])
    genes = [common.var_names.get_loc(g) for g in solution.var_names]
    reference = np.asarray(solution.layers["control_reference"], dtype=np.float64)
    shared = int(solution.uns.get("n_contexts_shared_control", 0))
    checked = set()
    for row, context in enumerate(zip(_strings(solution.obs, "cell_type"), _strings(solution.obs, "condition"))):
        if context in checked:
            continue
        checked.add(context)
        rows = held.get(context)
        if not rows:
            if shared == 0:
                problems.append(f"solution: the reference control of context {'/'.join(context)} holds no control "
                                "profile outside train (the observed and predicted deltas would share its noise)")
            continue
        mean = np.asarray(_dense_rows(common.X[sorted(rows)], 0, len(rows)), dtype=np.float64).mean(axis=0)[genes]
        if not np.allclose(mean, reference[row], rtol=1e-5, atol=1e-5):
            problems.append(f"train: control profiles of the common dataset are missing in context {'/'.join(context)}: "
                            f"the {len(rows)} held out of train are not the reference part (layers['control_reference'] "
                            f"of '{solution.obs_names[row]}' is not their mean)")
    return problems[:3]


CONDITION_COLUMNS = ("perturbation", "cell_type", "condition", "perturbation_type")


def eligible_conditions(common, task_id: str, context: str | None = None) -> set[tuple[str, ...]]:
    """Conditions (perturbation, cell_type, condition, perturbation_type) that a task's partition must test:
    every perturbation (unseen_perturbation), every combination (unseen_combination), every perturbation
    measured in two or more contexts, in each of them or only in `context` ('cell_type|condition') when the
    partition is restricted to one (cell_type_transfer)."""
    keys = list(zip(*(_strings(common.obs, c) for c in CONDITION_COLUMNS)))
    keys = {k for k in keys if k[0] != CONTROL}
    if task_id == "unseen_combination":
        return {k for k in keys if len(vocabulary.targets(k[0])) >= 2}
    if task_id == "cell_type_transfer":
        contexts: dict[tuple[str, str], set] = {}
        for p, c, d, t in keys:
            contexts.setdefault((p, t), set()).add((c, d))
        return {k for k in keys if len(contexts[(k[0], k[3])]) >= 2 and (context is None or f"{k[1]}|{k[2]}" == context)}
    return keys


def check_partition(test_paths: list, common_path=None) -> list[str]:
    """Problems of a complete partition, given the test files of all its folds (or their split directories).

    The files must share task_id, dataset_id, split_seed and n_folds and hold each fold 0..n_folds-1 once;
    no condition may be tested in two folds; the conditions tested must number `uns['n_partition_conditions']`
    and, with `common_path`, be exactly the task's eligible conditions of the common dataset.
    """
    problems, tests = [], []
    for value in test_paths:
        if isinstance(value, (str, os.PathLike)) and os.path.isdir(value):
            value = os.fspath(layout.output_paths(value, layout.SPLIT, ("output_test",))["output_test"])
        adata, problem = _load(value, "test")
        if problem:
            problems.append(problem)
        tests.append(adata)
    if problems:
        return problems
    if not tests:
        return ["no test file given"]
    for key in ("task_id", "dataset_id", "split_seed", "n_folds", "n_partition_conditions", "heldout_context"):
        values = sorted({str(t.uns.get(key)) for t in tests})
        if len(values) > 1:
            problems.append(f"uns['{key}'] differs between the folds' test files: {_examples(values)}")
    if "n_folds" not in tests[0].uns or any("fold" not in t.uns for t in tests):
        return problems + ["test: uns['n_folds'] / uns['fold'] missing; not a fold of a partition"]
    n_folds = int(tests[0].uns["n_folds"])
    folds = [int(t.uns["fold"]) for t in tests]
    missing = sorted(set(range(n_folds)) - set(folds))
    if missing:
        problems.append(f"folds {', '.join(map(str, missing))} of {n_folds} are missing: the partition is incomplete")
    twice = sorted({f for f in folds if folds.count(f) > 1})
    if twice:
        problems.append(f"folds {', '.join(map(str, twice))} are given more than once")
    if twice or any(not 0 <= f < n_folds for f in folds):
        return problems
    tested: dict[tuple[str, ...], list[int]] = {}
    for fold, test in zip(folds, tests):
        for key in zip(*(_strings(test.obs, c) for c in CONDITION_COLUMNS)):
            tested.setdefault(key, []).append(fold)
    again = {k: f for k, f in tested.items() if len(f) > 1}
    if again:
        problems.append(f"{len(again)} conditions are tested in more than one fold, e.g. "
                        f"{_examples('|'.join(k[:3]) + f' (folds {f})' for k, f in again.items())}")
    declared = tests[0].uns.get("n_partition_conditions")
    if declared is not None and not missing and len(tested) != int(declared):
        problems.append(f"the folds test {len(tested)} distinct conditions, but the partition has {int(declared)} "
                        f"(uns['n_partition_conditions'])")
    if common_path is not None:
        common, problem = _load(common_path, "common")
        if problem:
            return problems + [problem]
        eligible = eligible_conditions(common, str(tests[0].uns.get("task_id")), tests[0].uns.get("heldout_context"))
        if not missing and eligible - set(tested):
            problems.append(f"{len(eligible - set(tested))} eligible conditions are tested in no fold, e.g. "
                            f"{_examples('|'.join(k[:3]) for k in eligible - set(tested))}")
        if set(tested) - eligible:
            problems.append(f"{len(set(tested) - eligible)} tested conditions are not eligible for the task, e.g. "
                            f"{_examples('|'.join(k[:3]) for k in set(tested) - eligible)}")
    return problems


def main(argv: list[str] | None = None) -> int:
    """The `check-split` command (perturbcast.leakage_cli)."""
    from .leakage_cli import main as check_split_main

    return check_split_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
