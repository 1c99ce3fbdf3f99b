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


def compute(data: mu.MetricData) -> mu.Result:
    keep, tol = data.keep, data.resolution
    spearman, spearman_undefined = mu.masked_rowwise_spearman(data.predicted, data.observed, keep, tol,
                                                              shared=data.shared)
    cosine, cosine_undefined = mu.masked_rowwise_cosine(data.predicted, data.observed, keep, atol=tol)
    values = {"spearman_delta": spearman, "cosine_delta": cosine}
    undefined = {"spearman_delta": spearman_undefined, "cosine_delta": cosine_undefined}
    for k in TOP_K:
        # Pearson over the k non-target genes with the largest observed |delta| (all of them when fewer)
        columns, valid = data.observed_top_k_genes(k)
        values[f"pearson_top{k}_de"], undefined[f"pearson_top{k}_de"] = deltas.masked_rowwise_pearson(
            np.take_along_axis(data.predicted, columns, axis=1), np.take_along_axis(data.observed, columns, axis=1),
            valid, atol=tol)
    return mu.Result(values, counts={f"n_undefined_{m}": (flags, f"{m} undefined (constant or zero delta, scored "
                                                                 "0.0)") for m, flags in undefined.items()},
                     log=f"{int((~keep).sum())} target entries excluded")


mu.run(par, meta, compute, "delta_correlation")  # one-line error if the files do not conform or do not match
