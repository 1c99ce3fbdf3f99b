"""Shared helpers of the task components: common dataset + held-out rows -> train / test / solution.

Included as a viash resource by every task (`src/tasks/<id>`); needs only numpy, pandas, scipy and
anndata. A task decides *which* rows of the common dataset are held out and the stratum of each held-out
row; `build_split` does the rest the same way for every task:

    targets = row_targets(common.obs)                         # validated target tuples, one per row
    held = set(choose_held_out(target_genes(targets, controls), test_size, seed, what="target genes"))
    is_test = touches(targets, held)
    train, test, solution = build_split(common, is_test, stratum, task_id="...", seed=seed)

The other tasks choose their rows with `combination_split` (unseen_combination: held-out combinations,
withheld singles passed to `build_split(..., exclude=...)`) and `transfer_split` (cell_type_transfer).

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

def split_arguments(par: dict, fail) -> tuple[int, float]:
    """`--seed` and `--test_size` of every task, checked; `fail(message)` stops the component."""
    seed = 0 if par.get("seed") is None else par["seed"]
    test_size = 0.25 if par.get("test_size") is None else par["test_size"]
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        fail(f"--seed is {seed!r}, expected a non-negative integer")
    if not 0.0 <= float(test_size) <= 1.0:
        fail(f"--test_size is {test_size!r}, expected a share between 0 and 1")
    return int(seed), float(test_size)


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


def build_split(common, is_test, stratum, task_id: str, seed: int, extra_solution_uns: dict | None = None,
                exclude=None):
    """Train, test and solution AnnData objects of a split of `common`.

    `is_test`: boolean per common-dataset row (whole conditions: every replicate of a perturbation x
    cell_type x condition is on the same side; controls never). `stratum`: string per row (read for test
    rows only; one value per condition). Test conditions are sorted by perturbation, cell_type, condition.
    `exclude` (optional, boolean per row): whole conditions that go neither to training nor to test, e.g.
    the single perturbations `unseen_combination` withholds so that combinations lose a seen target.
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
    if not (~is_test & ~exclude & ~is_control).any():
        raise SplitNotApplicable("the split leaves no perturbation in training (only controls)")

    columns = {name: obs[name].astype(str).to_numpy() for name in
               ("perturbation", "perturbation_type", "cell_type", "condition", "replicate")}
    keys = pd.DataFrame({name: columns[name] for name in
                         ("perturbation", "cell_type", "condition", "perturbation_type")})
    group_codes = keys.groupby(list(keys.columns), sort=True, observed=True).ngroup().to_numpy()
    test_groups = np.unique(group_codes[is_test])
    train_groups = np.unique(group_codes[~is_test & ~exclude])
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
    train = common[~is_test & ~exclude].copy()
    train.uns = dict(uns)
    if "mean_expression" in train.var.columns:
        train.var["mean_expression"] = _group_mean(train.X, [np.arange(train.n_obs)])[0].astype(np.float64)

    test = ad.AnnData(X=sp.csr_matrix((len(conditions), common.n_vars), dtype=np.float32),
                      obs=test_obs, var=var.copy(), uns=dict(uns))
    solution = ad.AnnData(X=mean, obs=solution_obs, var=var.copy(),
                          layers={"replicate_1": replicate_1, "replicate_2": replicate_2, "control": control},
                          uns={**uns, "n_single_replicate_conditions": int(n_single_replicate),
                               **({"n_excluded_profiles": int(exclude.sum())} if exclude.any() else {}),
                               **(extra_solution_uns or {})})
    return train, test, solution


def stratum_counts(test) -> str:
    """`single: 3, combo_seen1: 2` in sorted stratum order, for log lines."""
    counts = test.obs["stratum"].value_counts()
    return ", ".join(f"{name}: {int(counts[name])}" for name in sorted(counts.index))


# --------------------------------------------------------------------------------------------------
# unseen_combination: held-out multi-gene perturbations, stratified by their singles in training
# --------------------------------------------------------------------------------------------------

# Largest number of candidate sets of held-out singles that `choose_held_out_singles` examines.
MAX_SINGLE_SETS = 2000


def combination_stratum(n_seen: int) -> str:
    """`combo_seen2` etc.: a combination with `n_seen` of its targets perturbed alone in training."""
    return f"combo_seen{int(n_seen)}"


def _n_seen(targets: tuple[str, ...], seen) -> int:
    return sum(1 for gene in targets if gene in seen)


def _share(n: int, test_size: float) -> int:
    return int(math.floor(float(test_size) * n + 0.5))


