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


def compute(data: mu.MetricData) -> mu.Result:
    values = {"discrimination_l1": np.ones(data.n_rows), "discrimination_cosine": np.ones(data.n_rows),
              "mean_rank": np.full(data.n_rows, 0.5)}
    singletons, n_left_out = 0, []
    for context, rows in mu.groups(data.contexts):
        n = len(rows)
        if n == 1:  # nothing to tell apart: discrimination 1 - 0/1 = 1.0, mean_rank 0.5 (its chance level)
            singletons += 1
            continue
        genes = mu.context_genes(data.keep, rows)  # targets of none of the context's test conditions
        n_left_out.append(int((~genes).sum()))
        ranks = mu.context_ranks(data, context, rows, np.flatnonzero(genes), kinds=("l1", "cosine"))
        # cell-eval discrimination: distances from predicted delta p to every observed delta q of the context
        values["discrimination_l1"][rows] = 1.0 - ranks["l1"] / n
        values["discrimination_cosine"][rows] = 1.0 - ranks["cosine"] / n
        # PerturBench rank: cosine distances from observed delta p to every predicted delta p'
        values["mean_rank"][rows] = ranks["cosine_observed"] / (n - 1)
    return mu.Result(values, uns={"n_single_condition_contexts": singletons},
                     log=f"{int(data.contexts.max()) + 1} contexts; target genes left out per context: {n_left_out}; "
                         f"{singletons} contexts with a single test condition (discrimination 1.0, mean_rank 0.5)")


mu.run(par, meta, compute, "discrimination")  # one-line error if the files do not conform or do not match
