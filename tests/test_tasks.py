"""Tests of the `unseen_combination` and `cell_type_transfer` tasks and their split code in src/utils/splits.py.

Property-based tests (hypothesis) generate small common datasets with random numbers of genes, singles,
combinations, contexts and replicates and call the split functions in-process; a few runs go through
`perturbcast.runner.run_component` as `perturbcast run` / `viash run` would. Real data: Norman 2019
(combinations), McFaline-Figueroa 2023 (3 glioma lines) and Datlinger 2017 (stimulated / unstimulated),
made into common datasets by tests/realdata.py; skipped when ../shared/data is absent.
"""
from __future__ import annotations

import itertools
import math
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

from perturbcast.leakage import ALLOWED_TEST_OBS, check_split
from perturbcast.runner import run_component

ROOT = Path(__file__).resolve().parents[1]
UTILS = ROOT / "src" / "utils"
API = ROOT / "src" / "api"
sys.path.insert(0, str(UTILS))
import formats  # noqa: E402
import splits  # noqa: E402

import realdata  # noqa: E402

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
                perturbation_type="knockdown", controls_in=None):
    """Common dataset: `perturbations` maps a perturbation string to the contexts (cell_type, condition)
    where it is measured; controls are measured in every context of `controls_in` (default all)."""
    rng = np.random.default_rng(seed)
    contexts = [tuple(c) for c in contexts]
    all_targets = sorted({g for p in perturbations for g in p.split("+")})
    genes = list(genes) if genes is not None else all_targets + [f"F{i}" for i in range(4)]
    records = []
    for context in contexts if controls_in is None else controls_in:
        records += [("control", *context, r) for r in range(n_replicates)]
    for perturbation in sorted(perturbations):
        for context in sorted(perturbations[perturbation]):
            records += [(perturbation, *context, r) for r in range(n_replicates)]
    obs = pd.DataFrame(records, columns=["perturbation", "cell_type", "condition", "replicate"])
    obs["replicate"] = [f"r{r + 1}" for r in obs["replicate"]]
    obs["is_control"] = obs["perturbation"] == "control"
    obs["perturbation_type"] = perturbation_type
    obs["n_targets"] = np.array([0 if p == "control" else len(p.split("+")) for p in obs["perturbation"]],
                                dtype=np.int64)
    obs["n_cells"] = rng.integers(10, 200, size=len(obs)).astype(np.int64)
    obs.index = [f"{r.perturbation}|{r.cell_type}|{r.condition}|{r.replicate}" for r in obs.itertuples()]
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


def targets_of(perturbation: str) -> tuple:
    return () if perturbation == "control" else tuple(perturbation.split("+"))


def dense(matrix) -> np.ndarray:
    return matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)


def file_format(name: str) -> dict:
    with open(API / f"file_{name}.yaml") as handle:
        return yaml.safe_load(handle)["info"]["format"]


# --------------------------------------------------------------------------------------------------
# properties
# --------------------------------------------------------------------------------------------------

