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
from component_io import ComponentIO, fail, log  # noqa: E402

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


def shifted_cells():
    """The context's training control cells shifted by its mean training delta, taken from the cells (their
    log space) rather than from the profiles, which may be on another scale (log of summed counts)."""
    train_cells = io.read("input_train_cells", lazy=True)
    try:
        shifts, shift_fallback = cd.mean_cell_shifts(train_cells, sorted(set(contexts)))
    except ValueError as error:
        fail(f"--input_train_cells file '{par['input_train_cells']}': {error}")
    if shift_fallback:
        log(f"train_mean: predicted cells of {len(shift_fallback)} contexts without training cells of a perturbation "
            "are shifted by the mean delta over all contexts")
    return cd.prediction_cells(*cd.shifted_control_cells(train_cells, test, shifts)[:2], prediction)


cd.write_prediction(io, par, prediction, shifted_cells, needs=("input_train_cells",))
