import sys

## VIASH START
par = {
    "input_train": "resources_test/simulated_grn/unseen_perturbation/train.h5ad",
    "input_test": "resources_test/simulated_grn/unseen_perturbation/test.h5ad",
    "input_solution": "resources_test/simulated_grn/unseen_perturbation/solution.h5ad",
    "output": "prediction.h5ad",
}
meta = {"name": "ground_truth", "resources_dir": "src/utils", "config": None}
## VIASH END

sys.path.append(meta["resources_dir"])

import baselines  # noqa: E402
import cell_distances as cd  # noqa: E402
import deltas  # noqa: E402
from component_io import ComponentIO, log  # noqa: E402

io = ComponentIO(par, meta)
train, test, solution = baselines.read_control_inputs(io)  # rows and genes aligned (comp_control_method.yaml)

log(f"ground_truth: predicting the observed profiles of {test.n_obs} test conditions")
prediction = baselines.prediction(train, test, deltas.as_dense(solution.X), meta["name"])
# predicted cells: every observed cell of each test condition (scored against themselves: the floor)
cd.write_prediction(io, par, prediction, lambda: cd.prediction_cells(
    *cd.observed_cells(io.read("input_solution_cells", lazy=True), test, cap=None)[:2], prediction),
    needs=("input_solution_cells",))
