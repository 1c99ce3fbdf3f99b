"""Shared helpers of the task components: common dataset + held-out rows -> train / test / solution.

Included as a viash resource by every task (`src/tasks/<id>`); needs only numpy, pandas, scipy and
anndata. A task decides *which* rows of the common dataset are held out in one fold of a K-fold partition
(src/utils/partitions.py) and the stratum of each held-out row; `build_split` does the rest the same way
for every task:

    seed, n_folds, fold = split_arguments(par, fail)
    is_test, stratum, exclude, info = partitions.perturbation_fold(common.obs, n_folds, fold, seed)
    train, test, solution = build_split(common, is_test, stratum, task_id="...", seed=seed,
                                        n_folds=n_folds, fold=fold, exclude=exclude)

Problems of the input raise `SplitInputError` (the component turns it into `fail`, exit 1); a split
that cannot be made on this dataset raises `SplitNotApplicable` (the component calls `not_applicable`,
exit 99). Everything is ordered deterministically (sorted, never by set or dict iteration order).

Nothing a method can read is computed from test rows: `highly_variable_rank` (all three files) and
`mean_expression` (train) are recomputed from the training rows of the split.
"""
from __future__ import annotations

import re
import zlib

import numpy as np
import pandas as pd
import scipy.sparse as sp

import vocabulary
from vocabulary import CONTROL, TARGET_SEPARATOR
ID_SEPARATOR = "|"
# obs column of the common dataset that cuts each context's control profiles into a training part (1) and a
# reference part (2) that only scoring sees; 0 for perturbation profiles.
CONTROL_PART = "control_part"
# obs columns of the common dataset that every task reads (checked on input even without a config).
REQUIRED_OBS = ("perturbation", "is_control", "perturbation_type", "n_targets", "cell_type", "condition",
                "replicate", "n_cells")
# uns entries copied from the common dataset into every task output.
COPIED_UNS = ("normalization_id", "source_sha256", "replicate_kind")
# dataset_* entries NOT copied: the loaders' QC card is computed over every condition, the held-out ones
# included, so a method reading it would see test rows (the report reads it from the dataset file itself)
WITHHELD_UNS = ("dataset_report",)
REQUIRED_UNS = ("dataset_id", "normalization_id")


class SplitInputError(ValueError):
    """The common dataset does not follow the contract in a way the split needs (exit 1)."""


class SplitNotApplicable(Exception):
    """The split cannot be made on this dataset, e.g. too few target genes (exit 99)."""


# --------------------------------------------------------------------------------------------------
# Perturbations and targets
# --------------------------------------------------------------------------------------------------

def split_arguments(par: dict, fail) -> tuple[int, int, int]:
    """`--seed`, `--n_folds` and `--fold` of every task, checked; `fail(message)` stops the component."""
    values = {"seed": 0, "n_folds": 5, "fold": 0}
    for name in values:
        value = values[name] if par.get(name) is None else par[name]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            fail(f"--{name} is {value!r}, expected an integer")
        values[name] = int(value)
    if values["seed"] < 0:
        fail(f"--seed is {values['seed']}, expected a non-negative integer")
    if values["n_folds"] < 2:
        fail(f"--n_folds is {values['n_folds']}, expected an integer >= 2")
    if not 0 <= values["fold"] < values["n_folds"]:
        fail(f"--fold is {values['fold']}, expected an integer from 0 to n_folds - 1 = {values['n_folds'] - 1}")
    return values["seed"], values["n_folds"], values["fold"]


def parse_targets(perturbation: str) -> tuple[str, ...]:
    """Target symbols of a perturbation string, in string order (`control` -> no targets)."""
    try:
        return vocabulary.targets(perturbation)
    except vocabulary.TargetLabelError as error:  # the task's own kind of input error (exit 1 with its message)
        raise SplitInputError(str(error)) from None


