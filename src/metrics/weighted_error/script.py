import sys

## VIASH START
par = {
    "input_solution": "resources_test/simulated_grn/unseen_perturbation/solution.h5ad",
    "input_prediction": "resources_test/simulated_grn/unseen_perturbation/prediction.h5ad",
    "output": "score.h5ad",
}
meta = {"name": "weighted_error", "resources_dir": "src/utils", "config": None}
## VIASH END

sys.path.append(meta["resources_dir"])

import numpy as np  # noqa: E402

import metric_utils as mu  # noqa: E402


def compute(data: mu.MetricData) -> mu.Result:
    # reference: leave-one-out mean of the context's other observed test profiles (gene by gene over the
    # conditions that do not target the gene); the control for a condition alone in its context
    leave_one_out = data.observed_leave_one_out()  # its means by blocks of rows (.rows)
    alone = leave_one_out.sizes == 1
    wmse, spread = np.empty(data.n_rows), np.empty(data.n_rows)
    # blocks of rows (every value is a row's own): the same values as on whole matrices, without a dozen
    # conditions x genes temporaries
    for rows in mu.row_blocks(data.truth):
        reference = np.where(alone[rows, None], data.reference[rows], leave_one_out.rows(rows))
        effect = data.truth[rows] - reference    # observed perturbation-specific effect, Mejia's delta
        weights = mu.deg_weights(effect, data.keep[rows], data.resolution[rows])
        # = that of the deltas to any common reference (the profiles as stored: float64 arithmetic)
        squared_error = np.subtract(data.guess[rows], data.truth[rows], dtype=np.float64) ** 2
        wmse[rows] = mu.row_dot(weights, squared_error)
        centred = effect - mu.row_dot(weights, effect)[:, None]
        spread[rows] = mu.row_dot(weights, centred ** 2)  # weighted variance of the observed effect
    undefined = np.sqrt(spread) <= data.resolution
    with np.errstate(invalid="ignore", divide="ignore"):
        wr2 = np.where(undefined, np.where(np.sqrt(wmse) <= data.resolution, 1.0, 0.0), 1.0 - wmse / spread)
    return mu.Result(
        {"wmse_delta": wmse, "wr2_delta": wr2},
        counts={"n_wr2_undefined": (undefined, "wr2 undefined (constant observed effect)")},
        uns={"n_single_condition_rows": int(alone.sum())},
        log=f"{int((~data.keep).sum())} target entries excluded; {int(alone.sum())} conditions alone in their "
            "context (reference: control)")


mu.run(par, meta, compute, "weighted_error")  # one-line error if the files do not conform or do not match
