"""The control methods (ground_truth, replicate_ceiling, no_change, train_mean) and the delta_error metric
on small hand-made files, against values computed by hand."""
import math

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from perturbcast.runner import run_component

from conftest import ROOT

GENES = ["G0", "G1", "G2", "G3", "G4", "G5"]
UNS = {"dataset_id": "hand", "task_id": "unseen_perturbation", "split_seed": 0, "normalization_id": "log_cp10k"}
VAR = pd.DataFrame({"highly_variable_rank": np.arange(len(GENES))}, index=GENES)


def _obs(rows, columns, prefix):
    return pd.DataFrame(rows, columns=columns, index=[f"{prefix}{i}" for i in range(len(rows))])


def make_split():
    """Two contexts with training data (K562, RPE1) and one test-only context (HEK) without any.

    K562: perturbation G0 with 3 replicates, G1 with 1 (so replicate-first averaging differs from a flat
    mean), 2 controls; RPE1: G2 with 2 replicates, 2 controls.
    """
    rng = np.random.default_rng(0)
    rows = [  # perturbation, cell_type, replicate
        ("control", "K562", "r1"), ("control", "K562", "r2"), ("control", "RPE1", "r1"), ("control", "RPE1", "r2"),
        ("G0", "K562", "r1"), ("G0", "K562", "r2"), ("G0", "K562", "r3"), ("G1", "K562", "r1"),
        ("G2", "RPE1", "r1"), ("G2", "RPE1", "r2"),
    ]
    obs = _obs(rows, ["perturbation", "cell_type", "replicate"], "p")
    obs["is_control"] = obs["perturbation"] == "control"
    obs["perturbation_type"] = "knockdown"
    obs["n_targets"] = (~obs["is_control"]).astype(np.int64)
    obs["condition"] = "none"
    obs["n_cells"] = np.int64(50)
    X = rng.uniform(0, 4, size=(len(rows), len(GENES))).astype(np.float32)
    var = VAR.assign(mean_expression=X.mean(axis=0).astype(np.float64))
    train = ad.AnnData(X=X, obs=obs, var=var, uns=dict(UNS))

    test_rows = [("G3", "K562", "single", 1), ("G4+G5", "RPE1", "combo_seen0", 2), ("G3+XYZ", "HEK", "combo_seen0", 2)]
    test_obs = _obs(test_rows, ["perturbation", "cell_type", "stratum", "n_targets"], "t")
    test_obs["n_targets"] = test_obs["n_targets"].astype(np.int64)
    test_obs["perturbation_type"] = "knockdown"
    test_obs["condition"] = "none"
    test_obs["target_expression"] = ["0.5", "0.1+0.2", "0.3+nan"]
    test = ad.AnnData(obs=test_obs, var=VAR.copy(), uns=dict(UNS))

    replicate_1 = rng.uniform(0, 4, size=(3, len(GENES))).astype(np.float32)
    replicate_2 = rng.uniform(0, 4, size=(3, len(GENES))).astype(np.float32)
    controls = {c: X[(obs.is_control & (obs.cell_type == c)).to_numpy()].mean(axis=0) for c in ("K562", "RPE1")}
    controls["HEK"] = X[obs.is_control.to_numpy()].mean(axis=0)
    solution = ad.AnnData(
        X=((replicate_1 + replicate_2) / 2).astype(np.float32),
        obs=test_obs.drop(columns="target_expression").assign(n_cells=np.int64(60)), var=VAR.copy(),
        layers={"replicate_1": replicate_1, "replicate_2": replicate_2,
                "control": np.vstack([controls[c] for c in test_obs.cell_type]).astype(np.float32)},
        uns=dict(UNS))
    return train, test, solution


def run(component, args):
    return run_component(ROOT / "src" / component, [str(a) for a in args])


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    directory = tmp_path_factory.mktemp("split")
    train, test, solution = make_split()
    for name, adata in (("train", train), ("test", test), ("solution", solution)):
        adata.write_h5ad(directory / f"{name}.h5ad")
    return directory, train, test, solution


@pytest.fixture(scope="module")
def predictions(split):
    directory = split[0]
    out = {}
    for name in ("ground_truth", "replicate_ceiling", "no_change", "train_mean"):
        path = directory / f"{name}.h5ad"
        result = run(f"control_methods/{name}", ["--input_train", directory / "train.h5ad", "--input_test",
                                                  directory / "test.h5ad", "--input_solution",
                                                  directory / "solution.h5ad", "--output", path])
        assert result.exit_code == 0, name
        out[name] = ad.read_h5ad(path)
    return out


@pytest.mark.parametrize("name", ["ground_truth", "replicate_ceiling", "no_change", "train_mean"])
def test_prediction_layout(split, predictions, name):
    _, train, test, _ = split
    prediction = predictions[name]
    assert list(prediction.obs_names) == list(test.obs_names)
    assert list(prediction.var_names) == list(train.var_names)
    assert isinstance(prediction.X, np.ndarray) and prediction.X.dtype == np.float32
    assert prediction.uns["method_id"] == name
    assert prediction.uns["dataset_id"] == "hand" and prediction.uns["task_id"] == "unseen_perturbation"