def check_common_properties(common, train, test, solution, task_id, seed, excluded=()):
    """What every split must satisfy; `excluded`: common obs_names in neither training nor test."""
    obs = common.obs
    key = lambda frame: list(zip(frame["perturbation"].astype(str), frame["cell_type"].astype(str),  # noqa: E731
                                 frame["condition"].astype(str)))
    test_keys = set(key(test.obs))
    excluded = set(excluded)
    # partition of the common rows: training (unchanged), test conditions, excluded
    for name, k in zip(obs.index, key(obs)):
        assert (name in train.obs_names) + (k in test_keys) + (name in excluded) == 1, name
    rows = common.obs_names.get_indexer(train.obs_names)
    assert (rows >= 0).all()
    np.testing.assert_array_equal(dense(train.X), dense(common.X[rows]))
    assert set(obs.index[obs["is_control"].to_numpy()]) <= set(train.obs_names)
    assert "control" not in set(test.obs["perturbation"])
    # mean_expression over training rows only
    np.testing.assert_allclose(train.var["mean_expression"].to_numpy(), dense(train.X).astype(np.float64).mean(0),
                               rtol=1e-5, atol=1e-6)
    # the test file reveals only DESIGN §3's columns; no expression
    assert sp.issparse(test.X) and test.X.nnz == 0 and test.X.shape == (test.n_obs, common.n_vars)
    assert len(test.layers) == 0 and set(test.obs.columns) == set(ALLOWED_TEST_OBS)
    assert list(test.obs_names) == list(solution.obs_names)
    for adata in (train, test, solution):
        assert list(adata.var_names) == list(common.var_names)
        assert adata.uns["task_id"] == task_id and adata.uns["split_seed"] == seed
        assert adata.uns["dataset_id"] == common.uns["dataset_id"]
        assert adata.uns["normalization_id"] == common.uns["normalization_id"]
    # solution: mean over replicates, two halves, training control of the same context
    X = dense(common.X).astype(np.float64)
    genes = list(common.var_names)
    for k, row in enumerate(solution.obs.itertuples()):
        mask = ((obs["perturbation"] == row.perturbation) & (obs["cell_type"] == row.cell_type)
                & (obs["condition"] == row.condition)).to_numpy()
        np.testing.assert_allclose(solution.X[k], X[mask].mean(0), rtol=1e-5, atol=1e-6)
        if mask.sum() == 2:
            halves = {tuple(solution.layers[layer][k]) for layer in ("replicate_1", "replicate_2")}
            assert halves == {tuple(X[i].astype(np.float32)) for i in np.flatnonzero(mask)}
        controls = (obs["is_control"] & (obs["cell_type"] == row.cell_type)
                    & (obs["condition"] == row.condition)).to_numpy()
        np.testing.assert_allclose(solution.layers["control"][k], X[controls].mean(0), rtol=1e-5, atol=1e-6)
        assert row.n_cells == int(obs["n_cells"].to_numpy()[mask].sum())
        for gene, level in zip(targets_of(row.perturbation), row.target_expression.split("+")):
            if gene in genes:
                assert float(level) == pytest.approx(float(solution.X[k, genes.index(gene)]), rel=1e-5, abs=1e-6)
            else:
                assert level == "nan"
    for name, adata in (("train", train), ("test", test), ("solution", solution)):
        assert formats.check_anndata(adata, file_format(name)) == [], name
    assert check_split(train, test, solution) == []


def n_seen(perturbation, singles_in_train) -> int:
    return sum(1 for g in targets_of(perturbation) if g in singles_in_train)


def best_strata(combinations, single_genes, candidates, k) -> int:
    """Brute force: the most distinct `combo_seen` strata any k withheld candidates can realise."""
    best = 0
    for held in itertools.combinations(candidates, k):
        seen = set(single_genes) - set(held)
        best = max(best, len({n_seen(p, seen) for p in combinations}))
    return best


def check_combination_properties(common, train, test, solution, test_size, seed):
    """The unseen_combination promises; returns the strata counts."""
    obs = common.obs
    perturbations = set(obs["perturbation"].astype(str)) - {"control"}
    combinations = sorted(p for p in perturbations if len(targets_of(p)) >= 2)
    single_genes = sorted(p for p in perturbations if len(targets_of(p)) == 1)
    candidates = sorted(set(single_genes) & {g for p in combinations for g in targets_of(p)})
    held = list(solution.uns["held_out_singles"])
    # the share of withheld singles
    n = len(candidates)
    expected = 0 if n < 2 else min(max(int(math.floor(test_size * n + 0.5)), 1), n - 1)
    assert len(held) == expected and set(held) <= set(candidates)
    excluded = obs.index[obs["perturbation"].isin(held).to_numpy()]
    check_common_properties(common, train, test, solution, COMBINATION, seed, excluded=excluded)
    train_perturbations = set(train.obs["perturbation"].astype(str)) - {"control"}
    train_singles = {p for p in train_perturbations if len(targets_of(p)) == 1}
    assert train_singles == set(single_genes) - set(held)
    # no training perturbation touches a withheld single's gene
    assert all(set(held).isdisjoint(targets_of(p)) for p in train_perturbations)
    # every combination is in training or in test, never in both (in any context), never excluded
    test_combinations = set(test.obs["perturbation"])
    assert all(len(targets_of(p)) >= 2 for p in test_combinations)
    assert test_combinations.isdisjoint(train_perturbations)
    assert test_combinations | (train_perturbations - train_singles) == set(combinations)
    # whole perturbations held out: in every context where measured
    for p in test_combinations:
        assert (obs["perturbation"] == p).sum() == sum(1 for name in obs.index[obs["perturbation"] == p]
                                                       if name not in train.obs_names)
    # strata: combo_seen<k>, k = targets whose single perturbation is in training
    for row in test.obs.itertuples():
        assert row.stratum == f"combo_seen{n_seen(row.perturbation, train_singles)}"
    # each stratum present whenever the data allows
    strata = set(test.obs["stratum"])
    assert len(strata) == best_strata(combinations, single_genes, candidates, len(held))
    # combinations of each kind stay in training when there are two or more not touching a withheld gene
    groups = {}
    for p in combinations:
        if set(held).isdisjoint(targets_of(p)):
            groups.setdefault(n_seen(p, train_singles), []).append(p)
    for members in groups.values():
        if len(members) >= 2:
            assert not set(members) <= test_combinations
    return test.obs["stratum"].value_counts().to_dict()


