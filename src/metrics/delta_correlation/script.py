import sys

## VIASH START
par = {
    "input_solution": "resources_test/simulated_grn/unseen_perturbation/solution.h5ad",
    "input_prediction": "resources_test/simulated_grn/unseen_perturbation/prediction.h5ad",
    "output": "score.h5ad",
}
meta = {"name": "delta_correlation", "resources_dir": "src/utils", "config": None}
## VIASH END

sys.path.append(meta["resources_dir"])

import numpy as np  # noqa: E402

import deltas  # noqa: E402
import metric_utils as mu  # noqa: E402

TOP_K = (20, 100)

data = mu.read_inputs(par, meta)  # one-line error if the files do not conform or do not match
keep, tol = data.keep, data.resolution

spearman, spearman_undefined = mu.masked_rowwise_spearman(data.predicted, data.observed, keep, tol)
cosine, cosine_undefined = mu.masked_rowwise_cosine(data.predicted, data.observed, keep, atol=tol)
values = {"spearman_delta": spearman, "cosine_delta": cosine}
undefined = {"spearman_delta": spearman_undefined, "cosine_delta": cosine_undefined}
magnitude = np.abs(data.observed)
for k in TOP_K:
    # Pearson over the k non-target genes with the largest observed |delta| (all of them when fewer)
    top = mu.top_k_mask(magnitude, keep, k)
    values[f"pearson_top{k}_de"], undefined[f"pearson_top{k}_de"] = deltas.masked_rowwise_pearson(
        data.predicted, data.observed, top, atol=tol)

counts = {k: int(v.sum()) for k, v in undefined.items()}
mu.write_score(
    data, values, uns={f"n_undefined_{k}": v for k, v in counts.items()},
    log_line=f"delta_correlation: {data.n_rows} conditions x {data.truth.shape[1]} genes, "
             f"{int((~keep).sum())} target entries excluded; undefined (constant or zero delta, scored 0.0): {counts}")