def test_positive_controls_copy_the_solution(split, predictions):
    solution = split[3]
    np.testing.assert_array_equal(predictions["ground_truth"].X, solution.X)
    # the ceiling draws true profiles around X (tests/test_ceiling.py checks it against an oracle); it no
    # longer copies replicate half 1, which X contains
    ceiling = predictions["replicate_ceiling"]
    # 20 draws stored as distinct rows and the row each condition takes in each draw; X is draw 0
    profiles, rows = ceiling.uns["draw_profiles"], ceiling.uns["draw_rows"]
    assert ceiling.uns["n_draws"] == 20 and rows.shape == (20, ceiling.n_obs) and not ceiling.layers
    np.testing.assert_array_equal(profiles[rows[0]], ceiling.X)
    assert len(np.unique(profiles, axis=0)) == len(profiles) >= ceiling.n_obs  # distinct rows only
    assert not np.allclose(ceiling.X, solution.layers["replicate_1"])
    assert not np.allclose(ceiling.X, solution.X)


def test_no_change_is_the_training_control_mean(split, predictions):
    train = split[1]
    X = train.X.astype(np.float64)
    k562, rpe1 = X[[0, 1]].mean(axis=0), X[[2, 3]].mean(axis=0)
    all_controls = X[[0, 1, 2, 3]].mean(axis=0)  # HEK has no controls: fall back to all of them
    np.testing.assert_allclose(predictions["no_change"].X, np.vstack([k562, rpe1, all_controls]), rtol=1e-6)


def test_train_mean_averages_replicates_first(split, predictions):
    train = split[1]
    X = train.X.astype(np.float64)
    g0, g1, g2 = X[[4, 5, 6]].mean(axis=0), X[7], X[[8, 9]].mean(axis=0)
    k562, rpe1 = (g0 + g1) / 2, g2
    everywhere = (g0 + g1 + g2) / 3  # HEK has no training perturbation: all contexts
    got = predictions["train_mean"].X
    np.testing.assert_allclose(got, np.vstack([k562, rpe1, everywhere]), rtol=1e-6)
    assert not np.allclose(got[0], X[[4, 5, 6, 7]].mean(axis=0))  # not the flat mean over profiles


# ------------------------------------------------------------------------------------------------------
# delta_error
# ------------------------------------------------------------------------------------------------------

HAND_CONTROL = np.ones((2, 4))
HAND_SOLUTION = np.array([[5.0, 2.0, 3.0, 1.0],    # row "A":   observed delta [4, 1, 2, 0]; used B C D: [1, 2, 0]
                          [2.0, 9.0, 1.0, 4.0]])   # row "B+Z": observed delta [1, 8, 0, 3]; used A C D: [1, 0, 3]
HAND_PREDICTION = np.array([[7.0, 3.0, 3.0, 2.0],  # predicted delta used: [2, 2, 1]
                            [1.0, 0.0, 3.0, 5.0]])  # predicted delta used: [0, 2, 4]
HAND_EXPECTED = {  # per row, worked out by hand
    "mse_delta": [2 / 3, 2.0],                      # diffs [1, 0, 1] and [-1, 2, 1]
    "mae_delta": [2 / 3, 4 / 3],
    "rmse_delta": [math.sqrt(2 / 3), math.sqrt(2.0)],
    "pearson_delta": [math.sqrt(3) / 2, math.sqrt(3 / 7)],
}


def write_hand_case(directory, prediction_X=HAND_PREDICTION, genes=("A", "B", "C", "D")):
    obs = pd.DataFrame({"perturbation": ["A", "B+Z"], "perturbation_type": "knockout", "n_targets": np.int64([1, 2]),
                        "cell_type": "K562", "condition": "none", "stratum": ["single", "combo_seen0"],
                        "n_cells": np.int64(10)}, index=["c0", "c1"])
    var = pd.DataFrame(index=["A", "B", "C", "D"])
    solution = ad.AnnData(X=HAND_SOLUTION.astype(np.float32), obs=obs, var=var, uns=dict(UNS),
                          layers={"replicate_1": HAND_SOLUTION.astype(np.float32),
                                  "replicate_2": HAND_SOLUTION.astype(np.float32),
                                  "control": HAND_CONTROL.astype(np.float32)})
    prediction = ad.AnnData(X=np.asarray(prediction_X, dtype=np.float32), obs=pd.DataFrame(index=["c0", "c1"]),
                            var=pd.DataFrame(index=list(genes)),
                            uns={"dataset_id": "hand", "task_id": "unseen_perturbation", "method_id": "m"})
    solution.write_h5ad(directory / "solution.h5ad")
    prediction.write_h5ad(directory / "prediction.h5ad")
    return directory / "solution.h5ad", directory / "prediction.h5ad"


