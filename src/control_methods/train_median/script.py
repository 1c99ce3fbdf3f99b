import sys

## VIASH START
par = {
    "input_train": "resources_test/simulated_grn/unseen_perturbation/train.h5ad",
    "input_test": "resources_test/simulated_grn/unseen_perturbation/test.h5ad",
    "input_solution": "resources_test/simulated_grn/unseen_perturbation/solution.h5ad",
    "output": "prediction.h5ad",
}
meta = {"name": "train_median", "resources_dir": "src/utils", "config": None}
## VIASH END

sys.path.append(meta["resources_dir"])

import numpy as np  # noqa: E402

import baselines  # noqa: E402
from component_io import ComponentIO, log  # noqa: E402

io = ComponentIO(par, meta)
train, test, profiles, contexts, _ = baselines.read_method_inputs(io)

medians, n_fallback = {}, 0
for context in sorted(set(contexts)):
    rows, fell_back = profiles.rows_or_all(context)
    n_fallback += fell_back * sum(1 for c in contexts if c == context)
    medians[context] = np.median(profiles.X[rows], axis=0)
X = np.vstack([medians[c] for c in contexts])
log(f"train_median: {test.n_obs} test conditions from {profiles.n_conditions} training perturbation profiles "
    f"in {len(profiles.contexts)} contexts" + (f"; {n_fallback} rows in contexts without training "
                                               f"perturbations use all contexts" if n_fallback else ""))
io.write("output", baselines.prediction(train, test, X, meta["name"]))
