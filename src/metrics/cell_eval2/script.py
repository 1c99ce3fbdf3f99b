import sys

## VIASH START
par = {
    "input_solution": "resources_test/simulated_grn/unseen_perturbation/solution.h5ad",
    "input_prediction": "resources_test/simulated_grn/unseen_perturbation/prediction.h5ad",
    "input_prediction_cells": "resources_test/simulated_grn/unseen_perturbation/prediction_cells.h5ad",
    "input_solution_cells": "resources_test/simulated_grn/unseen_perturbation/solution_cells.h5ad",
    "input_train_cells": "resources_test/simulated_grn/unseen_perturbation/train_cells.h5ad",
    "output": "score.h5ad",
    "profile": "vcc2026",
}
meta = {"name": "cell_eval2", "resources_dir": "src/utils", "config": None}
## VIASH END

sys.path.append(meta["resources_dir"])

import logging  # noqa: E402
import os  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from component_io import ComponentIO, fail, log, not_applicable  # noqa: E402
from cell_eval2_fill import UNDEFINED_VALUE, agreement_fill  # noqa: E402
from vocabulary import NOT_INSTALLED_EXIT_CODE  # noqa: E402

CONTROL = "non-targeting"  # cell-eval2's control label; never a condition's obs name (those hold `|`)
PREFIX = "cell_eval2_"
PROFILES = ("vcc2026", "anndata", "de", "minimal", "full", "vcc", "pds")

if sys.version_info < (3, 11):  # cell-eval2 requires Python >= 3.11 (the runner checks this first)
    fail(f"cell-eval2 needs Python >= 3.11; this is {sys.version.split()[0]}", exit_code=NOT_INSTALLED_EXIT_CODE)
profile = str(par.get("profile") or "vcc2026")
if profile not in PROFILES:
    fail(f"--profile is '{profile}'; expected one of {', '.join(PROFILES)}")
if not par.get("input_prediction_cells"):
    not_applicable("the prediction has no cells (the method wrote no --output_cells)")
missing = [f"--{name}" for name in ("input_solution_cells", "input_train_cells") if not par.get(name)]
if missing:
    not_applicable(f"the split has no cells ({' and '.join(missing)} not given)")

io = ComponentIO(par, meta)
solution = io.read("input_solution")
prediction = io.read("input_prediction")
predicted = io.read("input_prediction_cells")
observed = io.read("input_solution_cells")
train_cells = io.read("input_train_cells", lazy=True)  # only the control cells below are read
if predicted.n_obs == 0:
    not_applicable(f"the prediction has no cells ('{par['input_prediction_cells']}' holds 0 cells)")
genes = solution.var_names.astype(str)
for argument, adata in (("input_prediction_cells", predicted), ("input_solution_cells", observed),
                        ("input_train_cells", train_cells)):
    if not np.array_equal(adata.var_names.astype(str), genes):
        fail(f"--{argument} file '{par[argument]}': genes (var_names) differ from the solution's or are in another "
             "order; expected the solution's genes")
    for key in ("dataset_id", "task_id"):
        if key in adata.uns and str(adata.uns[key]) != str(solution.uns[key]):
            fail(f"--{argument} file '{par[argument]}': uns['{key}'] is {adata.uns[key]!r} but the solution's is "
                 f"{solution.uns[key]!r}; expected cells of the same split")
conditions = solution.obs_names.astype(str).to_numpy()
for argument, adata in (("input_prediction_cells", predicted), ("input_solution_cells", observed)):
    if "condition_id" not in adata.obs.columns:
        fail(f"--{argument} file '{par[argument]}': obs['condition_id'] is missing (expected a test obs name per cell)")
    labels = adata.obs["condition_id"].astype(str).to_numpy()
    unknown = np.setdiff1d(labels, conditions)
    if len(unknown):
        fail(f"--{argument} file '{par[argument]}': obs['condition_id'] holds {len(unknown)} values that are no test "
             f"condition (e.g. {unknown[0]!r}); expected obs names of the solution")
    absent = np.setdiff1d(conditions, labels)
    if len(absent):
        fail(f"--{argument} file '{par[argument]}': no cell for {len(absent)} test conditions (e.g. {absent[0]!r}); "
             "expected at least one cell per test condition")
for column in ("is_control", "cell_type", "condition"):
    if column not in train_cells.obs.columns:
        fail(f"--input_train_cells file '{par['input_train_cells']}': obs['{column}'] is missing")
if not np.isfinite(predicted.X.data if sp.issparse(predicted.X) else np.asarray(predicted.X)).all():
    fail(f"--input_prediction_cells file '{par['input_prediction_cells']}': X has NaN or infinite values")