def score(solution, prediction, output):
    result = run("metrics/delta_error", ["--input_solution", solution, "--input_prediction", prediction,
                                         "--output", output])
    return result, (ad.read_h5ad(output) if result.exit_code == 0 else None)


def test_delta_error_hand_values(tmp_path):
    result, scored = score(*write_hand_case(tmp_path), tmp_path / "score.h5ad")
    assert result.exit_code == 0
    assert list(scored.obs_names) == ["c0", "c1"]
    assert list(scored.obs["stratum"]) == ["single", "combo_seen0"]
    assert list(scored.uns["metric_ids"])[:4] == ["mse_delta", "mae_delta", "rmse_delta", "pearson_delta"]
    assert scored.uns["method_id"] == "m" and scored.uns["dataset_id"] == "hand"
    for metric_id, value in list(zip(scored.uns["metric_ids"], scored.uns["metric_values"]))[:4]:
        np.testing.assert_allclose(scored.obs[metric_id], HAND_EXPECTED[metric_id], atol=1e-6)
        assert value == pytest.approx(np.mean(HAND_EXPECTED[metric_id]), abs=1e-6)


def test_target_genes_are_excluded(tmp_path):
    baseline = score(*write_hand_case(tmp_path), tmp_path / "score.h5ad")[1].obs
    at_target = HAND_PREDICTION.copy()
    at_target[0, 0] += 5.0  # A is row c0's target
    at_target[1, 1] -= 3.0  # B is row c1's target
    (tmp_path / "t").mkdir()
    changed = score(*write_hand_case(tmp_path / "t", at_target), tmp_path / "t" / "score.h5ad")[1].obs
    pd.testing.assert_frame_equal(changed, baseline)
    elsewhere = HAND_PREDICTION.copy()
    elsewhere[0, 2] += 1.0  # C is not a target of c0
    (tmp_path / "e").mkdir()
    moved = score(*write_hand_case(tmp_path / "e", elsewhere), tmp_path / "e" / "score.h5ad")[1].obs
    for metric_id in HAND_EXPECTED:
        assert moved.loc["c0", metric_id] != pytest.approx(baseline.loc["c0", metric_id], abs=1e-6), metric_id
        assert moved.loc["c1", metric_id] == pytest.approx(baseline.loc["c1", metric_id], abs=1e-12)


def test_ground_truth_scores_perfectly(split, predictions, tmp_path):
    directory = split[0]
    _, scored = score(directory / "solution.h5ad", directory / "ground_truth.h5ad", tmp_path / "score.h5ad")
    np.testing.assert_allclose(scored.obs["mse_delta"], 0.0, atol=1e-12)
    np.testing.assert_allclose(scored.obs["pearson_delta"], 1.0, atol=1e-6)
    assert scored.uns["method_id"] == "ground_truth"


def test_constant_delta_prediction_has_pearson_zero(tmp_path, capfd):
    constant = HAND_CONTROL + 0.3
    result, scored = score(*write_hand_case(tmp_path, constant), tmp_path / "score.h5ad")
    assert result.exit_code == 0
    assert list(scored.obs["pearson_delta"]) == [0.0, 0.0]
    assert np.isfinite(scored.uns["metric_values"]).all()
    assert scored.obs["mse_delta"].iloc[0] == pytest.approx(np.mean((0.3 - np.array([1.0, 2.0, 0.0])) ** 2), abs=1e-6)
    assert "undefined (constant delta, scored 0.0) for 2 conditions" in capfd.readouterr().err


def test_no_change_prediction_has_pearson_zero(split, predictions, tmp_path):
    directory = split[0]
    _, scored = score(directory / "solution.h5ad", directory / "no_change.h5ad", tmp_path / "score.h5ad")
    np.testing.assert_array_equal(scored.obs["pearson_delta"], 0.0)


@pytest.mark.parametrize("problem", ["reordered", "nan"])
def test_bad_prediction_is_refused(tmp_path, capfd, problem):
    if problem == "reordered":
        paths = write_hand_case(tmp_path, HAND_PREDICTION[:, ::-1], genes=("D", "C", "B", "A"))
    else:
        bad = HAND_PREDICTION.copy()
        bad[1, 2] = np.nan
        paths = write_hand_case(tmp_path, bad)
    renamed = tmp_path / f"{problem}.h5ad"
    paths[1].rename(renamed)
    capfd.readouterr()
    result, _ = score(paths[0], renamed, tmp_path / "score.h5ad")
    err = capfd.readouterr().err
    assert result.exit_code != 0
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("[error]")]
    assert len(errors) == 1 and f"{problem}.h5ad" in errors[0], err
    assert ("another order" if problem == "reordered" else "NaN") in errors[0]
    assert not (tmp_path / "score.h5ad").exists()
