import sys

## VIASH START
par = {
    "input_train": "resources_test/simulated_grn/unseen_perturbation/train.h5ad",
    "input_test": "resources_test/simulated_grn/unseen_perturbation/test.h5ad",
    "input_solution": "resources_test/simulated_grn/unseen_perturbation/solution.h5ad",
    "output": "prediction.h5ad",
}
meta = {"name": "train_mean", "resources_dir": "src/utils", "config": None}
## VIASH END

sys.path.append(meta["resources_dir"])

import numpy as np  # noqa: E402

import baselines  # noqa: E402
import cell_distances as cd  # noqa: E402
from component_io import ComponentIO, log  # noqa: E402

io = ComponentIO(par, meta)
train, test, profiles, contexts, _ = baselines.read_method_inputs(io)

means, fallback = {}, []
for context in sorted(set(contexts)):
    rows, fell_back = profiles.rows_or_all(context)
    if fell_back:
        fallback.append(context)
    means[context] = profiles.X[rows].mean(axis=0)
X = np.vstack([means[c] for c in contexts])
log(f"train_mean: {test.n_obs} test conditions from {profiles.n_conditions} training perturbation profiles "
    f"in {len(profiles.contexts)} contexts")
if fallback:
    log(f"train_mean: {sum(c in fallback for c in contexts)} test rows in contexts without training "
        f"perturbations ({', '.join('/'.join(c) for c in fallback)}) use the mean over all contexts")
prediction = baselines.prediction(train, test, X, meta["name"])
# predicted cells: the context's training control cells shifted by the context's mean training delta
# (the profile prediction minus the mean control profile), so their mean is close to the profile prediction
shifts = {c: means[c] - profiles.control_of(c) for c in means}
cd.write_prediction(io, par, prediction, lambda: cd.prediction_cells(
    *cd.shifted_control_cells(io.read("input_train_cells"), test, shifts)[:2], prediction),
    needs=("input_train_cells",))
