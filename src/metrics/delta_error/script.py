import sys

## VIASH START
par = {
    "input_solution": "resources_test/simulated_grn/unseen_perturbation/solution.h5ad",
    "input_prediction": "resources_test/simulated_grn/unseen_perturbation/prediction.h5ad",
    "output": "score.h5ad",
}
meta = {"name": "delta_error", "resources_dir": "src/utils", "config": None}
## VIASH END

sys.path.append(meta["resources_dir"])

import numpy as np  # noqa: E402

import deltas  # noqa: E402
import metric_utils as mu  # noqa: E402

TOP_K = (20, 100)


def compute(data: mu.MetricData) -> mu.Result:
    keep = data.keep
    # Errors compare the prediction with the observation directly: a delta error against one common control
    # is exactly this (the control cancels), so no control noise enters it. Against the two independent
    # control parts the correlation metrics use, a prediction made without the training control (train_mean)
    # would carry that control's noise in its delta while `no_change` (a delta of exactly 0) would not, and
    # doing nothing would win on shallow screens (measured on Datlinger: no_change 0.0090 against train_mean's
    # 0.0152 on mse_delta).
    errors = deltas.masked_errors(data.guess, data.truth, keep)
    pearson, undefined = deltas.masked_rowwise_pearson(data.predicted, data.observed, keep, atol=data.resolution)
    values = {"mse_delta": errors["mse"], "mae_delta": errors["mae"], "rmse_delta": errors["rmse"],
              "pearson_delta": pearson}
    for k in TOP_K:
        # the k non-target genes with the largest observed |delta| (all of them when fewer than k)
        columns, valid = data.observed_top_k_genes(k)
        values[f"mse_top{k}_de"] = deltas.masked_errors(np.take_along_axis(data.guess, columns, axis=1),
                                                        np.take_along_axis(data.truth, columns, axis=1), valid)["mse"]
    short = {k: int((keep.sum(axis=1) < k).sum()) for k in TOP_K}
    return mu.Result(values, counts={"n_pearson_undefined": (undefined, "pearson_delta undefined (constant delta, "
                                                                        "scored 0.0)")},
                     log=f"{int((~keep).sum())} target entries excluded; conditions with fewer non-target genes "
                         f"than k (top-k uses them all): {short}")


mu.run(par, meta, compute, "delta_error")  # one-line error if the files do not conform or do not match
