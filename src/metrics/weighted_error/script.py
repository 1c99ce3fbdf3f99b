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

data = mu.read_inputs(par, meta)  # one-line error if the files do not conform or do not match
keep = data.keep

# reference: leave-one-out mean of the context's other observed test profiles (gene by gene over the
# conditions that do not target the gene); the control for a condition alone in its context
reference, sizes = mu.leave_one_out_means(data.truth, data.contexts, keep=keep)
alone = sizes == 1
reference[alone] = data.control[alone]
effect = data.truth - reference              # observed perturbation-specific effect, Mejia's delta
weights = mu.deg_weights(effect, keep, data.resolution)

squared_error = (data.guess - data.truth) ** 2  # = squared error of the deltas to any common reference
wmse = (weights * squared_error).sum(axis=1)
centred = effect - (weights * effect).sum(axis=1, keepdims=True)
spread = (weights * centred ** 2).sum(axis=1)  # weighted variance of the observed effect
undefined = np.sqrt(spread) <= data.resolution
with np.errstate(invalid="ignore", divide="ignore"):
    wr2 = np.where(undefined, np.where(np.sqrt(wmse) <= data.resolution, 1.0, 0.0), 1.0 - wmse / spread)

mu.write_score(
    data, {"wmse_delta": wmse, "wr2_delta": wr2},
    uns={"n_single_condition_rows": int(alone.sum()), "n_wr2_undefined": int(undefined.sum())},
    log_line=f"weighted_error: {data.n_rows} conditions x {data.truth.shape[1]} genes, {int((~keep).sum())} target "
             f"entries excluded; {int(alone.sum())} conditions alone in their context (reference: control); "
             f"wr2 undefined (constant observed effect) for {int(undefined.sum())}")
