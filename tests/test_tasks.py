"""Tests of the `unseen_combination` and `cell_type_transfer` tasks and their fold code (src/utils/partitions.py).

Property-based tests (hypothesis) generate small common datasets with random numbers of genes, singles,
combinations, contexts and replicates and call the fold functions in-process; a few runs go through
`perturbcast.runner.run_component` in tests/test_task_partitions.py. Real data: Norman 2019
(combinations), McFaline-Figueroa 2023 (3 glioma lines) and Datlinger 2017 (stimulated / unstimulated),
made into common datasets by tests/realdata.py, are tested in tests/test_task_partitions.py.
"""
from __future__ import annotations

import itertools
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from perturbcast.leakage import ALLOWED_TEST_OBS, check_partition, check_split

ROOT = Path(__file__).resolve().parents[1]
UTILS = ROOT / "src" / "utils"
API = ROOT / "src" / "api"
sys.path.insert(0, str(UTILS))
import formats  # noqa: E402
import partitions  # noqa: E402
import splits  # noqa: E402
import vocabulary  # noqa: E402


COMBINATION = "unseen_combination"
TRANSFER = "cell_type_transfer"
HYPOTHESIS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------------

UNS = {"dataset_id": "synthetic", "dataset_name": "Synthetic", "dataset_summary": "Synthetic screen.",
       "dataset_description": "Random profiles for tests.", "dataset_url": "https://example.org",
       "dataset_reference": "10.0000/none", "dataset_organism": "homo_sapiens", "normalization_id": "log_cp10k",
       "source_sha256": "0" * 64}


def make_common(perturbations: dict, contexts, n_replicates=2, genes=None, seed=0, sparse=False,
                perturbation_type="knockdown", controls_in=None, control_parts=True):
    """Common dataset: `perturbations` maps a perturbation string to the contexts (cell_type, condition)
    where it is measured; controls are measured in every context of `controls_in` (default all), each
    control replicate in two parts (obs['control_part'] 1 and 2, as the loaders write them) unless
    `control_parts` is False (a file made without them)."""
    rng = np.random.default_rng(seed)
    contexts = [tuple(c) for c in contexts]
    all_targets = sorted({g for p in perturbations for g in p.split("+")})
    genes = list(genes) if genes is not None else all_targets + [f"F{i}" for i in range(4)]
    records = []
    for context in contexts if controls_in is None else controls_in:
        records += [("control", *context, r, part) for r in range(n_replicates)
                    for part in ((1, 2) if control_parts else (0,))]
    for perturbation in sorted(perturbations):
        for context in sorted(perturbations[perturbation]):
            records += [(perturbation, *context, r, 0) for r in range(n_replicates)]
    obs = pd.DataFrame(records, columns=["perturbation", "cell_type", "condition", "replicate", "control_part"])
    obs["replicate"] = [f"r{r + 1}" for r in obs["replicate"]]
    obs["is_control"] = obs["perturbation"] == "control"
    obs["perturbation_type"] = perturbation_type
    obs["n_targets"] = np.array([0 if p == "control" else len(p.split("+")) for p in obs["perturbation"]],
                                dtype=np.int64)
    obs["n_cells"] = rng.integers(10, 200, size=len(obs)).astype(np.int64)
    obs["control_part"] = obs["control_part"].astype(np.int64)
    obs.index = [f"{r.perturbation}|{r.cell_type}|{r.condition}|{r.replicate}" + (f"|p{r.control_part}" if r.control_part
                 else "") for r in obs.itertuples()]
    X = rng.gamma(2.0, 0.5, size=(len(obs), len(genes))).astype(np.float32)
    X[rng.random(X.shape) < 0.2] = 0
    var = pd.DataFrame(index=pd.Index(genes, dtype=object))
    var["highly_variable_rank"] = np.argsort(np.argsort(-X.var(axis=0), kind="stable")).astype(np.int64)
    var["mean_expression"] = X.mean(axis=0).astype(np.float64)
    return ad.AnnData(X=sp.csr_matrix(X) if sparse else X, obs=obs, var=var, uns=dict(UNS))


