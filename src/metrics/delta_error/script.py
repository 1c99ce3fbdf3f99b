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

data = mu.read_inputs(par, meta)  # one-line error if the files do not conform or do not match
keep = data.keep

errors = deltas.masked_errors(data.predicted, data.observed, keep)
pearson, undefined = deltas.masked_rowwise_pearson(data.predicted, data.observed, keep, atol=data.resolution)

values = {"mse_delta": errors["mse"], "mae_delta": errors["mae"], "rmse_delta": errors["rmse"],
          "pearson_delta": pearson}
magnitude = np.abs(data.observed)
for k in TOP_K:
    # the k non-target genes with the largest observed |delta| (all of them when fewer than k)
    top = mu.top_k_mask(magnitude, keep, k)
    values[f"mse_top{k}_de"] = deltas.masked_errors(data.predicted, data.observed, top)["mse"]
short = {k: int((keep.sum(axis=1) < k).sum()) for k in TOP_K}

mu.write_score(
    data, values, uns={"n_pearson_undefined": int(undefined.sum())},
    log_line=f"delta_error: {data.n_rows} conditions x {data.truth.shape[1]} genes, {int((~keep).sum())} target "
             f"entries excluded; pearson_delta undefined (constant delta, scored 0.0) for {int(undefined.sum())} "
             f"conditions; conditions with fewer non-target genes than k (top-k uses them all): {short}")
