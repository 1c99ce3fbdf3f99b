"""Tests of the simulated_grn dataset loader (src/datasets/simulated_grn).

The component runs through the runner (perturbcast.runner.run_component, what `perturbcast run` does):
the config's defaults plus the test's arguments.
"""
from __future__ import annotations

import ast
import contextlib
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml

from perturbcast.runner import run_component

ROOT = Path(__file__).resolve().parents[1]
COMPONENT = ROOT / "src" / "datasets" / "simulated_grn"
UTILS = ROOT / "src" / "utils"
sys.path.insert(0, str(UTILS))
from formats import check_anndata  # noqa: E402

SMALL = {"n_genes": 60, "n_regulators": 12, "n_perturbed_genes": 12, "n_combos": 6,
         "cells_per_perturbation": 20, "n_control_cells": 60}


def config_defaults() -> dict:
    config = yaml.safe_load((COMPONENT / "config.vsh.yaml").read_text())
    return {arg["name"].lstrip("-"): arg["default"] for arg in config["arguments"] if "default" in arg}


def common_dataset_format() -> dict:
    return yaml.safe_load((ROOT / "src" / "api" / "file_common_dataset.yaml").read_text())["info"]["format"]


def run_loader(tmp_path: Path, **arguments) -> tuple[SimpleNamespace, Path]:
    """Run the component through the runner (`perturbcast run`) with the test's arguments (the config's
    defaults for the rest); returns (result with `returncode` and `stderr`, output path). `stderr` leaves
    out the runner's own `[notice]` lines (the build folder it keeps after a failure, in tmp_path) and holds
    the runner's argument errors (a value outside the config's `choices`), which it prints on sys.stderr."""
    output = tmp_path / "dataset.h5ad"
    argv = [word for key, value in arguments.items() for word in (f"--{key}", str(value))] + ["--output", str(output)]
    log = tmp_path / "stderr.txt"
    with open(tmp_path / "stdout.txt", "w") as stdout, open(log, "w") as stderr, contextlib.redirect_stderr(stderr), \
            mock.patch.dict(os.environ, {"VIASH_TEMP": str(tmp_path / "viash_temp")}):
        result = run_component(COMPONENT, argv, stdout=stdout, stderr=stderr)
    text = "".join(line for line in log.read_text().splitlines(keepends=True) if not line.startswith("[notice]"))
    return SimpleNamespace(returncode=result.exit_code, stderr=text), output


def load(tmp_path_factory, name: str, **arguments) -> ad.AnnData:
    tmp_path = tmp_path_factory.mktemp(name)
    completed, output = run_loader(tmp_path, **arguments)
    assert completed.returncode == 0, completed.stderr
    return ad.read_h5ad(output)


@pytest.fixture(scope="module")
def knockdown(tmp_path_factory):
    return load(tmp_path_factory, "knockdown", **SMALL)


@pytest.fixture(scope="module")
def knockout(tmp_path_factory):
    return load(tmp_path_factory, "knockout", **SMALL, perturbation_type="knockout", model="linear")


@pytest.fixture(scope="module")
def activation(tmp_path_factory):
    return load(tmp_path_factory, "activation", **SMALL, perturbation_type="activation", dispersion=0.0)


def profile_means(adata: ad.AnnData, cell_type: str) -> dict[str, np.ndarray]:
    """Mean X over replicates per perturbation in one cell type."""
    in_type = (adata.obs["cell_type"] == cell_type).to_numpy()
    return {p: np.asarray(adata.X[in_type & (adata.obs["perturbation"] == p).to_numpy()]).mean(axis=0)
            for p in adata.obs["perturbation"][in_type].unique()}


def test_viash_block_matches_config_defaults():
    text = (COMPONENT / "script.py").read_text()
    block = text[text.index("## VIASH START"):text.index("## VIASH END")]
    namespace: dict = {}
    exec(compile(ast.parse(block), "viash_block", "exec"), namespace)
    defaults = config_defaults()
    assert set(namespace["par"]) == set(defaults) | {"output"}
    assert {key: namespace["par"][key] for key in defaults} == defaults


