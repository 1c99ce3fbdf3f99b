import sys

## VIASH START
par = {
    "input_solution": "resources_test/simulated_grn/unseen_perturbation/solution.h5ad",
    "input_prediction": "resources_test/simulated_grn/unseen_perturbation/prediction.h5ad",
    "output": "score.h5ad",
}
meta = {"name": "de_agreement", "resources_dir": "src/utils", "config": None}
## VIASH END

sys.path.append(meta["resources_dir"])

import numpy as np  # noqa: E402

import deltas  # noqa: E402
import metric_utils as mu  # noqa: E402

OVERLAP_K = (20, 100, 200)
DIRECTION_K = 100

data = mu.read_inputs(par, meta)  # one-line error if the files do not conform or do not match
keep = data.keep

values = {}
observed_size, predicted_size = np.abs(data.observed), np.abs(data.predicted)
kept_genes = keep.sum(axis=1)
# With no more non-target genes than k, top-k is every gene and any prediction (even no change) scores 1:
# such an overlap says nothing, so it is left out rather than reported as perfect.
undefined = [f"overlap_top{k}_de" for k in OVERLAP_K if (kept_genes <= k).all()]
for k in OVERLAP_K:
    if f"overlap_top{k}_de" in undefined:
        continue
    # expected |top-k observed & top-k predicted| / k under random tie-breaking on both sides
    observed_top, k_row = mu.fractional_top_k(observed_size, keep, k)
    predicted_top, _ = mu.fractional_top_k(predicted_size, keep, k)
    values[f"overlap_top{k}_de"] = (observed_top * predicted_top).sum(axis=1) / k_row

# three-valued signs; |delta| at or below the row's storage resolution is 0 ("no change")
same_sign = (mu.signs(data.predicted, data.resolution) == mu.signs(data.observed, data.resolution)).astype(np.float64)
values["direction_accuracy"] = deltas.masked_mean(same_sign, keep)
top = mu.top_k_mask(observed_size, keep, DIRECTION_K)
values[f"direction_accuracy_top{DIRECTION_K}_de"] = deltas.masked_mean(same_sign, top)

short = {k: int((kept_genes < k).sum()) for k in OVERLAP_K}
mu.write_score(
    data, values, uns={"n_conditions_with_fewer_genes_than_k": [short[k] for k in OVERLAP_K],
                       **({"metrics_not_computed": undefined} if undefined else {})},
    log_line=f"de_agreement: {data.n_rows} conditions x {data.truth.shape[1]} genes, {int((~keep).sum())} target "
             f"entries excluded; conditions with fewer non-target genes than k (k reduced to their number): {short}"
             + (f"; not computed (no condition has more than k non-target genes): {undefined}" if undefined else ""))