def choose_held_out_singles(candidates, combinations, single_genes, test_size: float, seed: int) -> list[str]:
    """Which single perturbations to withhold from training so that combinations lose seen targets.

    `candidates`: genes perturbed alone whose gene also occurs in a combination. A share `test_size` of
    them (at least 1 and at least 1 kept when there are 2 or more; none when there are fewer than 2, because
    withholding the only one can never add a stratum) is withheld. Among the sets of that size, the first in
    a seeded order that realises the most distinct strata `combo_seen<k>` over all combinations is taken:
    the first set tried is the plain seeded draw; every set is tried when there are at most
    `MAX_SINGLE_SETS`, otherwise that many seeded draws.
    """
    import itertools

    candidates = sorted(set(candidates))
    n = len(candidates)
    if n < 2:
        return []
    k = min(max(_share(n, test_size), 1), n - 1)
    combinations = [tuple(t) for t in combinations]
    single_genes = set(single_genes)
    # an upper bound of the distinct strata: combination c can reach 0..(its targets perturbed alone)
    reachable = set()
    for t in combinations:
        reachable.update(range(_n_seen(t, single_genes) + 1))

    def strata(held: tuple) -> int:
        seen = single_genes.difference(held)
        return len({_n_seen(t, seen) for t in combinations})

    rng = np.random.default_rng(int(seed))
    plain = tuple(sorted(candidates[i] for i in rng.permutation(n)[:k]))
    if math.comb(n, k) <= MAX_SINGLE_SETS:
        every = [tuple(candidates[i] for i in index) for index in itertools.combinations(range(n), k)]
        tries = [plain] + [every[i] for i in rng.permutation(len(every)) if every[i] != plain]
    else:
        tries = [plain] + [tuple(sorted(candidates[i] for i in rng.permutation(n)[:k]))
                           for _ in range(MAX_SINGLE_SETS - 1)]
    best, best_count = plain, -1
    for held in tries:
        count = strata(held)
        if count > best_count:
            best, best_count = held, count
            if count == len(reachable):
                break
    return list(best)


def combination_split(obs: pd.DataFrame, test_size: float, seed: int):
    """Rows of an `unseen_combination` split: (is_test, stratum, exclude, info) per common-dataset row.

    1. Singles whose gene occurs in a combination are candidates; a seeded share `test_size` of them is
       withheld (`choose_held_out_singles`): their profiles leave training and are not tested (`exclude`).
    2. Every combination touching a withheld gene leaves training and is tested: keeping it would show
       the withheld gene perturbed and contradict its stratum.
    3. The other combinations are grouped by how many of their targets are perturbed alone in training;
       a seeded share `test_size` of each group is tested (at least one when the group's stratum is not
       yet in test, at least one kept in training when the group has two or more).
    A combination is held out in every cell_type x condition where it was measured. Its stratum is
    `combo_seen<k>`, k = number of its targets whose single perturbation is in training (any context).
    """
    targets = row_targets(obs)
    is_control = obs["is_control"].to_numpy().astype(bool)
    perturbations = obs["perturbation"].astype(str).to_numpy()
    by_perturbation = {p: t for p, t, c in zip(perturbations, targets, is_control) if not c}
    combinations = sorted(p for p, t in by_perturbation.items() if len(t) >= 2)
    if not combinations:
        raise SplitNotApplicable("dataset has no multi-gene perturbations (combinations) to hold out")
    single_genes = sorted({t[0] for t in by_perturbation.values() if len(t) == 1})
    combination_genes = {g for p in combinations for g in by_perturbation[p]}
    candidates = sorted(set(single_genes) & combination_genes)
    held_singles = choose_held_out_singles(candidates, [by_perturbation[p] for p in combinations],
                                           single_genes, test_size, seed)
    seen = set(single_genes).difference(held_singles)
    held_set = set(held_singles)
    test_combinations = {p for p in combinations if not held_set.isdisjoint(by_perturbation[p])}
    present = {_n_seen(by_perturbation[p], seen) for p in test_combinations}
    groups: dict[int, list[str]] = {}
    for p in combinations:
        if p not in test_combinations:
            groups.setdefault(_n_seen(by_perturbation[p], seen), []).append(p)
    for n_seen in sorted(groups):
        members = sorted(groups[n_seen])
        m = len(members)
        low = 0 if n_seen in present else 1
        high = m - 1 if m >= 2 else m
        k = min(max(_share(m, test_size), low), high)
        order = np.random.default_rng([int(seed), 2, n_seen]).permutation(m)
        test_combinations.update(members[i] for i in order[:k])
    is_test = np.array([p in test_combinations for p in perturbations]) & ~is_control
    exclude = np.array([len(t) == 1 and t[0] in held_set for t in targets]) & ~is_control
    stratum = np.array([combination_stratum(_n_seen(t, seen)) if is_test[i] else ""
                        for i, t in enumerate(targets)], dtype=object)
    info = {"held_out_singles": sorted(held_singles), "n_combinations": len(combinations),
            "n_single_candidates": len(candidates)}
    return is_test, stratum, exclude, info