@pytest.mark.parametrize("name", ["knockdown", "knockout", "activation"])
def test_output_conforms_to_common_dataset_format(name, request):
    adata = request.getfixturevalue(name)
    assert check_anndata(adata, common_dataset_format()) == []
    assert adata.X.dtype == np.float32
    assert set(adata.obs["perturbation_type"]) == {name}
    assert set(adata.obs["condition"]) == {"none"}
    assert adata.uns["dataset_id"] == "simulated_grn"
    assert adata.uns["normalization_id"] == "log_cp10k_cell_mean"
    assert adata.uns["dataset_organism"] == "synthetic"
    assert len(adata.uns["source_sha256"]) == 64
    assert adata.uns["simulation"]["perturbation_type"] == name
    assert list(adata.var_names[:2]) == ["G0001", "G0002"]
    assert list(adata.var["gene_id"][:2]) == ["SIM0001", "SIM0002"]


def test_design_singles_combos_cell_types_replicates(knockdown):
    obs = knockdown.obs
    perturbations = set(obs["perturbation"])
    singles = {p for p in perturbations if p != "control" and "+" not in p}
    combos = {p for p in perturbations if "+" in p}
    assert len(singles) == SMALL["n_perturbed_genes"] and len(combos) == SMALL["n_combos"]
    for combo in combos:
        genes = combo.split("+")
        assert genes == sorted(genes) and len(genes) == 2
        assert set(genes) <= singles
    assert set(obs["cell_type"]) == {"type_A", "type_B"}
    groups = obs.groupby(["perturbation", "cell_type"], observed=True)[["replicate", "control_part"]].apply(
        lambda frame: sorted(map(tuple, frame.to_numpy().tolist())))
    assert len(groups) == 2 * (1 + len(singles) + len(combos))
    # perturbations: one profile per replicate half; controls: each half cut into its two control parts
    for (perturbation, _), profiles in groups.items():
        assert profiles == ([("r1", 1), ("r1", 2), ("r2", 1), ("r2", 2)] if perturbation == "control"
                            else [("r1", 0), ("r2", 0)])
    assert (obs["n_targets"] == obs["perturbation"].map(lambda p: 0 if p == "control" else p.count("+") + 1)).all()
    assert (obs["n_cells"] >= 1).all()
    assert list(obs.index[:2]) == ["control|type_A|none|r1|p1", "control|type_A|none|r1|p2"]
    assert all(name == "|".join(row[:4]) + (f"|p{row[4]}" if row[4] else "") for name, row in
               zip(obs.index, obs[["perturbation", "cell_type", "condition", "replicate", "control_part"]]
                   .itertuples(index=False)))


def test_controls(knockdown):
    obs = knockdown.obs
    controls = obs[obs["perturbation"] == "control"]
    assert controls["is_control"].all() and (controls["n_targets"] == 0).all()
    assert not obs.loc[obs["perturbation"] != "control", "is_control"].any()
    # every control cell of a cell type lands in exactly one replicate half
    assert (controls.groupby("cell_type", observed=True)["n_cells"].sum() == SMALL["n_control_cells"]).all()
    assert set(controls["perturbation_type"]) == {"knockdown"}


def test_counts_and_normalisation(knockdown, tmp_path_factory):
    """X is the mean over a profile's cells of each cell's log1p(cp10k) (the cells file holds every cell
    here); `--normalization log_cp10k` gives log1p(cp10k) of the summed counts instead."""
    counts = np.asarray(knockdown.layers["counts"], dtype=np.float64)
    assert (counts >= 0).all() and np.array_equal(counts, np.round(counts))
    tmp_path = tmp_path_factory.mktemp("with_cells")
    cells_path = tmp_path / "cells.h5ad"
    completed, output = run_loader(tmp_path, **SMALL, output_cells=cells_path, max_cells_per_condition=100000,
                                   max_control_cells=100000)
    assert completed.returncode == 0, completed.stderr
    profiles, cells = ad.read_h5ad(output), ad.read_h5ad(cells_path)
    np.testing.assert_array_equal(np.asarray(profiles.X), np.asarray(knockdown.X))
    assert cells.n_obs == int(profiles.obs["n_cells"].sum())
    X = np.asarray(cells.X.toarray() if hasattr(cells.X, "toarray") else cells.X, dtype=np.float64)
    by_profile = pd.Series(np.arange(cells.n_obs)).groupby(cells.obs["profile_id"].astype(str).to_numpy()).apply(list)
    means = np.vstack([X[by_profile[name]].mean(axis=0) for name in profiles.obs_names])
    np.testing.assert_allclose(np.asarray(profiles.X), means, rtol=1e-4, atol=1e-4)
    summed = load(tmp_path_factory, "summed", **SMALL, normalization="log_cp10k")
    assert summed.uns["normalization_id"] == "log_cp10k"
    np.testing.assert_array_equal(np.asarray(summed.layers["counts"]), counts)  # same draws
    expected = np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e4)
    np.testing.assert_allclose(np.asarray(summed.X), expected, rtol=1e-5, atol=1e-5)