def check_transfer_properties(common, train, test, solution, test_size, seed, heldout_context=None):
    obs = common.obs
    check_common_properties(common, train, test, solution, TRANSFER, seed)
    is_control = obs["is_control"].to_numpy()
    contexts = sorted(set(zip(obs["cell_type"][~is_control], obs["condition"][~is_control])))
    context = tuple(heldout_context.split("|")) if heldout_context else contexts[seed % len(contexts)]
    assert solution.uns["heldout_context"] == "|".join(context)
    assert set(zip(test.obs["cell_type"], test.obs["condition"])) == {context}
    assert set(test.obs["stratum"]) == {"transfer"}
    in_context = ((obs["cell_type"] == context[0]) & (obs["condition"] == context[1])).to_numpy() & ~is_control
    here = set(obs["perturbation"][in_context])
    n = len(here)
    assert 1 <= test.n_obs <= max(1, math.floor(test_size * n + 1e-9))
    assert test.n_obs <= max(n - 1, 1)
    # every held-out perturbation stays observed in another context of training
    train_obs = train.obs
    for p in test.obs["perturbation"]:
        elsewhere = train_obs[(train_obs["perturbation"] == p)
                              & ~((train_obs["cell_type"] == context[0]) & (train_obs["condition"] == context[1]))]
        assert len(elsewhere) > 0, p
    return n


# --------------------------------------------------------------------------------------------------
# property-based, in process
# --------------------------------------------------------------------------------------------------

def run_combination(common, test_size, seed):
    is_test, stratum, exclude, info = splits.combination_split(common.obs, test_size, seed)
    is_control = common.obs["is_control"].to_numpy()
    try:
        result = splits.build_split(common, is_test, stratum, COMBINATION, seed, exclude=exclude,
                                    extra_solution_uns={"held_out_singles": info["held_out_singles"]})
    except splits.SplitNotApplicable as error:
        # only when nothing but controls would be left in training
        assert "no perturbation in training" in str(error)
        assert not (~is_test & ~exclude & ~is_control).any()
        return None
    return result


@HYPOTHESIS
@given(common=common_datasets(), test_size=st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.9, 1.0]),
       seed=st.integers(0, 1000))
def test_combination_split_properties(common, test_size, seed):
    has_combinations = (common.obs["n_targets"] >= 2).any()
    if not has_combinations:
        with pytest.raises(splits.SplitNotApplicable, match="no multi-gene perturbations"):
            splits.combination_split(common.obs, test_size, seed)
        return
    result = run_combination(common, test_size, seed)
    if result is None:
        event("not applicable: nothing left in training")
        return
    strata = check_combination_properties(common, *result, test_size, seed)
    event(f"{len(strata)} strata")
    # the same seed gives the same split
    again = run_combination(common, test_size, seed)
    for first, second in zip(result, again):
        assert list(first.obs_names) == list(second.obs_names)
        pd.testing.assert_frame_equal(first.obs, second.obs)