# cell-eval2 refuses negative expression (a log-normalised value is >= 0); a method's predicted cells may
# have some (a linear prediction below the floor): they are set to 0, and counted in the log and in uns
predicted_X = sp.csr_matrix(predicted.X, dtype=np.float32) if sp.issparse(predicted.X) else np.asarray(predicted.X, dtype=np.float32)
negative = predicted_X.data < 0 if sp.issparse(predicted_X) else predicted_X < 0
n_negative = int(np.count_nonzero(negative))
if n_negative:
    if sp.issparse(predicted_X):
        predicted_X.data[negative] = 0
        predicted_X.eliminate_zeros()
    else:
        predicted_X[negative] = 0


def halves_of(adata) -> np.ndarray:
    if "replicate_half" not in adata.obs.columns:
        return np.zeros(adata.n_obs, dtype=np.int64)
    halves = adata.obs["replicate_half"].to_numpy()
    if not np.isin(halves, (1, 2)).all():
        fail(f"obs['replicate_half'] of '{adata.uns.get('_path', 'the cells file')}' holds values other than 1 and 2")
    return halves.astype(np.int64)


import anndata as ad  # noqa: E402
from dataclasses import replace  # noqa: E402

import cell_eval2  # noqa: E402
from cell_eval2 import EvalConfig, compute_metrics  # noqa: E402
from cell_eval2.catalog import CATALOG, PROFILES as CE2_PROFILES  # noqa: E402

logging.getLogger("cell_eval2").setLevel(logging.ERROR)
warnings.filterwarnings("ignore")
members = [m for m in CE2_PROFILES[profile] if CATALOG[m].scoring.scored]
# cell-eval2 derives this member from two per-perturbation diagnostics, as a ratio of their sums
RATIO_PARTS = {"expr_mse_unbiased_capped_norm": ("expr_mse_unbiased_capped", "expr_distance_unbiased")}

counts_available = "counts" in observed.layers and "counts" in train_cells.layers
base = EvalConfig.from_preset("vcc2026" if profile == "vcc2026" else "v2")
config = replace(
    base, metrics=profile if profile != "vcc2026" else base.metrics, pert_col="label", control=CONTROL,
    # the observed side as raw counts when the cells carry them (the preset's input type), else log-normalised;
    # the predicted side is log-normalised (the cells contract) and re-typed by cell-eval2's detection
    input_type="counts" if counts_available else "lognorm", autodetect_input_type=counts_available,
    allow_fractional_counts=False, num_threads=1, gather_threads=1, device="cpu", cache_strict=False,
    de=replace(base.de, backend="pdex"))

solution_context = (solution.obs["cell_type"].astype(str) + "\x1f" + solution.obs["condition"].astype(str)).to_numpy()
train_context = (train_cells.obs["cell_type"].astype(str) + "\x1f" + train_cells.obs["condition"].astype(str)).to_numpy()
is_control = train_cells.obs["is_control"].to_numpy().astype(bool)
targets = {c: [t.strip() for t in str(p).split("+")] for c, p in zip(conditions, solution.obs["perturbation"])}
gene_set = set(genes)
predicted_labels = predicted.obs["condition_id"].astype(str).to_numpy()
observed_labels = observed.obs["condition_id"].astype(str).to_numpy()
predicted_halves, observed_halves = halves_of(predicted), halves_of(observed)
observed_matrix = observed.layers["counts"] if counts_available else observed.X


def cells(matrix, labels) -> ad.AnnData:
    matrix = sp.csr_matrix(matrix, dtype=np.float32) if sp.issparse(matrix) else np.asarray(matrix, dtype=np.float32)
    return ad.AnnData(X=matrix, obs=pd.DataFrame({"label": pd.Categorical(labels)},
                                                 index=[str(i) for i in range(len(labels))]),
                      var=pd.DataFrame(index=pd.Index(genes, dtype=object)))


