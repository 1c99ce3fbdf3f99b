import sys

## VIASH START
par = {
    "input_train": "resources_test/simulated_grn/unseen_perturbation/train.h5ad",
    "input_test": "resources_test/simulated_grn/unseen_perturbation/test.h5ad",
    "input_solution": "resources_test/simulated_grn/unseen_perturbation/solution.h5ad",
    "output": "prediction.h5ad",
}
meta = {"name": "oracle", "resources_dir": "src/utils", "config": None}
## VIASH END

sys.path.append(meta["resources_dir"])

import baselines  # noqa: E402
import deltas  # noqa: E402
from component_io import ComponentIO, log, not_applicable  # noqa: E402

io = ComponentIO(par, meta)
train, test, solution = baselines.read_control_inputs(io)  # rows and genes aligned (comp_control_method.yaml)
if "expected" not in solution.layers:
    not_applicable("the solution has no layers['expected'] (the noise-free truth exists for simulated data only)")

log(f"oracle: predicting the noise-free expected profiles of {test.n_obs} test conditions")
io.write("output", baselines.prediction(train, test, deltas.as_dense(solution.layers["expected"]), meta["name"]))
