"""Bad input never yields a traceback: one clear line (file, field, expectation), a non-zero exit, and
no output file."""
import anndata as ad
import numpy as np
import pytest

from perturbcast.runner import run_component

from conftest import ROOT


def run(component, args, capfd):
    result = run_component(ROOT / component, [str(a) for a in args])
    err = capfd.readouterr().err
    return result, err


def assert_one_clear_line(result, err, *fragments):
    assert result.exit_code != 0
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("[error]")]
    assert len(errors) == 1, err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.fixture
def split(test_resources):
    return test_resources / "unseen_perturbation"


def predict_args(split, tmp_path, **override):
    args = {"input_train": split / "train.h5ad", "input_test": split / "test.h5ad",
            "input_solution": split / "solution.h5ad", "output": tmp_path / "prediction.h5ad"}
    args.update(override)
    return [x for key, value in args.items() for x in (f"--{key}", value)]


def score_args(split, tmp_path, prediction):
    return ["--input_solution", split / "solution.h5ad", "--input_prediction", prediction,
            "--output", tmp_path / "score.h5ad"]


def test_missing_input_file(split, tmp_path, capfd):
    result, err = run("src/control_methods/train_mean", predict_args(split, tmp_path, input_train=tmp_path / "no.h5ad"), capfd)
    assert_one_clear_line(result, err, "Input file", "no.h5ad", "does not exist")
    assert not (tmp_path / "prediction.h5ad").exists()


def test_malformed_h5ad(split, tmp_path, capfd):
    broken = tmp_path / "broken.h5ad"
    broken.write_text("this is not an h5ad file\n")
    result, err = run("src/control_methods/train_mean", predict_args(split, tmp_path, input_train=broken), capfd)
    assert_one_clear_line(result, err, "--input_train", "broken.h5ad", "HDF5")
    assert not (tmp_path / "prediction.h5ad").exists()


def test_truncated_h5ad(split, tmp_path, capfd):
    truncated = tmp_path / "truncated.h5ad"
    truncated.write_bytes((split / "train.h5ad").read_bytes()[:4096])
    result, err = run("src/control_methods/train_mean", predict_args(split, tmp_path, input_train=truncated), capfd)
    assert_one_clear_line(result, err, "--input_train", "truncated.h5ad")
    assert not (tmp_path / "prediction.h5ad").exists()


def test_missing_obs_column(split, tmp_path, capfd):
    train = ad.read_h5ad(split / "train.h5ad")
    del train.obs["cell_type"]
    train.write_h5ad(tmp_path / "train.h5ad")
    result, err = run("src/control_methods/train_mean", predict_args(split, tmp_path, input_train=tmp_path / "train.h5ad"), capfd)
    assert_one_clear_line(result, err, "train.h5ad", "obs['cell_type'] is missing")
    assert not (tmp_path / "prediction.h5ad").exists()


def test_prediction_with_nan(split, tmp_path, capfd):
    prediction = ad.read_h5ad(split / "prediction.h5ad")
    prediction.X = np.asarray(prediction.X, dtype=np.float32)
    prediction.X[0, 0] = np.nan
    prediction.write_h5ad(tmp_path / "nan.h5ad")
    result, err = run("src/metrics/delta_error", score_args(split, tmp_path, tmp_path / "nan.h5ad"), capfd)
    assert_one_clear_line(result, err, "nan.h5ad", "NaN")
    assert not (tmp_path / "score.h5ad").exists()


def test_prediction_with_genes_in_another_order(split, tmp_path, capfd):
    prediction = ad.read_h5ad(split / "prediction.h5ad")
    prediction[:, prediction.var_names[::-1]].copy().write_h5ad(tmp_path / "reordered.h5ad")
    result, err = run("src/metrics/delta_error", score_args(split, tmp_path, tmp_path / "reordered.h5ad"), capfd)
    assert_one_clear_line(result, err, "reordered.h5ad", "another order")
    assert not (tmp_path / "score.h5ad").exists()


def test_invalid_output_is_removed(split, tmp_path, capfd, monkeypatch):
    """The runner's own check: an output that breaks the format is reported and deleted."""
    from perturbcast import formats

    monkeypatch.setattr(formats, "output_problems", lambda config, values: {"--output": ["X has 1 NaN values"]})
    result, err = run("src/control_methods/train_mean", predict_args(split, tmp_path), capfd)
    assert result.exit_code == 1
    assert "does not match its API format" in err
    assert not (tmp_path / "prediction.h5ad").exists()


def test_prediction_in_raw_counts_is_rejected(split, tmp_path, capfd):
    prediction = ad.read_h5ad(split / "prediction.h5ad")
    prediction.X = (np.expm1(np.asarray(prediction.X)) * 100).astype(np.float32)
    prediction.write_h5ad(tmp_path / "counts.h5ad")
    result, err = run("src/metrics/delta_error", score_args(split, tmp_path, tmp_path / "counts.h5ad"), capfd)
    assert_one_clear_line(result, err, "counts.h5ad", "looks like raw counts")
    assert not (tmp_path / "score.h5ad").exists()