def test_var_columns(knockdown):
    X = np.asarray(knockdown.X, dtype=np.float64)
    rank = knockdown.var["highly_variable_rank"].to_numpy()
    assert sorted(rank) == list(range(knockdown.n_vars))
    variance = X.var(axis=0)
    assert variance[rank == 0][0] == pytest.approx(variance.max())
    assert np.all(np.diff(variance[np.argsort(rank)]) <= 1e-12)
    np.testing.assert_allclose(knockdown.var["mean_expression"], X.mean(axis=0), rtol=1e-6)


def test_same_seed_identical_other_seed_different(knockdown, tmp_path_factory):
    again = load(tmp_path_factory, "again", **SMALL)
    np.testing.assert_array_equal(np.asarray(again.X), np.asarray(knockdown.X))
    np.testing.assert_array_equal(np.asarray(again.layers["counts"]), np.asarray(knockdown.layers["counts"]))
    assert list(again.obs_names) == list(knockdown.obs_names)
    assert again.uns["source_sha256"] == knockdown.uns["source_sha256"]
    other = load(tmp_path_factory, "other_seed", **SMALL, seed=1)
    assert other.uns["source_sha256"] != knockdown.uns["source_sha256"]
    assert other.shape[1] == knockdown.shape[1]
    assert set(other.obs["perturbation"]) != set(knockdown.obs["perturbation"]) or \
        not np.array_equal(np.asarray(other.X), np.asarray(knockdown.X))


def expected_deltas(adata: ad.AnnData, cell_type: str) -> dict[str, np.ndarray]:
    """Noise-free delta to control per perturbation (layers['expected'], mean over replicates)."""
    in_type = (adata.obs["cell_type"] == cell_type).to_numpy()
    expected = np.asarray(adata.layers["expected"], dtype=np.float64)
    means = {p: expected[in_type & (adata.obs["perturbation"] == p).to_numpy()].mean(axis=0)
             for p in adata.obs["perturbation"][in_type].unique()}
    return {p: means[p] - means["control"] for p in means if p != "control"}


@pytest.mark.parametrize("name", ["knockdown", "activation"])
def test_effective_guides_move_the_target_mrna_in_the_perturbation_direction(name, tmp_path_factory):
    # CRISPRi/CRISPRa act on transcription, so the target's own mRNA shows them (all guides effective here)
    adata = load(tmp_path_factory, f"{name}_effective", **SMALL, perturbation_type=name, share_ineffective=0.0)
    direction = -1 if name == "knockdown" else 1
    for cell_type in ("type_A", "type_B"):
        for perturbation, delta in expected_deltas(adata, cell_type).items():
            if "+" not in perturbation:
                change = delta[adata.var_names.get_loc(perturbation)]
                assert direction * change > 0.1, f"{name} {perturbation} in {cell_type}: target changed by {change:.2f}"


def test_knockout_removes_activity_not_the_mrna(knockout):
    # A frameshift removes the protein; the mRNA loses at most NMD_MAX = 60% (log 0.4 = -0.92), so the
    # revealed target mRNA understates the perturbation while its targets move.
    for cell_type in ("type_A", "type_B"):
        deltas = expected_deltas(knockout, cell_type)
        singles = {p: d for p, d in deltas.items() if "+" not in p}
        # relative to the median gene, since normalisation to counts per 10k shifts every gene when the
        # knockout raises or lowers many of them
        changes = np.array([d[knockout.var_names.get_loc(p)] - np.median(d) for p, d in singles.items()])
        assert changes.min() > -0.95 and changes.max() < 0.05, changes
        downstream = [np.abs(np.delete(d, knockout.var_names.get_loc(p))).max() for p, d in singles.items()]
        assert max(downstream) > 3 * np.abs(changes).max()


