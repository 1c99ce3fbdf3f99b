import sys

## VIASH START
par = {
    "input": "resources_test/simulated_grn/common_dataset.h5ad",
    "output_train": "output/unseen_perturbation/train.h5ad",
    "output_test": "output/unseen_perturbation/test.h5ad",
    "output_solution": "output/unseen_perturbation/solution.h5ad",
    "seed": 0,
    "n_folds": 5,
    "fold": 0,
    "input_cells": None,
    "output_train_cells": None,
    "output_solution_cells": None,
}
meta = {"name": "unseen_perturbation", "resources_dir": "src/utils", "config": None}
## VIASH END

sys.path.append(meta["resources_dir"])

import cell_files  # noqa: E402
import partitions  # noqa: E402
import splits  # noqa: E402
from component_io import ComponentIO, fail, log, not_applicable  # noqa: E402

TASK_ID = "unseen_perturbation"

io = ComponentIO(par, meta)
common = io.read("input", required_obs=splits.REQUIRED_OBS)

seed, n_folds, fold = splits.split_arguments(par, fail)
assignment = {}  # where each profile went, for the cells files

try:
    is_test, stratum, exclude, info = partitions.perturbation_fold(common.obs, n_folds, fold, seed)
    train, test, solution = splits.build_split(
        common, is_test, stratum, task_id=TASK_ID, seed=seed, n_folds=n_folds, fold=fold, assignment=assignment, exclude=exclude,
        extra_uns={"n_partition_conditions": info["n_partition_conditions"]},
        extra_solution_uns={"held_out_targets": list(info["held_out_targets"])})
except splits.SplitInputError as error:
    fail(f"--input file '{par['input']}': {error}")
except splits.SplitNotApplicable as error:
    not_applicable(str(error))

log(f"{TASK_ID}: fold {fold} of {n_folds} (seed {seed}) holds out {len(info['held_out_targets'])} of "
    f"{info['n_genes']} target genes; train {train.n_obs} profiles; test {test.n_obs} of "
    f"{info['n_partition_conditions']} conditions ({splits.stratum_counts(test)}); {info['n_excluded']} "
    f"conditions excluded (tested in another fold)")
cell_files.write_task_cells(par, common, assignment, train.uns, fail, log)
io.write_all({"output_train": train, "output_test": test, "output_solution": solution})
