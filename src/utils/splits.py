"""Shared helpers of the task components: common dataset + held-out rows -> train / test / solution.

Included as a viash resource by every task (`src/tasks/<id>`); needs only numpy, pandas, scipy and
anndata. A task decides *which* rows of the common dataset are held out and the stratum of each held-out
row; `build_split` does the rest the same way for every task:

    targets = row_targets(common.obs)                         # validated target tuples, one per row
    held = set(choose_held_out(target_genes(targets, controls), test_size, seed, what="target genes"))
    is_test = touches(targets, held)
    train, test, solution = build_split(common, is_test, stratum, task_id="...", seed=seed)

Problems of the input raise `SplitInputError` (the component turns it into `fail`, exit 1); a split
that cannot be made on this dataset raises `SplitNotApplicable` (the component calls `not_applicable`,
exit 99). Everything is ordered deterministically (sorted, never by set or dict iteration order).
"""
from __future__ import annotations

import math
import zlib

import numpy as np
import pandas as pd
import scipy.sparse as sp

CONTROL = "control"
TARGET_SEPARATOR = "+"
ID_SEPARATOR = "|"
# obs columns of the common dataset that every task reads (checked on input even without a config).
REQUIRED_OBS = ("perturbation", "is_control", "perturbation_type", "n_targets", "cell_type", "condition",
                "replicate", "n_cells")
# uns entries copied from the common dataset into every task output.
COPIED_UNS = ("normalization_id", "source_sha256")
REQUIRED_UNS = ("dataset_id", "normalization_id")


class SplitInputError(ValueError):
    """The common dataset does not follow the contract in a way the split needs (exit 1)."""


class SplitNotApplicable(Exception):
    """The split cannot be made on this dataset, e.g. too few target genes (exit 99)."""


# --------------------------------------------------------------------------------------------------
# Perturbations and targets
# --------------------------------------------------------------------------------------------------

def parse_targets(perturbation: str) -> tuple[str, ...]:
    """Target symbols of a perturbation string, in string order (`control` -> no targets)."""
    if perturbation == CONTROL:
        return ()
    targets = tuple(perturbation.split(TARGET_SEPARATOR))
    if any(not target or target != target.strip() for target in targets):
        raise SplitInputError(f"obs['perturbation'] holds {perturbation!r}, expected target symbols joined "
                              f"with '{TARGET_SEPARATOR}' (no empty or space-padded symbols)")
    return targets


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


def choose_held_out(candidates, test_size: float, seed: int, what: str = "candidates") -> list:
    """A seeded share `test_size` of the distinct `candidates` (sorted), at least 1 and leaving at least 1.

    The draw depends only on the sorted candidate list and the seed, not on row or set order.
    """
    candidates = sorted(set(candidates))
    n = len(candidates)
    if n < 2:
        raise SplitNotApplicable(f"only {n} distinct {what} ({', '.join(map(str, candidates)) or 'none'}); "
                                 f"need at least 2 to hold some out and keep some in training")
    if not 0.0 <= float(test_size) <= 1.0:
        raise SplitInputError(f"--test_size is {test_size}, expected a share between 0 and 1")
    k = min(max(int(math.floor(float(test_size) * n + 0.5)), 1), n - 1)
    order = np.random.default_rng(int(seed)).permutation(n)
    return sorted(candidates[i] for i in order[:k])


# --------------------------------------------------------------------------------------------------
# Building the three files
# --------------------------------------------------------------------------------------------------

def condition_id(perturbation: str, cell_type: str, condition: str) -> str:
    """Readable id of a test condition, e.g. `G1+G2|K562|none`."""
    return ID_SEPARATOR.join((perturbation, cell_type, condition))


def output_uns(common, task_id: str, seed: int) -> dict:
    """uns of every task output: the dataset_* fields, normalization_id, source_sha256, task_id, split_seed."""
    missing = [key for key in REQUIRED_UNS if key not in common.uns]
    if missing:
        raise SplitInputError(f"uns['{missing[0]}'] is missing (expected string)")
    uns = {key: common.uns[key] for key in sorted(common.uns.keys())
           if key.startswith("dataset_") or key in COPIED_UNS}
    uns["task_id"] = str(task_id)
    uns["split_seed"] = int(seed)
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