values = {m: np.full(len(conditions), np.nan) for m in members}  # summed over the runs of each condition
runs = np.zeros(len(conditions))
aggregates = {m: [] for m in members}
row_of = {c: i for i, c in enumerate(conditions)}
for context in pd.unique(solution_context):
    members_of_context = conditions[solution_context == context]
    controls = np.flatnonzero(is_control & (train_context == context))
    if len(controls) == 0:
        fail(f"--input_train_cells file '{par['input_train_cells']}': no control cell (is_control) for the context "
             f"{context.replace(chr(31), ' / ')!r}; cell-eval2 needs the control cells of every context")
    observed_controls = cells(train_cells.rows(controls, "counts" if counts_available else None),
                              [CONTROL] * len(controls))
    predicted_controls = cells(train_cells.rows(controls), [CONTROL] * len(controls))
    # a prediction from one replicate half is scored against the other half's cells
    pairs = [(0, 0)] if not predicted_halves.any() else [(1, 2), (2, 1)]
    for predicted_half, observed_half in pairs:
        chosen_predicted = np.isin(predicted_labels, members_of_context) & (predicted_halves == predicted_half)
        chosen_observed = np.isin(observed_labels, members_of_context) & (
            (observed_halves == observed_half) if observed_half else True)
        if not chosen_predicted.any() or not chosen_observed.any():
            continue
        real = ad.concat([cells(observed_matrix[chosen_observed], observed_labels[chosen_observed]), observed_controls],
                         index_unique="-")
        pred = ad.concat([cells(predicted_X[chosen_predicted], predicted_labels[chosen_predicted]), predicted_controls],
                         index_unique="-")
        gene_map = {c: next((t for t in targets[c] if t in gene_set), None) for c in members_of_context}
        try:
            frame = compute_metrics(pred, real, config=replace(config, target_gene_map=gene_map)).to_pandas()
        except Exception as error:  # cell-eval2 refuses the input: one line naming the context and why
            fail(f"cell-eval2 {cell_eval2.__version__} refused the cells of context "
                 f"{context.replace(chr(31), ' / ')!r}: {type(error).__name__}: {str(error).splitlines()[0]}")
        # dropna=False: a member undefined on every condition of the run keeps its (NaN) column for the fill
        table = frame.pivot_table(index="perturbation", columns="metric", values="value", aggfunc="first",
                                  dropna=False)
        filled = agreement_fill(table)  # per condition; cell-eval2's own aggregates stay on `table`
        for member in members:
            if member in RATIO_PARTS and member not in table.columns:
                # per condition: its numerator over the run's mean denominator, so that the mean over the
                # run's conditions is cell-eval2's ratio of sums (a per-condition ratio of the unbiased,
                # possibly near-zero or negative, denominators would be unstable)
                numerator, denominator = RATIO_PARTS[member]
                both = table[numerator].notna() & table[denominator].notna()
                per = table[numerator][both] / table[denominator][both].mean()
                aggregates[member].append(table[numerator][both].sum() / table[denominator][both].sum())
            elif member in table.columns:
                own = table[member]
                aggregates[member].append(float(np.nanmean(own.to_numpy())) if own.notna().any() else np.nan)
                per = filled[member]
            else:  # cell-eval2 dropped the member for every perturbation (its reference gate admitted none)
                per = pd.Series(dtype=np.float64)
                aggregates[member].append(np.nan)
            for label, value in per.items():
                if label in row_of and np.isfinite(value):
                    row = row_of[label]
                    values[member][row] = value if np.isnan(values[member][row]) else values[member][row] + value
        for label in table.index:
            if label in row_of:
                runs[row_of[label]] += 1

undefined = {}
for member in members:
    defined = np.isfinite(values[member])
    per_condition = np.where(defined, values[member] / np.maximum(runs, 1), np.nan)
    undefined[member] = int((~defined).sum())
    values[member] = np.where(defined, per_condition, UNDEFINED_VALUE.get(member, 0.0))

score = ad.AnnData(
    obs=pd.DataFrame({"stratum": solution.obs["stratum"].astype(str).to_numpy(),
                      **{PREFIX + m: values[m] for m in members}}, index=pd.Index(conditions, dtype=object)),
    uns={"dataset_id": str(prediction.uns["dataset_id"]), "task_id": str(prediction.uns["task_id"]),
         "method_id": str(prediction.uns["method_id"]),
         "metric_ids": [PREFIX + m for m in members],
         "metric_values": [float(values[m].mean()) for m in members],
         "cell_eval2_version": cell_eval2.__version__, "cell_eval2_profile": profile,
         # cell-eval2's own aggregate of each member, averaged over contexts and replicate-half runs
         "cell_eval2_aggregates": [float(np.nanmean(aggregates[m])) if np.isfinite(aggregates[m]).any() else float("nan")
                                   for m in members],
         "n_conditions_without_value": [undefined[m] for m in members],
         "n_negative_predicted_values_set_to_0": n_negative,
         **{k: solution.uns[k] for k in ("split_seed", "fold", "n_folds") if k in solution.uns}})
log(f"cell_eval2 {cell_eval2.__version__}, profile {profile}: {len(conditions)} conditions in "
    f"{len(pd.unique(solution_context))} context(s), observed cells as {'counts' if counts_available else 'lognorm'}"
    + (f"; {n_negative} negative predicted values ({n_negative / max(1, predicted.n_obs * predicted.n_vars):.2%}) "
       "set to 0 (cell-eval2 refuses negative expression)" if n_negative else "") + "; "
    + "; ".join(f"{m}: {undefined[m]} condition(s) without a value scored {UNDEFINED_VALUE.get(m, 0.0)}"
                for m in members if undefined[m]))
io.write("output", score)
