import sys

## VIASH START
par = {
    "input_solution": "resources_test/simulated_grn/unseen_perturbation/solution.h5ad",
    "input_prediction": "resources_test/simulated_grn/unseen_perturbation/prediction.h5ad",
    "output": "score.h5ad",
}
meta = {"name": "systema", "resources_dir": "src/utils", "config": None}
## VIASH END

sys.path.append(meta["resources_dir"])

import numpy as np  # noqa: E402

import deltas  # noqa: E402
import metric_utils as mu  # noqa: E402


def compute(data: mu.MetricData) -> mu.Result:
    keep = data.keep
    # perturbation-specific parts: each side minus its own leave-one-out centroid of the context (the mean
    # of the context's other test conditions, gene by gene over the conditions that do not target the gene)
    observed_centroid = data.observed_leave_one_out()  # means by blocks of rows, as the prediction's
    predicted_centroid = mu.LeaveOneOut(data.guess, data.contexts, keep=keep)
    alone = observed_centroid.sizes == 1
    pearson, undefined = np.empty(data.n_rows), np.empty(data.n_rows, dtype=bool)
    # by blocks of rows (each row's values are its own): no conditions x genes matrix of specific parts
    for rows in mu.row_blocks(keep):
        observed_specific = np.subtract(data.truth[rows], observed_centroid.rows(rows))
        observed_specific[alone[rows]] = 0.0
        predicted_specific = np.subtract(data.guess[rows], predicted_centroid.rows(rows))
        predicted_specific[alone[rows]] = 0.0
        pearson[rows], undefined[rows] = deltas.masked_rowwise_pearson(
            predicted_specific, observed_specific, keep[rows], atol=data.resolution[rows])
    pearson[alone] = 0.0

    accuracy = np.full(data.n_rows, 0.5)
    for context, rows in mu.groups(data.contexts):
        n = len(rows)
        if n == 1:
            continue
        genes = mu.context_genes(keep, rows)  # targets of none of the context's test conditions
        ranks = mu.context_ranks(data, context, rows, np.flatnonzero(genes), kinds=("euclidean",))
        # share of the other conditions whose observed profile is farther from the prediction (ties one half)
        accuracy[rows] = 1.0 - ranks["euclidean"] / (n - 1)
    return mu.Result(
        {"pearson_delta_perturbed_ref": pearson, "centroid_accuracy": accuracy},
        counts={"n_pearson_undefined": (undefined & ~alone, "pearson undefined (constant, scored 0.0; conditions "
                                                            "alone not counted)")},
        uns={"n_single_condition_contexts": int(len(np.unique(data.contexts[alone])))},
        log=f"{int(alone.sum())} conditions alone in their context (pearson 0.0, centroid accuracy 0.5)")


mu.run(par, meta, compute, "systema")  # one-line error if the files do not conform or do not match