def row_targets(obs: pd.DataFrame) -> list[tuple[str, ...]]:
    """Validated target tuple of every row of a common dataset's obs (empty tuple for controls)."""
    perturbations = obs["perturbation"].astype(str).to_numpy()
    is_control = obs["is_control"].to_numpy().astype(bool)
    n_targets = obs["n_targets"].to_numpy()
    parsed: dict[str, tuple[str, ...]] = {}
    for perturbation in sorted(set(perturbations)):
        targets = parse_targets(perturbation)
        if list(targets) != sorted(set(targets)):
            raise SplitInputError(
                f"obs['perturbation'] holds {perturbation!r}, expected its targets sorted and unique "
                f"({TARGET_SEPARATOR.join(sorted(set(targets)))!r})")
        parsed[perturbation] = targets
    wrong_control = np.flatnonzero(is_control != (perturbations == CONTROL))
    if len(wrong_control):
        i = int(wrong_control[0])
        raise SplitInputError(
            f"obs['is_control'] is {bool(is_control[i])} for perturbation {perturbations[i]!r} in "
            f"{len(wrong_control)} rows, expected True exactly for '{CONTROL}'")
    targets = [parsed[p] for p in perturbations]
    wrong_n = [i for i, t in enumerate(targets) if int(n_targets[i]) != len(t)]
    if wrong_n:
        i = wrong_n[0]
        raise SplitInputError(
            f"obs['n_targets'] is {int(n_targets[i])} for perturbation {perturbations[i]!r} in {len(wrong_n)} "
            f"rows, expected the number of targets ({len(targets[i])})")
    return targets


def target_genes(targets: list[tuple[str, ...]], mask=None) -> list[str]:
    """Sorted distinct target genes of the rows in `mask` (default all rows)."""
    rows = range(len(targets)) if mask is None else np.flatnonzero(np.asarray(mask, dtype=bool))
    return sorted({gene for i in rows for gene in targets[i]})


def touches(targets: list[tuple[str, ...]], genes) -> np.ndarray:
    """Boolean per row: does the row's perturbation target any of `genes`?"""
    genes = set(genes)
    return np.array([not genes.isdisjoint(t) for t in targets], dtype=bool)


# --------------------------------------------------------------------------------------------------
# Building the three files
# --------------------------------------------------------------------------------------------------

def condition_id(perturbation: str, cell_type: str, condition: str) -> str:
    """Readable id of a test condition, e.g. `G1+G2|K562|none`."""
    return ID_SEPARATOR.join((perturbation, cell_type, condition))


def output_uns(common, task_id: str, seed: int, n_folds: int | None = None, fold: int | None = None) -> dict:
    """uns of every task output: dataset_* fields but dataset_report, normalization_id, source_sha256, task_id,
    split_seed and, for a fold of a partition, n_folds and fold."""
    missing = [key for key in REQUIRED_UNS if key not in common.uns]
    if missing:
        raise SplitInputError(f"uns['{missing[0]}'] is missing (expected string)")
    uns = {key: common.uns[key] for key in sorted(common.uns.keys())
           if (key.startswith("dataset_") and key not in WITHHELD_UNS) or key in COPIED_UNS}
    uns["task_id"] = str(task_id)
    uns["split_seed"] = int(seed)
    if n_folds is not None:
        uns["n_folds"] = int(n_folds)
        uns["fold"] = int(fold)
    return uns


def _group_mean(matrix, groups: list[np.ndarray]) -> np.ndarray:
    """Dense float32 matrix whose row g is the mean of `matrix` rows `groups[g]` (dense or sparse input)."""
    if not groups:
        return np.zeros((0, matrix.shape[1]), dtype=np.float32)
    sizes = np.array([len(g) for g in groups])
    indicator = sp.csr_matrix(
        (np.repeat(1.0 / sizes, sizes), (np.repeat(np.arange(len(groups)), sizes), np.concatenate(groups))),
        shape=(len(groups), matrix.shape[0]))
    result = indicator @ (matrix if sp.issparse(matrix) else np.asarray(matrix, dtype=np.float64))
    result = result.toarray() if sp.issparse(result) else np.asarray(result)
    return result.astype(np.float32)


