import sys

## VIASH START
par = {
    "input": "resources_test/simulated_grn/common_dataset.h5ad",
    "output_train": "output/unseen_perturbation/train.h5ad",
    "output_test": "output/unseen_perturbation/test.h5ad",
    "output_solution": "output/unseen_perturbation/solution.h5ad",
    "seed": 0,
    "test_size": 0.25,
}
meta = {"name": "unseen_perturbation", "resources_dir": "src/utils", "config": None}
## VIASH END

sys.path.append(meta["resources_dir"])

import numpy as np  # noqa: E402

import splits  # noqa: E402
from component_io import ComponentIO, fail, log, not_applicable  # noqa: E402

TASK_ID = "unseen_perturbation"

io = ComponentIO(par, meta)
common = io.read("input", required_obs=splits.REQUIRED_OBS)

seed, test_size = splits.split_arguments(par, fail)

try:
    targets = splits.row_targets(common.obs)
    is_control = common.obs["is_control"].to_numpy().astype(bool)
    genes = splits.target_genes(targets, ~is_control)
    if len(genes) < 2:
        not_applicable(f"dataset has {len(genes)} distinct target gene(s) "
                       f"({', '.join(genes) or 'none'}); holding out unseen genes needs at least 2")
    held_out = splits.choose_held_out(genes, test_size, seed, what="target genes")
    is_test = splits.touches(targets, held_out)
    # A target counts as seen when some training perturbation targets it (GEARS' meaning). That is
    # every gene not held out, except genes whose only perturbations are combinations with a held-out gene.
    seen = set(splits.target_genes(targets, ~is_test & ~is_control))
    stratum = np.array([
        "" if not is_test[i] else "single" if len(t) == 1
        else "combo_seen1" if any(g in seen for g in t) else "combo_seen0"
        for i, t in enumerate(targets)], dtype=object)
    train, test, solution = splits.build_split(
        common, is_test, stratum, task_id=TASK_ID, seed=seed,
        extra_solution_uns={"held_out_targets": list(held_out)})
except splits.SplitInputError as error:
    fail(f"--input file '{par['input']}': {error}")
except splits.SplitNotApplicable as error:
    not_applicable(str(error))

log(f"{TASK_ID}: held out {len(held_out)} of {len(genes)} target genes; train {train.n_obs} profiles; "
    f"test {test.n_obs} conditions ({splits.stratum_counts(test)})")
io.write_all({"output_train": train, "output_test": test, "output_solution": solution})