@st.composite
def common_datasets(draw):
    """A small random common dataset: pool of target genes (some not measured), singles, pairs and triples,
    1-3 cell types x 1-2 conditions, perturbations measured in a random subset of contexts, 1-3 replicates."""
    seed = draw(st.integers(0, 2 ** 31 - 1))
    n_pool = draw(st.sampled_from(range(2, 10)))
    n_singles = int(round(draw(st.sampled_from([0.0, 0.3, 0.6, 1.0])) * n_pool))
    n_combos = draw(st.sampled_from([0, 1, 2, 3, 5, 8, 10]))
    n_cell_types = draw(st.integers(1, 3))
    n_conditions = draw(st.integers(1, 2))
    n_replicates = draw(st.integers(1, 3))
    coverage = draw(st.sampled_from([1.0, 0.6]))
    triples = draw(st.booleans())
    rng = np.random.default_rng(seed)
    pool = [f"T{i}" for i in range(n_pool)]
    perturbation_set = {pool[i] for i in rng.choice(n_pool, size=n_singles, replace=False)}
    for _ in range(n_combos):
        size = 3 if triples and n_pool >= 3 and rng.random() < 0.3 else 2
        perturbation_set.add("+".join(sorted(rng.choice(pool, size=size, replace=False))))
    contexts = [(f"C{c}", "none" if n_conditions == 1 else f"s{s}")
                for c in range(n_cell_types) for s in range(n_conditions)]
    perturbations = {}
    for perturbation in sorted(perturbation_set):
        where = [c for c in contexts if rng.random() < coverage] or [contexts[int(rng.integers(len(contexts)))]]
        perturbations[perturbation] = where
    measured = [g for g in pool if rng.random() < 0.8] + [f"F{i}" for i in range(3)]
    return make_common(perturbations, contexts, n_replicates=n_replicates, genes=measured, seed=seed,
                       sparse=bool(rng.random() < 0.5))


targets_of = vocabulary.targets


def dense(matrix) -> np.ndarray:
    return matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)


def file_format(name: str) -> dict:
    with open(API / f"file_{name}.yaml") as handle:
        return yaml.safe_load(handle)["info"]["format"]


# --------------------------------------------------------------------------------------------------
# properties
# --------------------------------------------------------------------------------------------------

def variance_rank(X) -> np.ndarray:
    """Independent of splits.py: rank of each gene by its population variance (0 = most variable)."""
    variance = dense(X).astype(np.float64).var(axis=0)
    rank = np.empty(len(variance), dtype=np.int64)
    rank[np.argsort(-variance, kind="stable")] = np.arange(len(variance))
    return rank


def label_halves(labels) -> dict:
    """The documented rule, restated: distinct labels in natural order alternate between half 1 and 2."""
    def key(label):
        digits = "".join(ch for ch in label if ch.isdigit())
        return ("".join(ch for ch in label if not ch.isdigit()), int(digits) if digits else -1, label)
    return {label: 1 + i % 2 for i, label in enumerate(sorted(set(labels), key=key))}


def reference_controls(obs) -> set:
    """The documented control parts, restated: in a context whose control profiles come in both parts
    (obs['control_part'] 1 and 2), those of part 2 are the reference (held out of train, subtracted from
    observed deltas); a context without both parts uses all its controls on both sides."""
    if "control_part" not in obs.columns:
        return set()
    held = set()
    controls = obs[obs["is_control"].to_numpy()]
    for _, frame in controls.groupby(["cell_type", "condition"], observed=True):
        parts = set(frame["control_part"].astype(int))
        if {1, 2} <= parts:
            held |= set(frame.index[(frame["control_part"] == 2).to_numpy()])
    return held


