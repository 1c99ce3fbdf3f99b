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


def compute(data: mu.MetricData) -> mu.Result:
    keep = data.keep
    kept_genes = keep.sum(axis=1)
    # With no more non-target genes than k, top-k is every gene and any prediction (even no change) scores
    # 1: such an overlap says nothing, so it is left out rather than reported as perfect.
    undefined = [f"overlap_top{k}_de" for k in OVERLAP_K if (kept_genes <= k).all()]
    ks = [k for k in OVERLAP_K if f"overlap_top{k}_de" not in undefined]
    # expected |top-k observed & top-k predicted| / k under random tie-breaking on both sides
    # (by blocks of rows: the same values without conditions x genes temporaries)
    observed_top = data.shared(("fractional_top_k", tuple(ks)), lambda: mu.blocked_fractional_top_ks(
        np.abs, data.observed, keep, ks, data.observed_thresholds()))
    predicted_top = mu.blocked_fractional_top_ks(np.abs, data.predicted, keep, ks)
    values = {}
    for k in ks:
        (o, k_row), (p, _) = observed_top[k], predicted_top[k]
        values[f"overlap_top{k}_de"] = mu.sparse_row_dot(o, p) / k_row

    # three-valued signs; |delta| at or below the row's storage resolution is 0 ("no change")
    same_sign = mu.same_signs(data.predicted, data.observed, data.resolution)
    values["direction_accuracy"] = deltas.masked_mean(same_sign, keep)
    columns, valid = data.observed_top_k_genes(DIRECTION_K)
    values[f"direction_accuracy_top{DIRECTION_K}_de"] = deltas.masked_mean(
        np.take_along_axis(same_sign, columns, axis=1), valid)

    short = {k: int((kept_genes < k).sum()) for k in OVERLAP_K}
    return mu.Result(
        values, uns={"n_conditions_with_fewer_genes_than_k": [short[k] for k in OVERLAP_K],
                     **({"metrics_not_computed": undefined} if undefined else {})},
        log=f"{int((~keep).sum())} target entries excluded; conditions with fewer non-target genes than k "
            f"(k reduced to their number): {short}"
            + (f"; not computed (no condition has more than k non-target genes): {undefined}" if undefined else ""))


mu.run(par, meta, compute, "de_agreement")  # one-line error if the files do not conform or do not match