def _replicate_halves(rows: np.ndarray, replicates: np.ndarray, seed: int, key: str):
    """Two halves of a condition's replicate profiles (row indices) for the noise ceiling.

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


def build_split(common, is_test, stratum, task_id: str, seed: int, extra_solution_uns: dict | None = None):
    """Train, test and solution AnnData objects of a split of `common`.

    `is_test`: boolean per common-dataset row (whole conditions: every replicate of a perturbation x
    cell_type x condition is on the same side; controls never). `stratum`: string per row (read for test
    rows only; one value per condition). Test conditions are sorted by perturbation, cell_type, condition.
    """
    import anndata as ad

    obs = common.obs
    n_rows = common.n_obs
    if "highly_variable_rank" not in common.var.columns:
        raise SplitInputError("var['highly_variable_rank'] is missing (expected integer)")
    is_test = np.asarray(is_test, dtype=bool)
    stratum = np.asarray(stratum, dtype=object)
    if is_test.shape != (n_rows,) or stratum.shape != (n_rows,):
        raise ValueError("is_test and stratum need one value per row of the common dataset")
    targets = row_targets(obs)
    is_control = obs["is_control"].to_numpy().astype(bool)
    if (is_test & is_control).any():
        raise ValueError("controls must stay in training")
    if not is_test.any():
        raise SplitNotApplicable("the split holds out no condition")
    if not (~is_test & ~is_control).any():
        raise SplitNotApplicable("the split leaves no perturbation in training (only controls)")

    columns = {name: obs[name].astype(str).to_numpy() for name in
               ("perturbation", "perturbation_type", "cell_type", "condition", "replicate")}
    keys = pd.DataFrame({name: columns[name] for name in
                         ("perturbation", "cell_type", "condition", "perturbation_type")})
    group_codes = keys.groupby(list(keys.columns), sort=True, observed=True).ngroup().to_numpy()
    test_groups = np.unique(group_codes[is_test])
    split_groups = np.unique(group_codes[~is_test])
    mixed = np.intersect1d(test_groups, split_groups)
    if len(mixed):
        raise ValueError("a condition has rows both in training and in test; hold out whole conditions")

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

    # control profile per context, from training controls
    train_controls = np.flatnonzero(is_control & ~is_test)
    context_rows: dict[tuple[str, str], list[int]] = {}
    for r in train_controls:
        context_rows.setdefault((columns["cell_type"][r], columns["condition"][r]), []).append(int(r))
    lacking = [i for i, c in zip(ids, conditions) if (c["cell_type"], c["condition"]) not in context_rows]
    if lacking:
        c = conditions[ids.index(lacking[0])]
        raise SplitNotApplicable(
            f"no control profiles for cell_type '{c['cell_type']}', condition '{c['condition']}' (needed as "
            f"the control of {len(lacking)} test conditions, e.g. '{lacking[0]}')")

    replicates = columns["replicate"]
    halves = [_replicate_halves(c["rows"], replicates, seed, i) for i, c in zip(ids, conditions)]
    n_single_replicate = sum(1 for c in conditions if len(c["rows"]) == 1)
    X = common.X
    mean = _group_mean(X, [c["rows"] for c in conditions])
    replicate_1 = _group_mean(X, [h[0] for h in halves])
    replicate_2 = _group_mean(X, [h[1] for h in halves])
    control = _group_mean(X, [np.array(context_rows[(c["cell_type"], c["condition"])]) for c in conditions])

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

    var = pd.DataFrame(index=pd.Index(common.var_names.astype(str), dtype=object))
    if "gene_id" in common.var.columns:
        var["gene_id"] = common.var["gene_id"].astype(str).to_numpy()
    var["highly_variable_rank"] = common.var["highly_variable_rank"].to_numpy().astype(np.int64)

    uns = output_uns(common, task_id, seed)

    # train: the common-dataset rows that stay, X and layers as given. mean_expression is recomputed on
    # these rows: the common dataset's value averages over held-out profiles too and would leak them.
    train = common[~is_test].copy()
    train.uns = dict(uns)
    if "mean_expression" in train.var.columns:
        train.var["mean_expression"] = _group_mean(train.X, [np.arange(train.n_obs)])[0].astype(np.float64)

    test = ad.AnnData(X=sp.csr_matrix((len(conditions), common.n_vars), dtype=np.float32),
                      obs=test_obs, var=var.copy(), uns=dict(uns))
    solution = ad.AnnData(X=mean, obs=solution_obs, var=var.copy(),
                          layers={"replicate_1": replicate_1, "replicate_2": replicate_2, "control": control},
                          uns={**uns, "n_single_replicate_conditions": int(n_single_replicate),
                               **(extra_solution_uns or {})})
    return train, test, solution


def stratum_counts(test) -> str:
    """`single: 3, combo_seen1: 2` in sorted stratum order, for log lines."""
    counts = test.obs["stratum"].value_counts()
    return ", ".join(f"{name}: {int(counts[name])}" for name in sorted(counts.index))
