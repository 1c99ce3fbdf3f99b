"""K-fold partitions of each task's held-out units: which common-dataset rows one fold tests.

Included as a viash resource by every task beside splits.py. A partition is fixed by `--seed` and
`--n_folds`; fold f (`--fold`) tests the units of part f. Across the folds of one partition every eligible
condition is tested exactly once. Units are dealt round-robin in a seeded order, so the parts differ in size
by at most one; with fewer units than folds the empty folds are not applicable (exit 99).

Each function returns, per common-dataset row, (is_test, stratum, exclude, info) for `splits.build_split`;
`exclude` marks whole conditions that go neither to training nor to test in this fold.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd

from splits import (ID_SEPARATOR, SplitInputError, SplitNotApplicable, row_targets, target_genes, touches)

# Largest number of candidate sets of withheld singles `choose_withheld_singles` examines per set size.
MAX_SINGLE_SETS = 2000
TRANSFER_STRATUM = "transfer"


def seeded_order(units, seed: int, salt: int) -> list:
    """The distinct `units` (sorted first, so input order does not matter) in a seeded random order."""
    units = sorted(set(units))
    return [units[i] for i in np.random.default_rng([int(seed), int(salt)]).permutation(len(units))]


def deal(ordered: list, n_folds: int) -> dict:
    """Unit -> fold, dealing `ordered` round-robin: parts differ in size by at most one."""
    return {unit: i % n_folds for i, unit in enumerate(ordered)}


def _empty_fold(n_units: int, n_folds: int, fold: int, what: str):
    raise SplitNotApplicable(f"fold {fold} of {n_folds} has no {what}: the dataset has {n_units} {what}, "
                             f"fewer than --n_folds {n_folds}")


def condition_keys(obs: pd.DataFrame) -> list[tuple[str, str, str, str]]:
    """(perturbation, cell_type, condition, perturbation_type) of every row: a condition's identity."""
    return list(zip(*(obs[c].astype(str).to_numpy() for c in
                      ("perturbation", "cell_type", "condition", "perturbation_type"))))


def _n_conditions(obs: pd.DataFrame, mask) -> int:
    keys = condition_keys(obs)
    return len({keys[i] for i in np.flatnonzero(mask)})


# --------------------------------------------------------------------------------------------------
# unseen_perturbation: target genes
# --------------------------------------------------------------------------------------------------

def gene_folds(genes, n_folds: int, seed: int) -> tuple[dict, dict]:
    """(gene -> fold, gene -> position in the seeded order) of a partition of target genes."""
    ordered = seeded_order(genes, seed, 1)
    return deal(ordered, n_folds), {gene: i for i, gene in enumerate(ordered)}


def perturbation_fold(obs: pd.DataFrame, n_folds: int, fold: int, seed: int):
    """Rows of fold `fold` of an `unseen_perturbation` partition.

    The target genes are partitioned; fold f holds out the genes of part f: no training perturbation
    touches one. A perturbation belongs to the fold of its first target in the seeded gene order, so a
    combination whose targets fall in two parts is tested once; in the other fold that holds out one of its
    targets it is excluded (neither training nor test). Strata: `single`, `combo_seen1` (some target is
    perturbed in this fold's training), `combo_seen0`.
    """
    targets = row_targets(obs)
    is_control = obs["is_control"].to_numpy().astype(bool)
    genes = target_genes(targets, ~is_control)
    if len(genes) < 2:
        raise SplitNotApplicable(f"dataset has {len(genes)} distinct target gene(s) ({', '.join(genes) or 'none'}); "
                                 f"holding out unseen genes needs at least 2")
    fold_of, position = gene_folds(genes, n_folds, seed)
    held = sorted(g for g in genes if fold_of[g] == fold)
    if not held:
        _empty_fold(len(genes), n_folds, fold, "target genes")
    owner = np.array([fold_of[min(t, key=position.__getitem__)] if t else -1 for t in targets])
    touching = touches(targets, held)
    is_test = touching & (owner == fold)
    if not is_test.any():
        raise SplitNotApplicable(f"fold {fold} of {n_folds} tests no perturbation: every perturbation of its genes "
                                 f"({', '.join(held)}) is a combination tested in the fold of another target")
    exclude = touching & ~is_test
    seen = set(target_genes(targets, ~is_test & ~exclude & ~is_control))
    stratum = np.array(["" if not is_test[i] else "single" if len(t) == 1
                        else "combo_seen1" if any(g in seen for g in t) else "combo_seen0"
                        for i, t in enumerate(targets)], dtype=object)
    info = {"held_out_targets": held, "n_genes": len(genes), "n_excluded": _n_conditions(obs, exclude),
            "n_partition_conditions": _n_conditions(obs, ~is_control)}
    return is_test, stratum, exclude, info


