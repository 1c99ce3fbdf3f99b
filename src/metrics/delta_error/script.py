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

import anndata as ad  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import deltas  # noqa: E402
from component_io import ComponentIO, fail, log  # noqa: E402

io = ComponentIO(par, meta)
solution = io.read("input_solution")
prediction = io.read("input_prediction")  # rows and genes must match the solution's, in the same order

for key in ("dataset_id", "task_id"):
    if str(prediction.uns[key]) != str(solution.uns[key]):
        fail(f"--input_prediction file '{par['input_prediction']}': uns['{key}'] is {prediction.uns[key]!r} but "
             f"the solution's is {solution.uns[key]!r}; expected a prediction for the same split")

control = deltas.as_dense(solution.layers["control"])
observed = deltas.as_dense(solution.X) - control
predicted = deltas.as_dense(prediction.X) - control
keep = ~deltas.target_mask(solution.obs["perturbation"], solution.var_names)
empty = np.flatnonzero(keep.sum(axis=1) == 0)
if len(empty):
    fail(f"--input_solution file '{par['input_solution']}': row {solution.obs_names[empty[0]]!r} has no gene "
         "left once its target genes are excluded")

errors = deltas.masked_errors(predicted, observed, keep)
tolerance = deltas.float32_tolerance(solution.X, control, prediction.X)
pearson, undefined = deltas.masked_rowwise_pearson(predicted, observed, keep, atol=tolerance)

values = {"mse_delta": errors["mse"], "mae_delta": errors["mae"], "rmse_delta": errors["rmse"],
          "pearson_delta": pearson}
obs = pd.DataFrame({"stratum": solution.obs["stratum"].astype(str).to_numpy(),
                    **{k: np.asarray(v, dtype=np.float64) for k, v in values.items()}},
                   index=pd.Index(solution.obs_names.astype(str), dtype=object))
if not np.isfinite(obs[list(values)].to_numpy()).all():
    fail("a metric value is not finite (unexpected, since the inputs are finite); nothing written")
log(f"delta_error: {solution.n_obs} conditions x {solution.n_vars} genes, {int((~keep).sum())} target entries "
    f"excluded; pearson_delta undefined (constant delta, scored 0.0) for {int(undefined.sum())} conditions")

score = ad.AnnData(obs=obs, uns={
    "dataset_id": str(prediction.uns["dataset_id"]), "task_id": str(prediction.uns["task_id"]),
    "method_id": str(prediction.uns["method_id"]),
    "metric_ids": list(values), "metric_values": [float(obs[k].mean()) for k in values],
    "n_pearson_undefined": int(undefined.sum()),
})
io.write("output", score)
