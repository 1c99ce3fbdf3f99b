import sys

## VIASH START
par = {
    "input": "resources_test/simulated_grn/common_dataset.h5ad",
    "output_train": "output/cell_type_transfer/train.h5ad",
    "output_test": "output/cell_type_transfer/test.h5ad",
    "output_solution": "output/cell_type_transfer/solution.h5ad",
    "seed": 0,
    "n_folds": 5,
    "fold": 0,
    "input_cells": None,
    "output_train_cells": None,
    "output_solution_cells": None,
    "heldout_context": None,
}
meta = {"name": "cell_type_transfer", "resources_dir": "src/utils", "config": None}
## VIASH END

sys.path.append(meta["resources_dir"])

import cell_files  # noqa: E402
import partitions  # noqa: E402
import splits  # noqa: E402
from component_io import ComponentIO, fail, log, not_applicable  # noqa: E402

TASK_ID = "cell_type_transfer"

io = ComponentIO(par, meta)
common = io.read("input", required_obs=splits.REQUIRED_OBS)

seed, n_folds, fold = splits.split_arguments(par, fail)
assignment = {}  # where each profile went, for the cells files

try:
    is_test, stratum, exclude, info = partitions.transfer_fold(common.obs, n_folds, fold, seed,
                                                               par.get("heldout_context"))
    # a partition restricted to one context says so in test and solution, so that check_partition knows
    partition = {"n_partition_conditions": info["n_partition_conditions"]}
    if "heldout_context" in info:
        partition["heldout_context"] = info["heldout_context"]
    train, test, solution = splits.build_split(
        common, is_test, stratum, task_id=TASK_ID, seed=seed, n_folds=n_folds, fold=fold, assignment=assignment, extra_uns=partition,
        extra_solution_uns={"heldout_contexts": list(info["heldout_contexts"])})
except splits.SplitInputError as error:
    fail(str(error) if str(error).startswith("--heldout_context") else f"--input file '{par['input']}': {error}")
except splits.SplitNotApplicable as error:
    not_applicable(str(error))

log(f"{TASK_ID}: fold {fold} of {n_folds} (seed {seed}) holds out {test.n_obs} of {info['n_units']} "
    f"(context, perturbation) units ({info['n_eligible']} perturbations measured in 2+ of "
    f"{len(info['contexts'])} contexts) in {', '.join(info['heldout_contexts'])}; train {train.n_obs} profiles")
cell_files.write_task_cells(par, common, assignment, train.uns, fail, log)
io.write_all({"output_train": train, "output_test": test, "output_solution": solution})