# --------------------------------------------------------------------------------------------------
# unseen_combination: combinations, with singles withheld per fold
# --------------------------------------------------------------------------------------------------

def combination_stratum(n_seen: int) -> str:
    """`combo_seen2` etc.: a combination with `n_seen` of its targets perturbed alone in training."""
    return f"combo_seen{int(n_seen)}"


def _n_seen(targets: tuple[str, ...], seen) -> int:
    return sum(1 for gene in targets if gene in seen)


def choose_withheld_singles(candidates, combinations, single_genes, seed) -> list[str]:
    """The fewest singles to withhold so that `combinations` realise the most distinct strata.

    `candidates`: genes perturbed alone that occur in `combinations`. Set sizes are tried from 0 up; per size
    every set in a seeded order when there are at most `MAX_SINGLE_SETS`, else that many seeded draws; the
    first set that reaches the most strata any set can reach (bounded by the number of combinations) wins.
    Withholding no more than the strata need keeps the most training data.
    """
    candidates = sorted(set(candidates))
    combinations = [tuple(t) for t in combinations]
    single_genes = set(single_genes)
    reachable = set()
    for t in combinations:
        reachable.update(range(_n_seen(t, single_genes) + 1))
    bound = min(len(reachable), len(combinations))

    def strata(held) -> int:
        seen = single_genes.difference(held)
        return len({_n_seen(t, seen) for t in combinations})

    rng = np.random.default_rng(seed)
    best, best_count = (), strata(())
    n = len(candidates)
    for k in range(1, n + 1):
        if best_count >= bound:
            break
        if math.comb(n, k) <= MAX_SINGLE_SETS:
            every = list(itertools.combinations(candidates, k))
            tries = [every[i] for i in rng.permutation(len(every))]
        else:
            tries = [tuple(sorted(candidates[i] for i in rng.permutation(n)[:k])) for _ in range(MAX_SINGLE_SETS)]
        for held in tries:
            count = strata(held)
            if count > best_count:
                best, best_count = held, count
                if count >= bound:
                    break
    return sorted(best)


def combination_fold(obs: pd.DataFrame, n_folds: int, fold: int, seed: int):
    """Rows of fold `fold` of an `unseen_combination` partition.

    1. The combinations are partitioned: sorted by how many of their targets are perturbed alone, then in a
       seeded order, and dealt round-robin, so each part mixes those kinds. Fold f tests part f (in every
       cell_type x condition where a combination was measured).
    2. Fold f withholds the fewest singles of its combinations' targets that realise the most `combo_seen<k>`
       strata (`choose_withheld_singles`): their profiles, and every other combination touching them, are
       excluded in this fold, so training never shows a withheld gene perturbed.
    Stratum `combo_seen<k>`: k targets of the combination have their single perturbation in training.
    """
    targets = row_targets(obs)
    is_control = obs["is_control"].to_numpy().astype(bool)
    perturbations = obs["perturbation"].astype(str).to_numpy()
    by_perturbation = {p: t for p, t, c in zip(perturbations, targets, is_control) if not c}
    combinations = sorted(p for p, t in by_perturbation.items() if len(t) >= 2)
    if not combinations:
        raise SplitNotApplicable("dataset has no multi-gene perturbations (combinations) to hold out")
    single_genes = sorted({t[0] for t in by_perturbation.values() if len(t) == 1})
    position = {p: i for i, p in enumerate(seeded_order(combinations, seed, 2))}
    ordered = sorted(combinations, key=lambda p: (_n_seen(by_perturbation[p], single_genes), position[p]))
    tested = sorted(p for p, f in deal(ordered, n_folds).items() if f == fold)
    if not tested:
        _empty_fold(len(combinations), n_folds, fold, "combinations")
    candidates = sorted(set(single_genes) & {g for p in tested for g in by_perturbation[p]})
    held = choose_withheld_singles(candidates, [by_perturbation[p] for p in tested], single_genes,
                                   [int(seed), 3, int(fold)])
    seen = set(single_genes).difference(held)
    tested_set = set(tested)
    is_test = np.isin(perturbations, tested) & ~is_control
    exclude = touches(targets, held) & ~is_test & ~is_control
    stratum = np.array([combination_stratum(_n_seen(t, seen)) if is_test[i] else ""
                        for i, t in enumerate(targets)], dtype=object)
    info = {"held_out_singles": held, "n_combinations": len(combinations), "n_tested": len(tested_set),
            "n_excluded": _n_conditions(obs, exclude),
            "n_partition_conditions": _n_conditions(obs, np.isin(perturbations, combinations) & ~is_control)}
    return is_test, stratum, exclude, info


