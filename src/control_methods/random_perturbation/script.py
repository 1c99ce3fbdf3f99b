import sys

## VIASH START
par = {
    "input_train": "resources_test/simulated_grn/unseen_perturbation/train.h5ad",
    "input_test": "resources_test/simulated_grn/unseen_perturbation/test.h5ad",
    "input_solution": "resources_test/simulated_grn/unseen_perturbation/solution.h5ad",
    "output": "prediction.h5ad",
    "seed": 0,
    "n_draws": 100,
}
meta = {"name": "random_perturbation", "resources_dir": "src/utils", "config": None}
## VIASH END

sys.path.append(meta["resources_dir"])

import numpy as np  # noqa: E402

import baselines  # noqa: E402
from component_io import ComponentIO, log, number_argument  # noqa: E402

seed = number_argument(par, "seed", 0, int, low=0)
n_draws = number_argument(par, "n_draws", 100, int, low=1)
io = ComponentIO(par, meta)
train, test, profiles, contexts, _ = baselines.read_method_inputs(io)

rng = np.random.default_rng(seed)
# drawn[k, i]: the training profile that row i gets in draw k, uniform over its context's profiles
drawn, n_fallback = np.empty((n_draws, test.n_obs), dtype=np.int64), 0
for context in dict.fromkeys(contexts):
    members = np.flatnonzero([c == context for c in contexts])
    rows, fell_back = profiles.rows_or_all(context)
    n_fallback += fell_back * len(members)
    drawn[:, members] = rows[rng.integers(len(rows), size=(n_draws, len(members)))]
prediction = baselines.prediction(train, test, profiles.X[drawn[0]], meta["name"])
# every draw is a choice of training profiles: the file keeps the profiles drawn and which one each row got in each
# draw (metric_utils.IndexedDraws), not n_draws prediction matrices (200 MB per fold at 2,000 perturbations)
used, positions = np.unique(drawn, return_inverse=True)
prediction.uns["draw_profiles"] = np.asarray(profiles.X[used], dtype=np.float32)
prediction.uns["draw_rows"] = positions.reshape(drawn.shape).astype(np.int32)
prediction.uns["n_draws"] = n_draws
log(f"random_perturbation: {test.n_obs} test conditions, each the profile of a random one of "
    f"{profiles.n_conditions} training perturbation profiles of its context, {n_draws} independent draws "
    f"(seed {seed}; metrics score the mean over draws; stored as {len(used)} profiles and their indices)"
    + (f"; {n_fallback} rows drew from all contexts" if n_fallback else ""))
io.write("output", prediction)