@HYPOTHESIS
@given(common=common_datasets(), test_size=st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0]), seed=st.integers(0, 1000))
def test_transfer_split_properties(common, test_size, seed):
    contexts = splits.contexts_of(common.obs)
    if len(contexts) < 2:
        with pytest.raises(splits.SplitNotApplicable, match="transfer needs at least 2"):
            splits.transfer_split(common.obs, test_size, seed)
        return
    context = contexts[seed % len(contexts)]
    obs = common.obs
    is_control = obs["is_control"].to_numpy()
    in_context = ((obs["cell_type"] == context[0]) & (obs["condition"] == context[1])).to_numpy()
    here = set(obs["perturbation"][in_context & ~is_control])
    elsewhere = set(obs["perturbation"][~in_context & ~is_control])
    if not here & elsewhere:
        with pytest.raises(splits.SplitNotApplicable, match="another context"):
            splits.transfer_split(common.obs, test_size, seed)
        return
    is_test, stratum, info = splits.transfer_split(common.obs, test_size, seed)
    train, test, solution = splits.build_split(common, is_test, stratum, TRANSFER, seed,
                                               extra_solution_uns={"heldout_context": info["heldout_context"]})
    check_transfer_properties(common, train, test, solution, test_size, seed)
    event(f"{len(contexts)} contexts")


@settings(max_examples=20, deadline=None)
@given(common=common_datasets())
def test_every_context_is_held_out_across_seeds(common):
    contexts = splits.contexts_of(common.obs)
    if len(contexts) < 2:
        return
    chosen = set()
    for seed in range(len(contexts)):
        try:
            chosen.add(splits.transfer_split(common.obs, 0.25, seed)[2]["heldout_context"])
        except splits.SplitNotApplicable as error:  # no shared perturbation in that context
            assert "another context" in str(error)
            chosen.add("|".join(contexts[seed]))
    assert chosen == {"|".join(c) for c in contexts}


# --------------------------------------------------------------------------------------------------
# hand-made cases, in process
# --------------------------------------------------------------------------------------------------

K562 = [("K562", "none")]


def test_combination_strata_on_a_hand_made_case():
    # singles A, B, C, D; pairs with 0, 1 or 2 singles; X and Y are never perturbed alone
    perturbations = {p: K562 for p in ["A", "B", "C", "D", "A+B", "C+D", "A+C", "B+X", "D+Y", "X+Y", "A+D"]}
    common = make_common(perturbations, K562)
    seed = next(s for s in range(1000)
                if splits.combination_split(common.obs, 0.25, s)[3]["held_out_singles"] == ["A"])
    is_test, stratum, exclude, info = splits.combination_split(common.obs, 0.25, seed)
    train, test, solution = splits.build_split(common, is_test, stratum, COMBINATION, seed, exclude=exclude,
                                               extra_solution_uns={"held_out_singles": info["held_out_singles"]})
    check_combination_properties(common, train, test, solution, 0.25, seed)
    strata = dict(zip(test.obs["perturbation"], test.obs["stratum"]))
    # every pair touching A is tested: A+B, A+C, A+D have one single (B, C or D) in training
    assert {strata[p] for p in ("A+B", "A+C", "A+D")} == {"combo_seen1"}
    # C+D is the only pair with both singles in training: tested, so combo_seen2 is present
    assert strata["C+D"] == "combo_seen2"
    assert set(strata.values()) == {"combo_seen0", "combo_seen1", "combo_seen2"}
    assert "A" not in set(train.obs["perturbation"]) and "A" not in strata
    assert solution.uns["n_excluded_profiles"] == 2


def test_withheld_singles_keep_a_seen2_combination_when_possible():
    # only A+B has both singles; the plain draw may withhold A or B, the search must avoid it
    perturbations = {p: K562 for p in ["A", "B", "C", "D", "A+B", "C+X", "D+X"]}
    common = make_common(perturbations, K562)
    for seed in range(20):
        result = run_combination(common, 0.25, seed)
        strata = set(result[1].obs["stratum"])
        assert strata == {"combo_seen0", "combo_seen1", "combo_seen2"}, (seed, strata)
        assert not {"A", "B"} & set(result[2].uns["held_out_singles"])


def test_no_combinations_is_not_applicable():
    common = make_common({"A": K562, "B": K562}, K562)
    with pytest.raises(splits.SplitNotApplicable, match="no multi-gene perturbations"):
        splits.combination_split(common.obs, 0.25, 0)