def test_ineffective_guides_have_no_measurable_effect(tmp_path_factory):
    adata = load(tmp_path_factory, "ineffective", **SMALL, share_ineffective=1.0)
    largest = max(np.abs(d).max() for d in expected_deltas(adata, "type_A").values())
    # efficiency below 0.1: transcription at least 91% of normal, log change above log(0.91) = -0.094
    assert largest < 0.12
    effective = max(np.abs(d).max() for d in expected_deltas(
        load(tmp_path_factory, "effective", **SMALL, share_ineffective=0.0), "type_A").values())
    assert effective > 0.5


def test_expected_is_the_noise_free_mean_and_carries_the_replicate_batch(tmp_path_factory):
    few = load(tmp_path_factory, "few_cells", **{**SMALL, "cells_per_perturbation": 10, "n_control_cells": 20})
    many = load(tmp_path_factory, "many_cells", **{**SMALL, "cells_per_perturbation": 640, "n_control_cells": 1280})
    error = {name: float(np.mean((np.asarray(a.X, dtype=np.float64) - a.layers["expected"]) ** 2))
             for name, a in (("few", few), ("many", many))}
    # sampling noise of a mean falls as 1 / cells: 64 times more cells, far smaller error
    assert error["many"] < error["few"] / 20, error
    np.testing.assert_allclose(many.layers["expected"], few.layers["expected"])  # cells do not move the truth
    controls = few[(few.obs["perturbation"] == "control").to_numpy() & (few.obs["cell_type"] == "type_A").to_numpy()]
    expected = np.asarray(controls.layers["expected"], dtype=np.float64)
    r1, r2 = (expected[(controls.obs["replicate"] == r).to_numpy()] for r in ("r1", "r2"))
    np.testing.assert_allclose(r1[0], r1[1])  # the two control parts of a replicate share its truth
    assert np.abs(r1[0] - r2[0]).max() > 0.1  # each replicate its own batch effect
    flat = load(tmp_path_factory, "no_batch", **SMALL, batch_effect=0.0)
    controls = flat[(flat.obs["perturbation"] == "control").to_numpy()]
    expected = np.asarray(controls.layers["expected"], dtype=np.float64)
    np.testing.assert_allclose(expected[(controls.obs["replicate"] == "r1").to_numpy()][0],
                               expected[(controls.obs["replicate"] == "r2").to_numpy()][0], atol=1e-6)


def test_effects_propagate_beyond_the_target_and_differ_by_cell_type(knockout):
    # Replicate noise sets the bar: a real downstream effect must clearly exceed the split-half spread.
    controls = knockout[knockout.obs["is_control"].to_numpy()]

    def half(cell_type, replicate):  # a replicate half of the controls: the mean of its two control parts
        rows = ((controls.obs["cell_type"] == cell_type) & (controls.obs["replicate"] == replicate)).to_numpy()
        return np.asarray(controls.X[rows], dtype=np.float64).mean(axis=0)
    noise = max(np.abs(half(t, "r1") - half(t, "r2")).max() for t in ("type_A", "type_B"))
    deltas = {}
    for cell_type in ("type_A", "type_B"):
        means = profile_means(knockout, cell_type)
        for perturbation, profile in means.items():
            if perturbation == "control":
                continue
            delta = profile - means["control"]
            delta[[knockout.var_names.get_loc(g) for g in perturbation.split("+")]] = 0.0
            deltas[perturbation, cell_type] = delta
    n_propagating = sum(np.abs(delta).max() > max(1.0, 2 * noise) for delta in deltas.values())
    assert n_propagating >= 3, f"only {n_propagating} perturbations change a non-target gene clearly"
    differences = [np.abs(deltas[p, "type_A"] - deltas[p, "type_B"]).max()
                   for p, cell_type in deltas if cell_type == "type_A"]
    assert max(differences) > 1.0


@pytest.mark.parametrize("arguments, message", [
    ({"n_genes": 10, "n_regulators": 3, "n_perturbed_genes": 11}, "--n_perturbed_genes"),
    ({**SMALL, "n_perturbed_genes": 3, "n_combos": 4}, "--n_combos"),
    ({**SMALL, "n_regulators": 60}, "--n_regulators"),
    ({**SMALL, "model": "quadratic"}, "--model"),
])
def test_bad_arguments_fail_with_one_line_and_no_output(arguments, message, tmp_path):
    completed, output = run_loader(tmp_path, **arguments)
    assert completed.returncode == 1
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("[error] ") and message in lines[0], completed.stderr
    assert not output.exists()
