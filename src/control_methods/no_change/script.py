import sys

## VIASH START
par = {
    "input_train": "resources_test/simulated_grn/unseen_perturbation/train.h5ad",
    "input_test": "resources_test/simulated_grn/unseen_perturbation/test.h5ad",
    "input_solution": "resources_test/simulated_grn/unseen_perturbation/solution.h5ad",
    "output": "prediction.h5ad",
}
meta = {"name": "no_change", "resources_dir": "src/utils", "config": None}
## VIASH END

sys.path.append(meta["resources_dir"])

import numpy as np  # noqa: E402

import baselines  # noqa: E402
import cell_distances as cd  # noqa: E402
from component_io import ComponentIO, log  # noqa: E402

io = ComponentIO(par, meta)
train, test, profiles, contexts, _ = baselines.read_method_inputs(io)  # profiles hold each context's control

X = np.vstack([profiles.control_of(c) for c in contexts])
fallback = sorted({c for c in contexts if c not in profiles.controls})
log(f"no_change: {test.n_obs} test conditions predicted as the mean training control profile of their context")
if fallback:
    log(f"no_change: {sum(c in fallback for c in contexts)} test rows in contexts without training controls "
        f"({', '.join('/'.join(c) for c in fallback)}) use the mean of all training controls")
prediction = baselines.prediction(train, test, X, meta["name"])
# predicted cells: (at most cd.MAX_CELLS of) the training control cells of each test row's context, unshifted
cd.write_prediction(io, par, prediction, lambda: cd.prediction_cells(
    *cd.shifted_control_cells(io.read("input_train_cells", lazy=True), test, None)[:2], prediction),
    needs=("input_train_cells",))