def test_heldout_context_argument_and_single_context():
    contexts = [("A172", "none"), ("T98G", "none"), ("U87MG", "none")]
    common = make_common({g: contexts for g in "ABCDEFGH"}, contexts)
    for seed in range(3):
        assert splits.transfer_split(common.obs, 0.25, seed)[2]["heldout_context"] == "|".join(contexts[seed])
    is_test, stratum, info = splits.transfer_split(common.obs, 0.25, 0, heldout_context="T98G|none")
    assert info["heldout_context"] == "T98G|none"
    assert set(common.obs["cell_type"][is_test]) == {"T98G"} and is_test.sum() == 2 * 2  # floor(0.25*8) x 2 reps
    assert splits.transfer_split(common.obs, 0.25, 0, heldout_context="U87MG")[2]["heldout_context"] == "U87MG|none"
    with pytest.raises(splits.SplitInputError, match="not a context"):
        splits.transfer_split(common.obs, 0.25, 0, heldout_context="K562|none")
    single = make_common({"A": K562, "B": K562}, K562)
    with pytest.raises(splits.SplitNotApplicable, match="transfer needs at least 2"):
        splits.transfer_split(single.obs, 0.25, 0)


def test_transfer_holds_out_only_perturbations_seen_elsewhere():
    contexts = [("Jurkat", "stimulated"), ("Jurkat", "unstimulated")]
    perturbations = {"A": contexts, "B": contexts, "C": contexts[:1], "D": contexts[:1], "E": contexts[:1]}
    common = make_common(perturbations, contexts)
    for seed in range(0, 40, 2):  # even seeds hold out `stimulated`
        is_test, stratum, info = splits.transfer_split(common.obs, 1.0, seed)
        assert info["heldout_context"] == "Jurkat|stimulated" and info["n_eligible"] == 2
        assert set(common.obs["perturbation"][is_test]) == {"A", "B"}  # capped by the eligible ones
    # the other context has only A and B: at most n - 1 = 1 of them is held out
    is_test, _, info = splits.transfer_split(common.obs, 1.0, 1)
    assert info["heldout_context"] == "Jurkat|unstimulated" and len(set(common.obs["perturbation"][is_test])) == 1


# --------------------------------------------------------------------------------------------------
# through the runner (as `perturbcast run` / `viash run`)
# --------------------------------------------------------------------------------------------------

def run_task(task, input_path, out_dir: Path, *args, tmp_path=None):
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / f"{name}.h5ad" for name in ("train", "test", "solution")}
    log = out_dir / "stderr.txt"
    with open(log, "w") as handle:
        result = run_component(ROOT / "src" / "tasks" / task,
                               ["--input", str(input_path), "--output_train", str(paths["train"]),
                                "--output_test", str(paths["test"]), "--output_solution", str(paths["solution"]),
                                *map(str, args)], stderr=handle)
    return result.exit_code, log.read_text(), paths


def read_split(paths):
    return [ad.read_h5ad(paths[name]) for name in ("train", "test", "solution")]


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """The simulated_grn loader's output with small arguments: 12 singles, 6 pairs, 2 cell types."""
    directory = tmp_path_factory.mktemp("simulated")
    path = directory / "common_dataset.h5ad"
    result = run_component(ROOT / "src" / "datasets" / "simulated_grn",
                           ["--output", str(path), "--n_genes", "60", "--n_regulators", "12",
                            "--n_perturbed_genes", "12", "--n_combos", "6", "--cells_per_perturbation", "20",
                            "--n_control_cells", "60"])
    assert result.exit_code == 0
    return ad.read_h5ad(path), path


@pytest.mark.parametrize("task", [COMBINATION, TRANSFER])
def test_runner_on_simulated_data_is_byte_identical_per_seed(task, simulated, tmp_path):
    common, path = simulated
    code, log, first = run_task(task, path, tmp_path / "a", "--seed", 3)
    assert code == 0, log
    code, _, second = run_task(task, path, tmp_path / "b", "--seed", 3)
    assert code == 0
    for name in first:
        assert first[name].read_bytes() == second[name].read_bytes(), name
    train, test, solution = read_split(first)
    if task == COMBINATION:
        strata = check_combination_properties(common, train, test, solution, 0.25, 3)
        assert set(strata) == {"combo_seen0", "combo_seen1", "combo_seen2"}
    else:
        check_transfer_properties(common, train, test, solution, 0.25, 3)
    assert check_split(*first.values(), common_path=path) == []