GENE_BLOCK = 1024


def variability_rank(matrix) -> np.ndarray:
    """Rank of each gene by its variance across the rows of `matrix` (0 = most variable; ties in gene order).

    The loaders' definition (src/utils/pseudobulk.py `variability_rank`, simulated_grn): population variance
    of the float64 values, stable descending sort. Computed a block of genes at a time.
    """
    columns = matrix.tocsc() if sp.issparse(matrix) else matrix
    variance = np.empty(matrix.shape[1], dtype=np.float64)
    for start in range(0, matrix.shape[1], GENE_BLOCK):
        block = columns[:, start:start + GENE_BLOCK]
        block = block.toarray() if sp.issparse(block) else block
        variance[start:start + GENE_BLOCK] = np.asarray(block, dtype=np.float64).var(axis=0)
    rank = np.empty(matrix.shape[1], dtype=np.int64)
    rank[np.argsort(-variance, kind="stable")] = np.arange(matrix.shape[1])
    return rank


def _natural_key(label: str):
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", label) if part]


def replicate_half_of_labels(labels) -> dict[str, int]:
    """Replicate half (1 or 2) of each distinct replicate label of a dataset.

    One rule for the whole dataset, conditions and controls alike: the distinct labels in natural order
    (`r2` before `r10`, `1` before `2`) alternate between half 1 and half 2, so `r1`/`r2` -> 1/2 and biological
    replicates `1,2,3` -> 1,2,1 (as balanced as an odd count allows).
    """
    ordered = sorted({str(label) for label in labels}, key=lambda label: (_natural_key(label), label))
    return {label: 1 + i % 2 for i, label in enumerate(ordered)}


def _fallback_halves(rows: np.ndarray, replicates: np.ndarray, seed: int, key: str):
    """Two halves of a condition's profiles when its replicate labels all fall in one half.

    Two profiles: one each, in replicate-label order. More: a seeded random split into two halves (the
    draw depends on the seed and the condition id only). One: the same profile twice.
    """
    rows = np.array(sorted(rows, key=lambda r: (str(replicates[r]), int(r))))
    if len(rows) == 1:
        return rows, rows
    if len(rows) == 2:
        return rows[:1], rows[1:]
    order = np.random.default_rng([int(seed), zlib.crc32(key.encode("utf-8"))]).permutation(len(rows))
    half = len(rows) // 2
    return np.sort(rows[order[:half]]), np.sort(rows[order[half:]])


def _format_level(value) -> str:
    return "nan" if not np.isfinite(value) else f"{float(value):.6g}"


def control_parts(obs: pd.DataFrame, eligible: np.ndarray):
    """Each context's control profiles (rows where `eligible`) cut into a training part and a disjoint
    reference part by the common dataset's obs['control_part'] (1 = training, 2 = reference): the loaders
    cut every control replicate profile's cells into two random parts, so both parts hold every replicate
    and their batch effects alike. Cutting by replicate instead would put one replicate's batch into the
    training control and another's into the reference, and every observed delta would then carry their
    difference with the opposite sign of every predicted delta. A context without both parts (a file made
    without obs['control_part']) uses all its controls for both: its deltas share the control's noise, as
    they did before parts existed (counted, third value). Returns ({context: training rows}, {context:
    reference rows}, n_shared)."""
    part = (obs["control_part"].to_numpy(dtype=np.int64) if CONTROL_PART in obs.columns
            else np.zeros(len(obs), dtype=np.int64))
    cell_type, condition = obs["cell_type"].astype(str).to_numpy(), obs["condition"].astype(str).to_numpy()
    by_context: dict[tuple[str, str], list[int]] = {}
    for r in np.flatnonzero(eligible):
        by_context.setdefault((cell_type[r], condition[r]), []).append(int(r))
    training, reference, n_shared = {}, {}, 0
    for context in sorted(by_context):
        rows = np.array(by_context[context], dtype=np.int64)
        if (part[rows] == 1).any() and (part[rows] == 2).any():
            training[context] = [int(r) for r in rows[part[rows] != 2]]
            reference[context] = [int(r) for r in rows[part[rows] == 2]]
        else:
            training[context] = reference[context] = [int(r) for r in rows]
            n_shared += 1
    return training, reference, n_shared


