import sys

## VIASH START
par = {
    "input": "resources_test/simulated_grn/common_dataset.h5ad",
    "output_train": "output/unseen_combination/train.h5ad",
    "output_test": "output/unseen_combination/test.h5ad",
    "output_solution": "output/unseen_combination/solution.h5ad",
    "seed": 0,
    "test_size": 0.25,
}
meta = {"name": "unseen_combination", "resources_dir": "src/utils", "config": None}
## VIASH END

sys.path.append(meta["resources_dir"])

import splits  # noqa: E402
from component_io import ComponentIO, fail, log, not_applicable  # noqa: E402

TASK_ID = "unseen_combination"

io = ComponentIO(par, meta)
common = io.read("input", required_obs=splits.REQUIRED_OBS)

seed, test_size = splits.split_arguments(par, fail)

try:
    is_test, stratum, exclude, info = splits.combination_split(common.obs, test_size, seed)
    train, test, solution = splits.build_split(
        common, is_test, stratum, task_id=TASK_ID, seed=seed, exclude=exclude,
        extra_solution_uns={"held_out_singles": info["held_out_singles"]})
except splits.SplitInputError as error:
    fail(f"--input file '{par['input']}': {error}")
except splits.SplitNotApplicable as error:
    not_applicable(str(error))

log(f"{TASK_ID}: {info['n_combinations']} combinations; withheld {len(info['held_out_singles'])} of "
    f"{info['n_single_candidates']} singles whose gene is in a combination ({int(exclude.sum())} profiles); "
    f"train {train.n_obs} profiles; test {test.n_obs} conditions ({splits.stratum_counts(test)})")
io.write_all({"output_train": train, "output_test": test, "output_solution": solution})