# --------------------------------------------------------------------------------------------------
# cell_type_transfer: (context, perturbation) units of perturbations measured in two or more contexts
# --------------------------------------------------------------------------------------------------

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


def transfer_fold(obs: pd.DataFrame, n_folds: int, fold: int, seed: int, heldout_context: str | None = None):
    """Rows of fold `fold` of a `cell_type_transfer` partition.

    Units are (context, perturbation x perturbation_type) pairs of perturbations measured in two or more
    contexts (only those of `heldout_context` when given). The perturbations are taken in a seeded order and
    their units dealt round-robin, each perturbation's contexts in a rotated order (rotated by its place in
    that order), so consecutive units of one perturbation fall in different folds: with at most n_folds
    contexts a fold tests a perturbation in one context only, with more never in all of them. So every test
    perturbation stays in training in another context, and across the folds the held-out contexts rotate.
    """
    row_targets(obs)  # validates perturbation strings, is_control and n_targets
    contexts = contexts_of(obs)
    if len(contexts) < 2:
        shown = ", ".join(context_label(c) for c in contexts) or "none"
        raise SplitNotApplicable(f"dataset has {len(contexts)} cell_type x condition context(s) with "
                                 f"perturbations ({shown}); transfer needs at least 2")
    only = None
    if heldout_context:
        only = parse_context(heldout_context)
        if only not in contexts:
            raise SplitInputError(
                f"--heldout_context {heldout_context!r} is not a context with perturbations; the dataset has "
                f"{', '.join(repr(context_label(c)) for c in contexts)}")
    is_control = obs["is_control"].to_numpy().astype(bool)
    keys = list(zip(obs["perturbation"].astype(str), obs["perturbation_type"].astype(str)))
    row_context = list(zip(obs["cell_type"].astype(str), obs["condition"].astype(str)))
    where: dict[tuple[str, str], set] = {}
    for i in np.flatnonzero(~is_control):
        where.setdefault(keys[i], set()).add(row_context[i])
    eligible = [key for key in sorted(where) if len(where[key]) >= 2 and (only is None or only in where[key])]
    if not eligible:
        scope = f"of context '{context_label(only)}' " if only else ""
        raise SplitNotApplicable(f"no perturbation {scope}is measured in two or more contexts; nothing can be "
                                 f"transferred")
    units = []
    for i, key in enumerate(seeded_order(eligible, seed, 4)):
        measured = sorted(where[key]) if only is None else [only]
        shift = i % len(measured)
        units += [(context, key) for context in measured[shift:] + measured[:shift]]
    held = {unit for unit, f in deal(units, n_folds).items() if f == fold}
    if not held:
        _empty_fold(len(units), n_folds, fold, "(context, perturbation) units")
    is_test = np.array([not c and (ctx, key) in held for c, ctx, key in zip(is_control, row_context, keys)])
    stratum = np.where(is_test, TRANSFER_STRATUM, "").astype(object)
    info = {"heldout_contexts": sorted({context_label(ctx) for ctx, _ in held}),
            "contexts": [context_label(c) for c in contexts], "n_units": len(units), "n_eligible": len(eligible),
            "n_partition_conditions": len(units)}
    if only is not None:
        info["heldout_context"] = context_label(only)
    return is_test, stratum, np.zeros(len(obs), dtype=bool), info