def build_split(common, is_test, stratum, task_id: str, seed: int, extra_solution_uns: dict | None = None,
                exclude=None, n_folds: int | None = None, fold: int | None = None, extra_uns: dict | None = None,
                assignment: dict | None = None):
    """Train, test and solution AnnData objects of a split of `common`.

    `is_test`: boolean per common-dataset row (whole conditions: every replicate of a perturbation x
    cell_type x condition is on the same side; controls never). `stratum`: string per row (read for test
    rows only; one value per condition). Test conditions are sorted by perturbation, cell_type, condition.
    `exclude` (optional, boolean per row): whole conditions that go neither to training nor to test, e.g.
    the single perturbations `unseen_combination` withholds so that combinations lose a seen target.
    `n_folds`, `fold`: the fold of a partition, written to every file's uns; `extra_uns` goes to test and
    solution, `extra_solution_uns` to the solution only. `assignment` (a dict, optional) is filled with
    where each common-dataset row went, for the cells files (`cell_files.write_split_cells`): `is_train`,
    `condition_id` (test condition id or None) and `half` (1, 2, or 0 for a profile in both halves).
    """
    import anndata as ad

    obs = common.obs
    n_rows = common.n_obs
    if "highly_variable_rank" not in common.var.columns:
        raise SplitInputError("var['highly_variable_rank'] is missing (expected integer)")
    is_test = np.asarray(is_test, dtype=bool)
    stratum = np.asarray(stratum, dtype=object)
    exclude = np.zeros(n_rows, dtype=bool) if exclude is None else np.asarray(exclude, dtype=bool)
    if is_test.shape != (n_rows,) or stratum.shape != (n_rows,) or exclude.shape != (n_rows,):
        raise ValueError("is_test, stratum and exclude need one value per row of the common dataset")
    if (is_test & exclude).any():
        raise ValueError("a row cannot be both held out for testing and excluded")
    targets = row_targets(obs)
    is_control = obs["is_control"].to_numpy().astype(bool)
    if ((is_test | exclude) & is_control).any():
        raise ValueError("controls must stay in training")
    if not is_test.any():
        raise SplitNotApplicable("the split holds out no condition")
    is_train = ~is_test & ~exclude
    if not (is_train & ~is_control).any():
        raise SplitNotApplicable("the split leaves no perturbation in training (only controls)")

    columns = {name: obs[name].astype(str).to_numpy() for name in
               ("perturbation", "perturbation_type", "cell_type", "condition", "replicate")}
    keys = pd.DataFrame({name: columns[name] for name in
                         ("perturbation", "cell_type", "condition", "perturbation_type")})
    group_codes = keys.groupby(list(keys.columns), sort=True, observed=True).ngroup().to_numpy()
    test_groups = np.unique(group_codes[is_test])
    train_groups = np.unique(group_codes[is_train])
    excluded_groups = np.unique(group_codes[exclude])
    if (len(np.intersect1d(test_groups, train_groups)) or len(np.intersect1d(test_groups, excluded_groups))
            or len(np.intersect1d(excluded_groups, train_groups))):
        raise ValueError("a condition has rows on two sides (training, test, excluded); split whole conditions")

    # one record per test condition, in sorted key order
    conditions = []
    for group in test_groups:
        rows = np.flatnonzero(group_codes == group)
        first = rows[0]
        strata = sorted({str(s) for s in stratum[rows]})
        if len(strata) != 1 or not strata[0] or strata[0] == "None":
            raise ValueError(f"stratum must be one non-empty value per test condition, got {strata}")
        conditions.append({
            "rows": rows,
            "perturbation": columns["perturbation"][first],
            "perturbation_type": columns["perturbation_type"][first],
            "cell_type": columns["cell_type"][first],
            "condition": columns["condition"][first],
            "targets": targets[first],
            "stratum": strata[0],
        })
    ids = [condition_id(c["perturbation"], c["cell_type"], c["condition"]) for c in conditions]
    counts = pd.Series(ids).value_counts()
    ids = [i + ID_SEPARATOR + c["perturbation_type"] if counts[i] > 1 else i for i, c in zip(ids, conditions)]

    # Control profiles per context, cut into a training part (what methods see: predicted deltas subtract its
    # mean) and a disjoint reference part that only scoring sees (observed deltas subtract its mean), so the two
    # sides of a comparison never share a control estimate's sampling noise (control_parts).
    replicates = columns["replicate"]
    half_of = replicate_half_of_labels(replicates)
    row_half = np.array([half_of[label] for label in replicates], dtype=np.int64)
    context_rows, reference_rows, n_shared = control_parts(obs, is_control & is_train)
    held_for_scoring = sorted({r for c in reference_rows for r in reference_rows[c]}
                              - {r for c in context_rows for r in context_rows[c]})
    is_train = is_train.copy()
    is_train[np.array(held_for_scoring, dtype=np.int64)] = False
    lacking = [i for i, c in zip(ids, conditions) if (c["cell_type"], c["condition"]) not in context_rows]
    if lacking:
        c = conditions[ids.index(lacking[0])]
        raise SplitNotApplicable(
            f"no control profiles for cell_type '{c['cell_type']}', condition '{c['condition']}' (needed as "
            f"the control of {len(lacking)} test conditions, e.g. '{lacking[0]}')")

    # replicate halves follow the labels' halves; a condition whose profiles all fall in one half is split
    # on its own (and then takes the context's whole control for both halves: its halves are not groups)
    halves, by_label = [], []
    for i, c in zip(ids, conditions):
        h = row_half[c["rows"]]
        if (h == 1).any() and (h == 2).any():
            halves.append((c["rows"][h == 1], c["rows"][h == 2]))
            by_label.append(True)
        else:
            halves.append(_fallback_halves(c["rows"], replicates, seed, i))
            by_label.append(False)
    if assignment is not None:
        row_condition = np.full(n_rows, None, dtype=object)
        row_half_of_split = np.zeros(n_rows, dtype=np.int64)
        for i, (first, second) in zip(ids, halves):
            row_condition[first] = row_condition[second] = i
            row_half_of_split[first] += 1
            row_half_of_split[second] += 2
        row_half_of_split[row_half_of_split == 3] = 0  # one profile used as both halves
        assignment.update(is_train=is_train.copy(), condition_id=row_condition, half=row_half_of_split)
    n_single_replicate = sum(1 for c in conditions if len(c["rows"]) == 1)
    n_fallback = sum(1 for c, b in zip(conditions, by_label) if not b and len(c["rows"]) > 1)
    X = common.X
    mean = _group_mean(X, [c["rows"] for c in conditions])
    replicate_1 = _group_mean(X, [h[0] for h in halves])
    replicate_2 = _group_mean(X, [h[1] for h in halves])
    context_of = [(c["cell_type"], c["condition"]) for c in conditions]
    context_list = sorted(set(context_of))
    context_index = {context: k for k, context in enumerate(context_list)}
    per_context = _group_mean(X, [np.array(context_rows[context]) for context in context_list])
    control = per_context[[context_index[context] for context in context_of]]
    reference = _group_mean(X, [np.array(reference_rows[context]) for context in context_list])
    layers = {"replicate_1": replicate_1, "replicate_2": replicate_2, "control": control,
              "control_reference": reference[[context_index[context] for context in context_of]]}
    # per replicate half, the control of the same half (training part: half 1, reference part: half 2 where
    # the context's controls have both), for statistics on the replicate halves (limma_de)
    every_control = {context: sorted(set(context_rows[context]) | set(reference_rows[context])) for context in context_list}
    per_context = _group_mean(X, [np.array(every_control[context]) for context in context_list])
    for half in (1, 2):
        half_rows = [np.array([r for r in every_control[context] if row_half[r] == half], dtype=np.int64)
                     for context in context_list]
        present = [k for k, rows in enumerate(half_rows) if len(rows)]
        by_context = per_context.copy()
        by_context[present] = _group_mean(X, [half_rows[k] for k in present])
        layer = by_context[[context_index[context] for context in context_of]]
        whole = per_context[[context_index[context] for context in context_of]]
        layer[~np.array(by_label, dtype=bool)] = whole[~np.array(by_label, dtype=bool)]
        layers[f"control_replicate_{half}"] = layer
    if "expected" in common.layers:
        layers["expected"] = _group_mean(common.layers["expected"], [c["rows"] for c in conditions])

    gene_position = {gene: j for j, gene in enumerate(common.var_names)}
    target_expression = [
        TARGET_SEPARATOR.join(_format_level(mean[k, gene_position[g]]) if g in gene_position else "nan"
                              for g in c["targets"])
        for k, c in enumerate(conditions)]
    n_cells = obs["n_cells"].to_numpy()
    test_obs = pd.DataFrame({
        "perturbation": [c["perturbation"] for c in conditions],
        "perturbation_type": [c["perturbation_type"] for c in conditions],
        "n_targets": np.array([len(c["targets"]) for c in conditions], dtype=np.int64),
        "cell_type": [c["cell_type"] for c in conditions],
        "condition": [c["condition"] for c in conditions],
        "stratum": [c["stratum"] for c in conditions],
        "target_expression": target_expression,
    }, index=pd.Index(ids, dtype=object))
    solution_obs = test_obs.copy()
    solution_obs["n_cells"] = np.array([int(n_cells[c["rows"]].sum()) for c in conditions], dtype=np.int64)

    # train: the common-dataset rows that stay, X and layers as given, except the simulator's noise-free
    # `expected` layer, which no real screen offers to a method. Gene statistics are recomputed on these
    # rows: the common dataset's values include held-out profiles and would leak them.
    train = common[is_train].copy()
    if "expected" in train.layers:
        del train.layers["expected"]
    rank = variability_rank(train.X)
    var = pd.DataFrame(index=pd.Index(common.var_names.astype(str), dtype=object))
    if "gene_id" in common.var.columns:
        var["gene_id"] = common.var["gene_id"].astype(str).to_numpy()
    var["highly_variable_rank"] = rank
    train.var["highly_variable_rank"] = rank
    if "mean_expression" in train.var.columns:
        train.var["mean_expression"] = _group_mean(train.X, [np.arange(train.n_obs)])[0].astype(np.float64)

    uns = output_uns(common, task_id, seed, n_folds, fold)
    train.uns = dict(uns)
    test = ad.AnnData(X=sp.csr_matrix((len(conditions), common.n_vars), dtype=np.float32),
                      obs=test_obs, var=var.copy(), uns={**uns, **(extra_uns or {})})
    solution = ad.AnnData(X=mean, obs=solution_obs, var=var.copy(), layers=layers,
                          uns={**uns, **(extra_uns or {}), "n_single_replicate_conditions": int(n_single_replicate),
                               "n_replicate_fallback_conditions": int(n_fallback),
                               "n_contexts_shared_control": int(n_shared),
                               **({"n_excluded_profiles": int(exclude.sum())} if exclude.any() else {}),
                               **(extra_solution_uns or {})})
    return train, test, solution


def stratum_counts(test) -> str:
    """`single: 3, combo_seen1: 2` in sorted stratum order, for log lines."""
    counts = test.obs["stratum"].value_counts()
    return ", ".join(f"{name}: {int(counts[name])}" for name in sorted(counts.index))
