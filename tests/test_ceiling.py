"""The replicate ceiling stays between train_mean and a true-mean oracle at every signal level
(src/control_methods/replicate_ceiling; the grid of benchmarks/ceiling.py).

On simulated data the truth is known: simulated_grn writes each profile's noise-free expected value and the
`oracle` control predicts it. At three signal levels (`--effect_scale` 1, 0.25, 0) and 20, 60 and 200 cells
per perturbation, on every headline panel metric, the ceiling (its expectation over posterior draws) must lie
between the baseline and the oracle up to the tolerance the README states (benchmarks/ceiling.TOLERANCE);
on the null screen it must equal the baseline exactly, so that nothing can be calibrated there. The old
ceiling (predicting replicate half 1, which the observed profile contains) must be visibly inflated where this
one is not. Everything runs through perturbcast's viash-compatible runner.
"""
from __future__ import annotations

import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import ceiling as grid  # noqa: E402  (benchmarks/ceiling.py)

CONFIGURATIONS = [(signal, cells) for signal in grid.SIGNALS for cells in grid.CELLS]


@pytest.fixture(scope="module")
def runner():
    return grid.Runner()


@pytest.fixture(scope="module", params=CONFIGURATIONS, ids=[f"{s}_{c}_cells" for s, c in CONFIGURATIONS])
def evaluated(request, runner, tmp_path_factory):
    signal, cells = request.param
    work = tmp_path_factory.mktemp(f"ceiling_{signal}_{cells}")
    return signal, cells, work, grid.evaluate(runner, work, grid.SIGNALS[signal], cells, seed=0)


def test_ceiling_lies_between_baseline_and_oracle_on_every_panel_metric(evaluated):
    signal, cells, _, table = evaluated
    assert set(table.index) == set(grid.PANEL_COMPONENTS)
    outside = {m: round(float(r.gap), 4) for m, r in table.iterrows() if not r.within}
    assert outside == {}, f"{signal}, {cells} cells:\n{table.round(4).to_string()}"
    for metric, row in table.iterrows():  # and within the stated distance of the oracle
        assert abs(row.ceiling - row.oracle) <= grid.ceiling_tolerance(metric, row.oracle) + abs(row.oracle - row.baseline)


def test_on_a_null_screen_the_ceiling_is_the_baseline(evaluated):
    signal, _, _, table = evaluated
    if signal != "null":
        pytest.skip("a null-screen property")
    np.testing.assert_allclose(table["ceiling"], table["baseline"], rtol=0, atol=1e-9)


def test_the_old_ceiling_was_inflated_where_this_one_is_not(evaluated, runner):
    """Predicting replicate half 1, which X contains, wins discrimination by construction and inflates the
    Systema correlation; scored on the same split as the oracle, at strong signal."""
    signal, cells, work, table = evaluated
    if (signal, cells) != ("strong", 60):
        pytest.skip("checked on one configuration")
    solution = ad.read_h5ad(work / "solution.h5ad")
    half = ad.AnnData(X=np.asarray(solution.layers["replicate_1"], dtype=np.float32),
                      obs=pd.DataFrame(index=solution.obs_names.copy()), var=pd.DataFrame(index=solution.var_names.copy()),
                      uns={"dataset_id": solution.uns["dataset_id"], "task_id": solution.uns["task_id"],
                           "method_id": "old_ceiling"})
    half.write_h5ad(work / "old_ceiling.h5ad")
    values = {}
    for component in ("discrimination", "systema"):
        output = work / f"old_{component}.h5ad"
        runner(f"metrics/{component}", {"input_solution": work / "solution.h5ad",
                                        "input_prediction": work / "old_ceiling.h5ad", "output": output},
               work / f"old_{component}.log")
        uns = ad.read_h5ad(output).uns
        values.update({str(k): float(v) for k, v in zip(uns["metric_ids"], uns["metric_values"])})
    for metric in ("discrimination_l1", "pearson_delta_perturbed_ref"):
        old_gap = values[metric] - table.loc[metric, "oracle"]
        assert old_gap > 3 * grid.ceiling_tolerance(metric, table.loc[metric, "oracle"]), (metric, values[metric])
        assert abs(table.loc[metric, "gap"]) <= grid.ceiling_tolerance(metric, table.loc[metric, "oracle"])
