import sys

## VIASH START
par = {
    "input_solution": "resources_test/simulated_grn/unseen_perturbation/solution.h5ad",
    "input_prediction": "resources_test/simulated_grn/unseen_perturbation/prediction.h5ad",
    "input_prediction_cells": "resources_test/simulated_grn/unseen_perturbation/prediction_cells.h5ad",
    "input_solution_cells": "resources_test/simulated_grn/unseen_perturbation/solution_cells.h5ad",
    "input_train_cells": "resources_test/simulated_grn/unseen_perturbation/train_cells.h5ad",
    "output": "score.h5ad",
    "max_cells": 500,
    "seed": 0,
}
meta = {"name": "distribution_distance", "resources_dir": "src/utils", "config": None}
## VIASH END

sys.path.append(meta["resources_dir"])

import numpy as np  # noqa: E402

import cell_distances as cd  # noqa: E402
import metric_utils as mu  # noqa: E402
from component_io import fail, log, not_applicable, number_argument  # noqa: E402

max_cells = number_argument(par, "max_cells", cd.MAX_CELLS, int, low=2)
seed = number_argument(par, "seed", 0, int, low=0)
data = mu.read_inputs(par, meta).draw(0)  # profiles (one-line error if they do not conform or match); cells below
io = data.io
if not par.get("input_prediction_cells"):
    not_applicable("the prediction has no cells (the method wrote no --output_cells)")
missing = [f"--{name}" for name in ("input_solution_cells", "input_train_cells") if not par.get(name)]
if missing:
    not_applicable(f"the split has no cells ({' and '.join(missing)} not given)")

# every cells file stays on disk (formats.LazyAnnData, checked block by block): a condition's cells are read
# when it is scored, so memory holds one condition's cells, not a genome-scale screen's
predicted = io.read("input_prediction_cells", lazy=True)
if predicted.n_obs == 0:
    not_applicable(f"the prediction has no cells ('{par['input_prediction_cells']}' holds 0 cells)")
observed = io.read("input_solution_cells", lazy=True)
train_cells = io.read("input_train_cells", lazy=True)
solution = data.solution
for argument, adata in (("input_prediction_cells", predicted), ("input_solution_cells", observed),
                        ("input_train_cells", train_cells)):
    for key in ("dataset_id", "task_id"):
        if key in adata.uns and str(adata.uns[key]) != str(solution.uns[key]):
            fail(f"--{argument} file '{par[argument]}': uns['{key}'] is {adata.uns[key]!r} but the solution's is "
                 f"{solution.uns[key]!r}; expected cells of the same split")
conditions = list(solution.obs_names.astype(str))


def groups_of(adata, argument: str) -> dict:
    """condition_id -> row indices; one-line error for unknown or missing test conditions."""
    labels = adata.obs["condition_id"].astype(str).to_numpy()
    known = set(conditions)
    unknown = sorted(set(labels) - known)
    if unknown:
        fail(f"--{argument} file '{par[argument]}': obs['condition_id'] holds {len(unknown)} values that are no test "
             f"condition (e.g. {unknown[0]!r}); expected obs names of the solution")
    order = np.argsort(labels, kind="stable")
    names, starts = np.unique(labels[order], return_index=True)
    groups = dict(zip(names, np.split(order, starts[1:])))
    absent = [c for c in conditions if c not in groups]
    if absent:
        fail(f"--{argument} file '{par[argument]}': no cell for {len(absent)} test conditions (e.g. {absent[0]!r}); "
             "expected at least one cell per test condition")
    return groups


def halves_of(adata, argument: str, required: bool) -> np.ndarray:
    """obs['replicate_half'] as integers (0 = no half); one-line error for values other than 1 and 2."""
    if "replicate_half" not in adata.obs.columns:
        if required:
            fail(f"--{argument} file '{par[argument]}': obs['replicate_half'] is missing (expected 1 or 2 per cell)")
        return np.zeros(adata.n_obs, dtype=np.int64)
    halves = adata.obs["replicate_half"].to_numpy()
    wrong = ~np.isin(halves, (1, 2))
    if wrong.any():
        fail(f"--{argument} file '{par[argument]}': obs['replicate_half'] holds {halves[wrong][0]!r} in "
             f"{int(wrong.sum())} cells; expected 1 or 2")
    return halves.astype(np.int64)


predicted_groups = groups_of(predicted, "input_prediction_cells")
observed_groups = groups_of(observed, "input_solution_cells")
predicted_halves = halves_of(predicted, "input_prediction_cells", required=False)
observed_halves = halves_of(observed, "input_solution_cells", required=True)

try:
    pca, bandwidth = cd.training_axes(train_cells, seed)  # the same for every prediction of the fold
except ValueError as error:
    fail(f"--input_train_cells file '{par['input_train_cells']}': {error}")

energy = np.zeros(len(conditions))
mmd = np.zeros(len(conditions))
fallback = []
for i, name in enumerate(conditions):
    drop = np.flatnonzero(~data.keep[i])  # the condition's own target genes
    obs_rows = observed_groups[name]
    parts_e, parts_m, weights = [], [], []
    for half in np.unique(predicted_halves[predicted_groups[name]]):
        rows = predicted_groups[name][predicted_halves[predicted_groups[name]] == half]
        reference = obs_rows
        if half in (1, 2):
            other = obs_rows[observed_halves[obs_rows] != half]
            if len(other):
                reference = other
            else:
                fallback.append(name)
        # one key for both sides: a prediction that is the observed set itself draws the very same cells
        rows = rows[cd.subsample(len(rows), max_cells, seed, f"{name}|{half}")]
        reference = reference[cd.subsample(len(reference), max_cells, seed, f"{name}|{half}")]
        Zp = pca.project(predicted.rows(rows), drop)
        Zo, within_observed = cd.projected_set(pca, observed, reference, drop, bandwidth)
        energy_part, mmd_part = cd.set_distances(Zp, Zo, bandwidth, within_observed)
        parts_e.append(energy_part)
        parts_m.append(mmd_part)
        weights.append(float((predicted_halves[predicted_groups[name]] == half).sum()))
    energy[i] = np.average(parts_e, weights=weights)
    mmd[i] = np.average(parts_m, weights=weights)

n_halves = int((predicted_halves > 0).sum())
mu.write_score(
    data, {"energy_distance": energy, "mmd2_rbf": mmd},
    uns={"n_half_fallback_conditions": len(set(fallback)), "pca_components": int(pca.components.shape[1]),
         "rbf_bandwidth": float(bandwidth), "max_cells": int(max_cells)},
    log_line=f"distribution_distance: {len(conditions)} conditions, {predicted.n_obs} predicted cells "
             f"({n_halves} marked with a replicate half), {observed.n_obs} observed cells; PCA of "
             f"{min(train_cells.n_obs, cd.MAX_PCA_CELLS)} of {train_cells.n_obs} training cells, "
             f"{pca.components.shape[1]} axes ({pca.explained.sum():.3g} variance), RBF bandwidth {bandwidth:.4g}; "
             f"at most {max_cells} cells per set; parts scored against all observed cells because the other "
             f"half has none: {len(set(fallback))} conditions")