# --------------------------------------------------------------------------------------------------
# cell_type_transfer: perturbations held out in one context and observed in the others
# --------------------------------------------------------------------------------------------------

TRANSFER_STRATUM = "transfer"


def contexts_of(obs: pd.DataFrame) -> list[tuple[str, str]]:
    """Sorted distinct (cell_type, condition) pairs that hold at least one perturbation (not only controls)."""
    is_control = obs["is_control"].to_numpy().astype(bool)
    cell_types = obs["cell_type"].astype(str).to_numpy()[~is_control]
    conditions = obs["condition"].astype(str).to_numpy()[~is_control]
    return sorted(set(zip(cell_types, conditions)))


def context_label(context: tuple[str, str]) -> str:
    return ID_SEPARATOR.join(context)


def parse_context(text: str) -> tuple[str, str]:
    """`"K562|none"` -> ("K562", "none"); a bare cell type means condition `none`."""
    parts = str(text).split(ID_SEPARATOR)
    if len(parts) == 1:
        parts.append("none")
    if len(parts) != 2 or not all(parts):
        raise SplitInputError(f"--heldout_context is {text!r}, expected 'cell_type{ID_SEPARATOR}condition'")
    return parts[0], parts[1]


def transfer_split(obs: pd.DataFrame, test_size: float, seed: int, heldout_context: str | None = None):
    """Rows of a `cell_type_transfer` split: (is_test, stratum, info) per common-dataset row.

    The held-out context is `heldout_context` or, by default, context number `seed mod n_contexts` of the
    sorted (cell_type, condition) pairs. Its perturbations (perturbation x perturbation_type) that are also
    measured in another context are eligible; a seeded `floor(test_size * n)` of its n perturbations (at
    least 1, at most the eligible ones, and at most n - 1 so the context keeps an observed perturbation when
    it has two or more) is held out there and stays in training everywhere else.
    """
    row_targets(obs)  # validates perturbation strings, is_control and n_targets
    contexts = contexts_of(obs)
    if len(contexts) < 2:
        shown = ", ".join(context_label(c) for c in contexts) or "none"
        raise SplitNotApplicable(f"dataset has {len(contexts)} cell_type x condition context(s) with "
                                 f"perturbations ({shown}); transfer needs at least 2")
    if heldout_context:
        context = parse_context(heldout_context)
        if context not in contexts:
            raise SplitInputError(
                f"--heldout_context {heldout_context!r} is not a context with perturbations; the dataset has "
                f"{', '.join(repr(context_label(c)) for c in contexts)}")
    else:
        context = contexts[int(seed) % len(contexts)]
    is_control = obs["is_control"].to_numpy().astype(bool)
    keys = list(zip(obs["perturbation"].astype(str), obs["perturbation_type"].astype(str)))
    in_context = ((obs["cell_type"].astype(str).to_numpy() == context[0])
                  & (obs["condition"].astype(str).to_numpy() == context[1]) & ~is_control)
    here = sorted({keys[i] for i in np.flatnonzero(in_context)})
    elsewhere = {keys[i] for i in np.flatnonzero(~in_context & ~is_control)}
    eligible = [key for key in here if key in elsewhere]
    label = context_label(context)
    if not eligible:
        raise SplitNotApplicable(f"none of the {len(here)} perturbations of context '{label}' is measured in "
                                 f"another context; nothing can be transferred")
    n = len(here)
    k = min(max(int(math.floor(float(test_size) * n + 1e-9)), 1), len(eligible), max(n - 1, 1))
    order = np.random.default_rng([int(seed), zlib.crc32(label.encode("utf-8"))]).permutation(len(eligible))
    held = {eligible[i] for i in order[:k]}
    is_test = in_context & np.array([key in held for key in keys], dtype=bool)
    stratum = np.where(is_test, TRANSFER_STRATUM, "").astype(object)
    info = {"heldout_context": label, "contexts": [context_label(c) for c in contexts],
            "n_context_perturbations": n, "n_eligible": len(eligible)}
    return is_test, stratum, info
