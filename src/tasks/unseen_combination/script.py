import sys

## VIASH START
par = {
    "input": "resources_test/simulated_grn/common_dataset.h5ad",
    "output_train": "output/unseen_combination/train.h5ad",
    "output_test": "output/unseen_combination/test.h5ad",
    "output_solution": "output/unseen_combination/solution.h5ad",
    "seed": 0,
    "n_folds": 5,
    "fold": 0,
    "input_cells": None,
    "output_train_cells": None,
    "output_solution_cells": None,
}
meta = {"name": "unseen_combination", "resources_dir": "src/utils", "config": None}
## VIASH END

sys.path.append(meta["resources_dir"])

import cell_files  # noqa: E402
import partitions  # noqa: E402
import splits  # noqa: E402
from component_io import ComponentIO, fail, log, not_applicable  # noqa: E402

TASK_ID = "unseen_combination"

io = ComponentIO(par, meta)
common = io.read("input", required_obs=splits.REQUIRED_OBS)

seed, n_folds, fold = splits.split_arguments(par, fail)
assignment = {}  # where each profile went, for the cells files

try:
    is_test, stratum, exclude, info = partitions.combination_fold(common.obs, n_folds, fold, seed)
    train, test, solution = splits.build_split(
        common, is_test, stratum, task_id=TASK_ID, seed=seed, n_folds=n_folds, fold=fold, assignment=assignment, exclude=exclude,
        extra_uns={"n_partition_conditions": info["n_partition_conditions"]},
        extra_solution_uns={"held_out_singles": list(info["held_out_singles"])})
except splits.SplitInputError as error:
    fail(f"--input file '{par['input']}': {error}")
except splits.SplitNotApplicable as error:
    not_applicable(str(error))

log(f"{TASK_ID}: fold {fold} of {n_folds} (seed {seed}) tests {info['n_tested']} of {info['n_combinations']} "
    f"combinations ({test.n_obs} conditions: {splits.stratum_counts(test)}); withheld singles "
    f"{', '.join(info['held_out_singles']) or 'none'} ({info['n_excluded']} conditions excluded); train "
    f"{train.n_obs} profiles")
cell_files.write_task_cells(par, common, assignment, train.uns, fail, log)
io.write_all({"output_train": train, "output_test": test, "output_solution": solution})
