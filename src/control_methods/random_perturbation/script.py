import sys

## VIASH START
par = {
    "input_train": "resources_test/simulated_grn/unseen_perturbation/train.h5ad",
    "input_test": "resources_test/simulated_grn/unseen_perturbation/test.h5ad",
    "input_solution": "resources_test/simulated_grn/unseen_perturbation/solution.h5ad",
    "output": "prediction.h5ad",
    "seed": 0,
}
meta = {"name": "random_perturbation", "resources_dir": "src/utils", "config": None}
## VIASH END

sys.path.append(meta["resources_dir"])

import numpy as np  # noqa: E402

import baselines  # noqa: E402
from component_io import ComponentIO, log, number_argument  # noqa: E402

seed = number_argument(par, "seed", 0, int, low=0)
io = ComponentIO(par, meta)
train, test, profiles, contexts, _ = baselines.read_method_inputs(io)

rng = np.random.default_rng(seed)
drawn, n_fallback = np.empty(test.n_obs, dtype=np.int64), 0
for i, context in enumerate(contexts):
    rows, fell_back = profiles.rows_or_all(context)
    n_fallback += fell_back
    drawn[i] = rows[rng.integers(len(rows))]
X = profiles.X[drawn]
log(f"random_perturbation: {test.n_obs} test conditions, each the profile of a random one of "
    f"{profiles.n_conditions} training perturbation profiles of its context (seed {seed})"
    + (f"; {n_fallback} rows drew from all contexts" if n_fallback else ""))
io.write("output", baselines.prediction(train, test, X, meta["name"]))