def test_runner_heldout_context_argument(simulated, tmp_path):
    common, path = simulated
    code, log, paths = run_task(TRANSFER, path, tmp_path / "a", "--heldout_context", "type_B|none", "--seed", 0,
                                "--test_size", 0.5)
    assert code == 0, log
    check_transfer_properties(common, *read_split(paths), 0.5, 0, heldout_context="type_B|none")
    code, log, paths = run_task(TRANSFER, path, tmp_path / "b", "--heldout_context", "type_Z|none")
    assert code == 1 and log.strip().startswith("[error] --heldout_context 'type_Z|none' is not a context")
    assert not any(p.exists() for p in paths.values())


@pytest.mark.parametrize("task, why", [(COMBINATION, "no multi-gene perturbations"),
                                       (TRANSFER, "transfer needs at least 2")])
def test_runner_not_applicable_exits_99_with_one_line(task, why, tmp_path):
    common = make_common({"A": K562, "B": K562, "C": K562}, K562)
    path = tmp_path / "common.h5ad"
    common.write_h5ad(path)
    code, log, paths = run_task(task, path, tmp_path / "out")
    lines = log.strip().splitlines()
    assert code == 99 and len(lines) == 1 and lines[0].startswith("[not applicable]") and why in lines[0], log
    assert not any(p.exists() for p in paths.values())


# --------------------------------------------------------------------------------------------------
# real data
# --------------------------------------------------------------------------------------------------

def test_norman19_combinations(tmp_path):
    common = realdata.norman19_common()
    assert formats.check_anndata(common, file_format("common_dataset")) == []
    path = tmp_path / "norman19.h5ad"
    common.write_h5ad(path)
    code, log, first = run_task(COMBINATION, path, tmp_path / "a", "--seed", 0)
    assert code == 0, log
    train, test, solution = read_split(first)
    strata = check_combination_properties(common, train, test, solution, 0.25, 0)
    assert set(strata) == {"combo_seen0", "combo_seen1", "combo_seen2"}
    assert check_split(*first.values(), common_path=path) == []
    code, _, second = run_task(COMBINATION, path, tmp_path / "b", "--seed", 0)
    assert all(first[n].read_bytes() == second[n].read_bytes() for n in first)
    print(f"norman19 unseen_combination seed 0: withheld singles {list(solution.uns['held_out_singles'])}; "
          f"train {train.n_obs} profiles; test {test.n_obs} combinations {strata}")
    for seed in range(1, 10):  # every stratum on every seed, in process
        train, test, solution = run_combination(common, 0.25, seed)
        strata = check_combination_properties(common, train, test, solution, 0.25, seed)
        assert set(strata) == {"combo_seen0", "combo_seen1", "combo_seen2"}, (seed, strata)


@pytest.mark.parametrize("name", ["mcfaline23", "datlinger2017"])
def test_real_transfer(name, tmp_path):
    common = getattr(realdata, f"{name}_common")()
    assert formats.check_anndata(common, file_format("common_dataset")) == []
    contexts = splits.contexts_of(common.obs)
    assert len(contexts) == {"mcfaline23": 3, "datlinger2017": 2}[name]
    path = tmp_path / f"{name}.h5ad"
    common.write_h5ad(path)
    code, log, paths = run_task(TRANSFER, path, tmp_path / "run", "--seed", 0)
    assert code == 0, log
    n = check_transfer_properties(common, *read_split(paths), 0.25, 0)
    assert check_split(*paths.values(), common_path=path) == []
    held = {}
    for seed in range(len(contexts)):  # every context, in process
        is_test, stratum, info = splits.transfer_split(common.obs, 0.25, seed)
        train, test, solution = splits.build_split(common, is_test, stratum, TRANSFER, seed,
                                                   extra_solution_uns={"heldout_context": info["heldout_context"]})
        check_transfer_properties(common, train, test, solution, 0.25, seed)
        held[info["heldout_context"]] = sorted(test.obs["perturbation"])
    assert set(held) == {"|".join(c) for c in contexts}
    print(f"{name} cell_type_transfer: {n} perturbations per context; held out per context {held}")