def check_common_properties(common, train, test, solution, task_id, seed, excluded=(), n_folds=5, fold=0):
    """What every split must satisfy; `excluded`: common obs_names in neither training nor test."""
    obs = common.obs
    key = lambda frame: list(zip(frame["perturbation"].astype(str), frame["cell_type"].astype(str),  # noqa: E731
                                 frame["condition"].astype(str)))
    test_keys = set(key(test.obs))
    reference = reference_controls(obs)
    excluded = set(excluded) - reference
    # partition of the common rows: training (unchanged), test conditions, excluded, reference controls
    for name, k in zip(obs.index, key(obs)):
        assert (name in train.obs_names) + (k in test_keys) + (name in excluded) + (name in reference) == 1, name
    rows = common.obs_names.get_indexer(train.obs_names)
    assert (rows >= 0).all()
    np.testing.assert_array_equal(dense(train.X), dense(common.X[rows]))
    assert set(obs.index[obs["is_control"].to_numpy()]) - reference <= set(train.obs_names)
    assert "control" not in set(test.obs["perturbation"])
    # gene statistics over training rows only
    np.testing.assert_allclose(train.var["mean_expression"].to_numpy(), dense(train.X).astype(np.float64).mean(0),
                               rtol=1e-5, atol=1e-6)
    rank = variance_rank(train.X)
    for adata in (train, test, solution):
        np.testing.assert_array_equal(adata.var["highly_variable_rank"].to_numpy(), rank)
    # the test file reveals only DESIGN §3's columns; no expression
    assert sp.issparse(test.X) and test.X.nnz == 0 and test.X.shape == (test.n_obs, common.n_vars)
    assert len(test.layers) == 0 and set(test.obs.columns) == set(ALLOWED_TEST_OBS)
    assert list(test.obs_names) == list(solution.obs_names)
    for adata in (train, test, solution):
        assert list(adata.var_names) == list(common.var_names)
        assert adata.uns["task_id"] == task_id and adata.uns["split_seed"] == seed
        assert adata.uns["n_folds"] == n_folds and adata.uns["fold"] == fold
        assert isinstance(adata.uns["n_folds"], (int, np.integer))
        assert adata.uns["dataset_id"] == common.uns["dataset_id"]
        assert adata.uns["normalization_id"] == common.uns["normalization_id"]
    # solution: mean over replicates, label halves, training control of the same context and its halves
    X = dense(common.X).astype(np.float64)
    genes = list(common.var_names)
    half_of = label_halves(obs["replicate"].astype(str))
    row_half = np.array([half_of[r] for r in obs["replicate"].astype(str)])
    fallback = 0
    for k, row in enumerate(solution.obs.itertuples()):
        mask = ((obs["perturbation"] == row.perturbation) & (obs["cell_type"] == row.cell_type)
                & (obs["condition"] == row.condition)).to_numpy()
        np.testing.assert_allclose(solution.X[k], X[mask].mean(0), rtol=1e-5, atol=1e-6)
        controls = (obs["is_control"] & (obs["cell_type"] == row.cell_type)
                    & (obs["condition"] == row.condition)).to_numpy()
        held = controls & obs.index.isin(reference)
        training = controls & ~held
        np.testing.assert_allclose(solution.layers["control"][k], X[training].mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(solution.layers["control_reference"][k], X[held if held.any() else training].mean(0),
                                   rtol=1e-5, atol=1e-6)
        by_label = len(set(row_half[mask])) == 2
        for half in (1, 2):
            if by_label:
                np.testing.assert_allclose(solution.layers[f"replicate_{half}"][k], X[mask & (row_half == half)].mean(0),
                                           rtol=1e-5, atol=1e-6)
            in_half = controls & (row_half == half)
            expected = X[in_half].mean(0) if by_label and in_half.any() else X[controls].mean(0)
            np.testing.assert_allclose(solution.layers[f"control_replicate_{half}"][k], expected, rtol=1e-5, atol=1e-6)
        if not by_label and mask.sum() == 2:
            halves = {tuple(solution.layers[layer][k]) for layer in ("replicate_1", "replicate_2")}
            assert halves == {tuple(X[i].astype(np.float32)) for i in np.flatnonzero(mask)}
        fallback += int(not by_label and mask.sum() > 1)
        assert row.n_cells == int(obs["n_cells"].to_numpy()[mask].sum())
        for gene, level in zip(targets_of(row.perturbation), row.target_expression.split("+")):
            if gene in genes:
                assert float(level) == pytest.approx(float(solution.X[k, genes.index(gene)]), rel=1e-5, abs=1e-6)
            else:
                assert level == "nan"
    assert solution.uns["n_replicate_fallback_conditions"] == fallback
    for name, adata in (("train", train), ("test", test), ("solution", solution)):
        assert formats.check_anndata(adata, file_format(name)) == [], name
    assert check_split(train, test, solution) == []


def n_seen(perturbation, singles_in_train) -> int:
    return sum(1 for g in targets_of(perturbation) if g in singles_in_train)


def strata_by_size(combinations, single_genes, candidates) -> dict:
    """Brute force: set size -> the most distinct `combo_seen` strata that withholding that many reaches."""
    best = {}
    for k in range(len(candidates) + 1):
        for held in itertools.combinations(candidates, k):
            seen = set(single_genes) - set(held)
            best[k] = max(best.get(k, 0), len({n_seen(p, seen) for p in combinations}))
    return best


def check_combination_properties(common, train, test, solution, seed, n_folds=5, fold=0):
    """The unseen_combination promises for one fold; returns the strata counts."""
    obs = common.obs
    perturbations = set(obs["perturbation"].astype(str)) - {"control"}
    combinations = sorted(p for p in perturbations if len(targets_of(p)) >= 2)
    single_genes = sorted(p for p in perturbations if len(targets_of(p)) == 1)
    tested = set(test.obs["perturbation"])
    assert tested and all(len(targets_of(p)) >= 2 for p in tested)
    held = list(solution.uns["held_out_singles"])
    candidates = sorted(set(single_genes) & {g for p in tested for g in targets_of(p)})
    assert set(held) <= set(candidates)
    # the fewest withheld singles that reach the most strata among the fold's combinations
    if len(candidates) <= 10:
        best = strata_by_size(sorted(tested), single_genes, candidates)
        assert test.obs["stratum"].nunique() == max(best.values())
        assert len(held) == min(k for k, n in best.items() if n == max(best.values()))
    excluded_perturbations = set(held) | {p for p in combinations if p not in tested and set(held) & set(targets_of(p))}
    excluded = obs.index[obs["perturbation"].isin(excluded_perturbations).to_numpy()]
    check_common_properties(common, train, test, solution, COMBINATION, seed, excluded=excluded,
                            n_folds=n_folds, fold=fold)
    train_perturbations = set(train.obs["perturbation"].astype(str)) - {"control"}
    train_singles = {p for p in train_perturbations if len(targets_of(p)) == 1}
    assert train_singles == set(single_genes) - set(held)
    assert all(set(held).isdisjoint(targets_of(p)) for p in train_perturbations)
    assert tested.isdisjoint(train_perturbations)
    # whole perturbations held out: in every context where measured
    for p in tested:
        assert not (train.obs["perturbation"] == p).any()
    for row in test.obs.itertuples():
        assert row.stratum == f"combo_seen{n_seen(row.perturbation, train_singles)}"
    assert solution.uns["n_partition_conditions"] == len(set(zip(
        *(obs[c][obs["perturbation"].isin(combinations)] for c in ("perturbation", "cell_type", "condition")))))
    return test.obs["stratum"].value_counts().to_dict()


def check_transfer_properties(common, train, test, solution, seed, n_folds=5, fold=0, heldout_context=None):
    obs = common.obs
    check_common_properties(common, train, test, solution, TRANSFER, seed, n_folds=n_folds, fold=fold)
    contexts = set(zip(test.obs["cell_type"], test.obs["condition"]))
    assert list(solution.uns["heldout_contexts"]) == sorted("|".join(c) for c in contexts)
    if heldout_context:
        assert contexts == {tuple(heldout_context.split("|"))}
        assert solution.uns["heldout_context"] == test.uns["heldout_context"] == heldout_context
    assert set(test.obs["stratum"]) == {"transfer"}
    # every held-out perturbation stays observed in another context of training
    train_obs = train.obs
    for row in test.obs.itertuples():
        elsewhere = train_obs[(train_obs["perturbation"] == row.perturbation)
                              & ((train_obs["cell_type"] != row.cell_type) | (train_obs["condition"] != row.condition))]
        assert len(elsewhere) > 0, row.perturbation
    return test.n_obs


# --------------------------------------------------------------------------------------------------
# property-based, in process
# --------------------------------------------------------------------------------------------------

def run_combination(common, seed, n_folds=5, fold=0):
    is_test, stratum, exclude, info = partitions.combination_fold(common.obs, n_folds, fold, seed)
    is_control = common.obs["is_control"].to_numpy()
    try:
        return splits.build_split(common, is_test, stratum, COMBINATION, seed, exclude=exclude, n_folds=n_folds,
                                  fold=fold, extra_uns={"n_partition_conditions": info["n_partition_conditions"]},
                                  extra_solution_uns={"held_out_singles": info["held_out_singles"]})
    except splits.SplitNotApplicable as error:
        # only when nothing but controls would be left in training
        assert "no perturbation in training" in str(error)
        assert not (~is_test & ~exclude & ~is_control).any()
        return None


def run_transfer(common, seed, n_folds=5, fold=0, heldout_context=None):
    is_test, stratum, exclude, info = partitions.transfer_fold(common.obs, n_folds, fold, seed, heldout_context)
    partition = {"n_partition_conditions": info["n_partition_conditions"]}
    if heldout_context:
        partition["heldout_context"] = info["heldout_context"]
    return splits.build_split(common, is_test, stratum, TRANSFER, seed, n_folds=n_folds, fold=fold,
                              extra_uns=partition, extra_solution_uns={"heldout_contexts": info["heldout_contexts"]})


@HYPOTHESIS
@given(common=common_datasets(), n_folds=st.sampled_from([2, 3, 5]), data=st.data(), seed=st.integers(0, 1000))
def test_combination_fold_properties(common, n_folds, data, seed):
    n_combinations = common.obs.loc[common.obs["n_targets"] >= 2, "perturbation"].nunique()
    fold = data.draw(st.integers(0, n_folds - 1))
    if not n_combinations:
        with pytest.raises(splits.SplitNotApplicable, match="no multi-gene perturbations"):
            partitions.combination_fold(common.obs, n_folds, fold, seed)
        return
    if fold >= n_combinations:
        with pytest.raises(splits.SplitNotApplicable, match=f"fold {fold} of {n_folds} has no combinations"):
            partitions.combination_fold(common.obs, n_folds, fold, seed)
        return
    result = run_combination(common, seed, n_folds, fold)
    if result is None:
        event("not applicable: nothing left in training")
        return
    strata = check_combination_properties(common, *result, seed, n_folds, fold)
    event(f"{len(strata)} strata")
    again = run_combination(common, seed, n_folds, fold)
    for first, second in zip(result, again):
        assert list(first.obs_names) == list(second.obs_names)
        pd.testing.assert_frame_equal(first.obs, second.obs)


@HYPOTHESIS
@given(common=common_datasets(), n_folds=st.sampled_from([2, 3, 5]), data=st.data(), seed=st.integers(0, 1000))
def test_transfer_fold_properties(common, n_folds, data, seed):
    contexts = partitions.contexts_of(common.obs)
    fold = data.draw(st.integers(0, n_folds - 1))
    if len(contexts) < 2:
        with pytest.raises(splits.SplitNotApplicable, match="transfer needs at least 2"):
            partitions.transfer_fold(common.obs, n_folds, fold, seed)
        return
    obs = common.obs[~common.obs["is_control"].to_numpy()]
    n_contexts = obs.groupby("perturbation", observed=True).apply(
        lambda f: len(set(zip(f["cell_type"], f["condition"]))), include_groups=False)
    n_units = int(n_contexts[n_contexts >= 2].sum())
    if n_units == 0:
        with pytest.raises(splits.SplitNotApplicable, match="two or more contexts"):
            partitions.transfer_fold(common.obs, n_folds, fold, seed)
        return
    if fold >= n_units:
        with pytest.raises(splits.SplitNotApplicable, match="has no .context, perturbation. units"):
            partitions.transfer_fold(common.obs, n_folds, fold, seed)
        return
    train, test, solution = run_transfer(common, seed, n_folds, fold)
    check_transfer_properties(common, train, test, solution, seed, n_folds, fold)
    assert solution.uns["n_partition_conditions"] == n_units
    # balanced parts: n_units dealt round-robin
    assert test.n_obs in (n_units // n_folds, -(-n_units // n_folds))
    event(f"{len(contexts)} contexts")


# --------------------------------------------------------------------------------------------------
# hand-made cases, in process
# --------------------------------------------------------------------------------------------------

K562 = [("K562", "none")]


def test_combination_strata_on_a_hand_made_case():
    # singles A, B, C, D; pairs with 0, 1 or 2 singles; X and Y are never perturbed alone
    perturbations = {p: K562 for p in ["A", "B", "C", "D", "A+B", "C+D", "A+C", "B+X", "D+Y", "X+Y", "A+D"]}
    common = make_common(perturbations, K562)
    for fold in range(2):
        train, test, solution = run_combination(common, 0, n_folds=2, fold=fold)
        strata = check_combination_properties(common, train, test, solution, 0, n_folds=2, fold=fold)
        assert set(strata) == {"combo_seen0", "combo_seen1", "combo_seen2"}, strata
        held = set(solution.uns["held_out_singles"])
        # every other combination touching a withheld gene is excluded, and counted
        touched = {p for p in perturbations if "+" in p and held & set(p.split("+"))} - set(test.obs["perturbation"])
        assert solution.uns.get("n_excluded_profiles", 0) == 2 * (len(held) + len(touched))


def test_withheld_singles_keep_a_seen2_combination_when_possible():
    # A+B is the only pair with both singles; withholding A or B would lose combo_seen2
    perturbations = {p: K562 for p in ["A", "B", "C", "D", "A+B", "C+X", "D+X"]}
    common = make_common(perturbations, K562)
    for seed in range(20):
        fold = next(f for f in range(3) if "A+B" in set(run_combination(common, seed, 3, f)[1].obs["perturbation"]))
        train, test, solution = run_combination(common, seed, 3, fold)
        assert dict(zip(test.obs["perturbation"], test.obs["stratum"]))["A+B"] == "combo_seen2"
        assert not {"A", "B"} & set(solution.uns["held_out_singles"])


def test_no_combinations_or_too_few_is_not_applicable():
    common = make_common({"A": K562, "B": K562}, K562)
    with pytest.raises(splits.SplitNotApplicable, match="no multi-gene perturbations"):
        partitions.combination_fold(common.obs, 5, 0, 0)
    common = make_common({"A": K562, "B": K562, "A+B": K562, "B+C": K562}, K562)
    with pytest.raises(splits.SplitNotApplicable, match="fold 2 of 3 has no combinations: the dataset has 2"):
        partitions.combination_fold(common.obs, 3, 2, 0)


def test_heldout_context_argument_and_single_context():
    contexts = [("A172", "none"), ("T98G", "none"), ("U87MG", "none")]
    common = make_common({g: contexts for g in "ABCDEFGH"}, contexts)
    tested = []
    for fold in range(4):
        is_test, stratum, _, info = partitions.transfer_fold(common.obs, 4, fold, 0, heldout_context="T98G|none")
        assert info["heldout_context"] == "T98G|none" and info["n_units"] == 8
        assert set(common.obs["cell_type"][is_test]) == {"T98G"} and is_test.sum() == 2 * 2  # 8 / 4 x 2 reps
        tested += sorted(set(common.obs["perturbation"][is_test]))
    assert sorted(tested) == list("ABCDEFGH")
    tests = [run_transfer(common, 0, 4, fold, heldout_context="T98G|none")[1] for fold in range(4)]
    assert check_partition(tests, common_path=common) == []
    assert "eligible conditions are tested in no fold" in check_partition(tests[:3] + [tests[3][1:].copy()],
                                                                           common_path=common)[-1]
    assert partitions.transfer_fold(common.obs, 5, 0, 0, heldout_context="U87MG")[3]["heldout_context"] == "U87MG|none"
    with pytest.raises(splits.SplitInputError, match="not a context"):
        partitions.transfer_fold(common.obs, 5, 0, 0, heldout_context="K562|none")
    single = make_common({"A": K562, "B": K562}, K562)
    with pytest.raises(splits.SplitNotApplicable, match="transfer needs at least 2"):
        partitions.transfer_fold(single.obs, 5, 0, 0)


def test_transfer_folds_rotate_contexts_and_keep_each_perturbation_elsewhere():
    contexts = [("Jurkat", "stimulated"), ("Jurkat", "unstimulated"), ("Jurkat", "restim")]
    # A, B in all three contexts; C, D in two; E only in one (not eligible)
    perturbations = {"A": contexts, "B": contexts, "C": contexts[:2], "D": contexts[1:], "E": contexts[:1]}
    common = make_common(perturbations, contexts)
    for n_folds in (2, 3, 4):
        units = []
        for fold in range(n_folds):
            train, test, solution = run_transfer(common, 7, n_folds, fold)
            check_transfer_properties(common, train, test, solution, 7, n_folds, fold)
            units += list(zip(test.obs["perturbation"], test.obs["cell_type"], test.obs["condition"]))
        assert len(units) == len(set(units)) == 10 and "E" not in {u[0] for u in units}
    # with 2 folds, A's three contexts are split 2 + 1: never all in one fold
    contexts_seen = set()
    for fold in range(2):
        test = run_transfer(common, 7, 2, fold)[1]
        contexts_seen |= set(test.obs["condition"])
        assert (test.obs["perturbation"] == "A").sum() in (1, 2)
    assert contexts_seen == {"stimulated", "unstimulated", "restim"}
