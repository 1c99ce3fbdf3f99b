import sys

## VIASH START
par = {
    "input_solution": "resources_test/simulated_grn/unseen_perturbation/solution.h5ad",
    "input_prediction": "resources_test/simulated_grn/unseen_perturbation/prediction.h5ad",
    "output": "score.h5ad",
}
meta = {"name": "discrimination", "resources_dir": "src/utils", "config": None}
## VIASH END

sys.path.append(meta["resources_dir"])

import numpy as np  # noqa: E402

import metric_utils as mu  # noqa: E402

data = mu.read_inputs(par, meta)  # one-line error if the files do not conform or do not match

values = {"discrimination_l1": np.ones(data.n_rows), "discrimination_cosine": np.ones(data.n_rows),
          "mean_rank": np.full(data.n_rows, 0.5)}
singletons, n_left_out = 0, []
for _, rows in mu.groups(data.contexts):
    n = len(rows)
    if n == 1:  # nothing to tell apart: discrimination 1 - 0/1 = 1.0, mean_rank 0.5 (its chance level)
        singletons += 1
        continue
    genes = mu.context_genes(data.keep, rows)  # targets of none of the context's test conditions
    n_left_out.append(int((~genes).sum()))
    predicted, observed = data.predicted[np.ix_(rows, genes)], data.observed[np.ix_(rows, genes)]
    tol = data.resolution[rows]
    # cell-eval discrimination: distances from predicted delta p to every observed delta q of the context
    for metric in ("l1", "cosine"):
        distances = mu.pairwise_distances(predicted, observed, metric=metric, zero_a=tol, zero_b=tol)
        values[f"discrimination_{metric}"][rows] = 1.0 - mu.diagonal_ranks(distances) / n
    # PerturBench rank: cosine distances from observed delta p to every predicted delta p'
    distances = mu.pairwise_distances(observed, predicted, metric="cosine", zero_a=tol, zero_b=tol)
    values["mean_rank"][rows] = mu.diagonal_ranks(distances) / (n - 1)

mu.write_score(
    data, values, uns={"n_single_condition_contexts": singletons},
    log_line=f"discrimination: {data.n_rows} conditions in {int(data.contexts.max()) + 1} contexts x "
             f"{data.truth.shape[1]} genes; target genes left out per context: {n_left_out}; {singletons} "
             "contexts with a single test condition (discrimination 1.0, mean_rank 0.5)")
