"""Priors as a benchmark axis (issue 25), the engine's side: the variant ids, the `prior_id` column, the paired
effect of a prior on a method (hand-computed), the selection options, and a run where the prior does not apply."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from perturbcast import engine, prior_effects, scoring
from perturbcast.layout import vocabulary

from conftest import ROOT


def test_a_variant_id_names_the_method_and_its_prior():
    assert vocabulary.method_variant("linear_baseline", "go_embedding") == "linear_baseline+go_embedding"
    assert vocabulary.method_variant("linear_baseline", None) == "linear_baseline"
    assert vocabulary.method_variant("linear_baseline", vocabulary.NO_PRIOR) == "linear_baseline"
    assert vocabulary.method_and_prior("linear_baseline+go_embedding") == ("linear_baseline", "go_embedding")
    assert vocabulary.method_and_prior("train_mean") == ("train_mean", "none")
    assert vocabulary.prior_id_of("my prior+v2/x") == "my_prior_v2_x"
    table = scoring.with_prior_id(pd.DataFrame({"method_id": ["a", "a+p"], "value": [1.0, 2.0]}))
    assert list(table.columns) == ["method_id", "prior_id", "value"]
    assert list(table["prior_id"]) == ["none", "p"]


def _rows(method, metric, values, seed=0, fallback=False):
    return [{"dataset_id": "d", "task_id": "t", "seed": seed, "fold": 0, "method_id": method, "metric_id": metric,
             "condition": c, "stratum": "single", "value": v, "fallback": fallback} for c, v in values.items()]


def test_prior_effect_is_the_paired_difference_oriented_by_the_metric():
    rows = (_rows("m", "pearson_delta", {"A": 0.1, "B": 0.2, "C": 0.3}, fallback=True)
            + _rows("m+p", "pearson_delta", {"A": 0.3, "B": 0.4, "C": 0.5})
            # a second partition tests A again: A's values are averaged over partitions before pairing
            + _rows("m", "pearson_delta", {"A": 0.1}, seed=1, fallback=True)
            + _rows("m+p", "pearson_delta", {"A": 0.5}, seed=1)
            # smaller is better: the prior's larger error is a negative (hurting) difference
            + _rows("m", "mse_delta", {"A": 1.0, "B": 1.0, "C": 1.0}, fallback=True)
            + _rows("m+p", "mse_delta", {"A": 2.0, "B": 3.0, "C": 4.0})
            # differences of both signs: no clear effect
            + _rows("m", "discrimination_l1", {"A": 0.5, "B": 0.5, "C": 0.5}, fallback=True)
            + _rows("m+p", "discrimination_l1", {"A": 0.9, "B": 0.1, "C": 0.5})
            + _rows("train_mean", "pearson_delta", {"A": 0.0, "B": 0.0, "C": 0.0}))
    effects = prior_effects.prior_effects(pd.DataFrame(rows), {"pearson_delta": True, "mse_delta": False,
                                                               "discrimination_l1": True})
    by_metric = effects.set_index("metric_id")
    assert set(effects["variant_id"]) == {"m+p"} and set(effects["prior_id"]) == {"p"}
    pearson = by_metric.loc["pearson_delta"]
    # A: 0.4 - 0.1 = 0.3 (partitions averaged), B and C: 0.2 -> mean 0.7 / 3
    assert pearson["difference"] == pytest.approx(0.7 / 3)
    assert pearson["n_conditions"] == 3 and pearson["effect"] == prior_effects.HELPS
    assert pearson["difference_low"] == pytest.approx(0.2) and pearson["difference_high"] == pytest.approx(0.3)
    assert pearson["method_value"] == pytest.approx(0.2) and pearson["variant_value"] == pytest.approx(1.3 / 3)
    mse = by_metric.loc["mse_delta"]
    assert mse["difference"] == pytest.approx(-2.0) and mse["effect"] == prior_effects.HURTS
    assert mse["difference_high"] < 0
    discrimination = by_metric.loc["discrimination_l1"]
    assert discrimination["difference"] == pytest.approx(0.0)
    assert discrimination["difference_low"] < 0 < discrimination["difference_high"]
    assert discrimination["effect"] == prior_effects.UNCLEAR
    assert pearson["method_fallback_share"] == 1.0 and pearson["variant_fallback_share"] == 0.0
    text = prior_effects.text(effects)
    assert "d / t / m+p (n = 3, fb 100% -> 0%)" in text and "pearson_delta +0.233 [+0.200, +0.300] helps" in text
    assert all(len(line) <= 120 for line in text.splitlines())


def test_no_variant_no_effects():
    rows = _rows("m", "pearson_delta", {"A": 0.1}) + _rows("train_mean", "pearson_delta", {"A": 0.0})
    assert prior_effects.prior_effects(pd.DataFrame(rows), {"pearson_delta": True}).empty
    assert prior_effects.text(prior_effects.prior_effects(pd.DataFrame(rows), {"pearson_delta": True})) == ""


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "perturbcast", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def test_priors_are_chosen_by_option_or_spec_and_an_unknown_one_is_one_line(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"datasets": ["simulated_grn_small"], "tasks": ["unseen_perturbation"],
                                    "methods": ["linear_baseline"], "metrics": ["delta_error"],
                                    "priors": ["go_embedding"], "n_folds": 2}))
    plan = json.loads(_cli("plan", "--json", "--spec", spec).stdout)
    assert plan["selection"]["priors"] == ["go_embedding"]
    ids = {s["id"] for s in plan["steps"]}
    assert "prior/simulated_grn_small/go_embedding" in ids
    assert "predict/simulated_grn_small/unseen_perturbation/seed_0/fold_1/linear_baseline+go_embedding" in ids
    # the command line overrides the spec's key
    plan = json.loads(_cli("plan", "--json", "--spec", spec, "--priors", "go_embedding,go_embedding").stdout)
    assert sum(s["stage"] == "prior" for s in plan["steps"]) == 1
    bad = _cli("plan", "--spec", spec, "--priors", "go_embeding")
    assert bad.returncode != 0
    errors = [line for line in bad.stderr.splitlines() if "[error]" in line or "Traceback" in line]
    assert len(errors) == 1 and "go_embeding" in errors[0] and "go_embedding" in errors[0], bad.stderr
    # a prior no selected method reads is not made
    plan = json.loads(_cli("plan", "--json", "--spec", spec, "--methods", "train_mean").stdout)
    assert not any(s["stage"] == "prior" for s in plan["steps"])
    # a prior the benchmark cannot give its required file: refused before anything runs
    selection = engine.Selection(datasets=["simulated_grn_small"], methods=["linear_baseline"], priors=["prior_file"])
    with pytest.raises(ValueError, match="prior_file needs --input"):
        engine.plan(ROOT, tmp_path / "out", selection)


def test_a_prior_that_does_not_apply_leaves_its_variants_not_applicable(tmp_path):
    """go_embedding on simulated genes (no GO annotation: not applicable, exit 99): the variant is not applicable,
    not failed, and the method alone is scored as before; a run without a variant has an empty effects table."""
    out = tmp_path / "out"
    run = _cli("benchmark", "--datasets", "simulated_grn_small", "--tasks", "unseen_perturbation", "--methods",
               "linear_baseline", "--metrics", "delta_error", "--priors", "go_embedding", "--folds", "0",
               "--output", out)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    trace = pd.read_csv(out / "trace.tsv", sep="\t")
    status = dict(zip(trace["step"], trace["status"]))
    assert status["prior/simulated_grn_small/go_embedding"] == "not_applicable"
    variant = "predict/simulated_grn_small/unseen_perturbation/seed_0/fold_0/linear_baseline+go_embedding"
    assert status[variant] == "not_applicable"
    assert status["predict/simulated_grn_small/unseen_perturbation/seed_0/fold_0/linear_baseline"] == "ok"
    results = pd.read_parquet(out / "results.parquet")
    assert set(results["prior_id"]) == {"none"}
    assert pd.read_parquet(out / "prior_effects.parquet").empty
    assert np.isfinite(results.loc[results["method_id"] == "linear_baseline", "value"]).all()


def test_a_slice_the_verdicts_do_not_rank_gets_no_call():
    """The same clear difference on an unranked slice (no scale, or no reproducible effect): the difference and
    its interval are kept, the call is 'not ranked' (a null screen ranks nothing, priors included)."""
    rows = (_rows("m", "mse_delta", {"A": 1.0, "B": 1.0, "C": 1.0})
            + _rows("m+p", "mse_delta", {"A": 2.0, "B": 3.0, "C": 4.0}))
    effects = prior_effects.prior_effects(pd.DataFrame(rows), {"mse_delta": False}, unranked={("d", "t")})
    row = effects.iloc[0]
    assert row["effect"] == prior_effects.NOT_RANKED and row["difference"] == pytest.approx(-2.0)
    assert row["difference_high"] < 0
    text = prior_effects.text(effects)
    assert "(n = 3, not ranked, fb" in text and "hurts" not in text
