import sys

## VIASH START
par = {
    "input": "resources_test/simulated_grn/common_dataset.h5ad",
    "output_train": "output/cell_type_transfer/train.h5ad",
    "output_test": "output/cell_type_transfer/test.h5ad",
    "output_solution": "output/cell_type_transfer/solution.h5ad",
    "seed": 0,
    "test_size": 0.25,
    "heldout_context": None,
}
meta = {"name": "cell_type_transfer", "resources_dir": "src/utils", "config": None}
## VIASH END

sys.path.append(meta["resources_dir"])

import splits  # noqa: E402
from component_io import ComponentIO, fail, log, not_applicable  # noqa: E402

TASK_ID = "cell_type_transfer"

io = ComponentIO(par, meta)
common = io.read("input", required_obs=splits.REQUIRED_OBS)

seed, test_size = splits.split_arguments(par, fail)

try:
    is_test, stratum, info = splits.transfer_split(common.obs, test_size, seed, par.get("heldout_context"))
    train, test, solution = splits.build_split(
        common, is_test, stratum, task_id=TASK_ID, seed=seed,
        extra_solution_uns={"heldout_context": info["heldout_context"]})
except splits.SplitInputError as error:
    fail(str(error) if str(error).startswith("--heldout_context") else f"--input file '{par['input']}': {error}")
except splits.SplitNotApplicable as error:
    not_applicable(str(error))

log(f"{TASK_ID}: held-out context '{info['heldout_context']}' of {len(info['contexts'])}; held out "
    f"{test.n_obs} of its {info['n_context_perturbations']} perturbations ({info['n_eligible']} measured "
    f"elsewhere); train {train.n_obs} profiles")
io.write_all({"output_train": train, "output_test": test, "output_solution": solution})
