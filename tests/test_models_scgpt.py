"""The scGPT component (src/methods/scgpt) through the runner, in its own environment, on Norman cells of the
PerturBench devel file with a tiny randomly initialised transformer; and its torchtext stand-in.
Where the environment cannot be built the component ends with exit 98 and the component tests skip."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from test_methods_models import ROOT, assert_one_line_stop, run
from model_envs import skip_unless_environment
from test_models_cells import make_split

TINY = {"epochs": 1, "max_steps_per_epoch": 4, "embsize": 16, "nlayers": 1, "nhead": 2, "batch_size": 32,
        "max_cells_per_condition": 20, "n_query_cells": 10, "max_seq_len": 256}


def run_scgpt(split: Path, output: Path, **extra):
    skip_unless_environment("scgpt")
    args = {"input_train": split / "train.h5ad", "input_test": split / "test.h5ad",
            "input_train_cells": split / "train_cells.h5ad", **extra, "output": output}
    code, err = run("src/methods/scgpt", args, output.with_suffix(".log"), cpus=2)
    if code == 98:
        pytest.skip(next(line for line in err.splitlines() if line.startswith("[not installed]")))
    return code, err


@pytest.fixture(scope="module")
def norman(tmp_path_factory):
    directory = tmp_path_factory.mktemp("scgpt")
    split = make_split(directory / "split", "norman19", "unseen_combination")
    output = directory / "prediction.h5ad"
    code, err = run_scgpt(split, output, output_cells=directory / "cells.h5ad", **TINY)
    assert code == 0, err
    return split, output, directory / "cells.h5ad", err


def test_scgpt_random_init_predicts_cells_and_their_mean(norman):
    split, output, cells_path, err = norman
    test = ad.read_h5ad(split / "test.h5ad")
    prediction, cells = ad.read_h5ad(output), ad.read_h5ad(cells_path)
    assert list(prediction.obs_names) == list(test.obs_names)
    assert prediction.uns["pretrained"] is False or prediction.uns["pretrained"] == 0
    assert "randomly initialised weights" in err
    assert (cells.obs["condition_id"].value_counts() == TINY["n_query_cells"]).all()
    X = np.asarray(prediction.X)
    assert np.isfinite(X).all()
    for row, name in enumerate(test.obs_names):
        mean = np.asarray(cells.X[(cells.obs["condition_id"] == name).to_numpy()].mean(axis=0)).ravel()
        np.testing.assert_allclose(X[row], mean, rtol=1e-4, atol=1e-5)
    # the flags differ between conditions, so the predictions do too
    assert len({tuple(np.round(row, 4)) for row in X}) == len(X)
    assert "epoch 1: mean training loss" in err


def test_scgpt_checkpoint_folder_without_its_files_is_one_line(norman, tmp_path):
    split = norman[0]
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    (folder / "args.json").write_text(json.dumps({"embsize": 16}))
    output = tmp_path / "prediction.h5ad"
    code, err = run_scgpt(split, output, pretrained_model=folder, **TINY)
    assert_one_line_stop(code, err, output, 1, "--pretrained_model", "vocab.json")


def test_torchtext_stand_in_has_torchtexts_vocabulary_semantics():
    sys.path.insert(0, str(ROOT / "src/methods/scgpt"))
    try:
        pytest.importorskip("torch")
        from collections import OrderedDict

        from torchtext.vocab import build_vocab_from_iterator, vocab
    finally:
        sys.path.pop(0)
    v = vocab(OrderedDict([("A", 3), ("B", 1), ("C", 2)]), min_freq=2, specials=["<pad>"])
    assert v.get_itos() == ["<pad>", "A", "C"] and v["C"] == 2 and "B" not in v
    with pytest.raises(RuntimeError):
        v["B"]
    v.set_default_index(0)
    assert v["B"] == 0 and v.lookup_indices(["A", "B"]) == [1, 0]
    v.insert_token("Z", 1)
    assert v.get_itos() == ["<pad>", "Z", "A", "C"] and v.get_stoi()["A"] == 2 and v.get_default_index() == 0
    v.append_token("Y")
    assert v.lookup_token(4) == "Y" and len(v) == 5
    with pytest.raises(RuntimeError):
        v.append_token("A")
    built = build_vocab_from_iterator([["x", "y"], ["y"]], specials=["<pad>"])
    assert built.get_itos() == ["<pad>", "y", "x"]
