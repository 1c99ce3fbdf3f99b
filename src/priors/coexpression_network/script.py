import sys

## VIASH START
par = {
    "input_train": "resources_test/simulated_grn/unseen_perturbation/train.h5ad",
    "input_test": "resources_test/simulated_grn/unseen_perturbation/test.h5ad",
    "input_train_cells": "resources_test/simulated_grn/unseen_perturbation/train_cells.h5ad",
    "output": "prior.h5ad",
    "regulators": None,
    "n_regulators": 50,
    "n_targets": 20,
}
meta = {"name": "coexpression_network", "resources_dir": "src/utils", "config": None}
## VIASH END

sys.path.append(meta["resources_dir"])

import os  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.sparse as sp  # noqa: E402

import baselines  # noqa: E402
from component_io import ComponentIO, fail, log, number_argument  # noqa: E402

NAME = meta.get("name") or "coexpression_network"
# Rows of the expression matrix processed at once: the per-chunk work is one sparse (or dense) block of this
# many rows plus the regulators x genes accumulator, whatever the number of cells.
CHUNK_ROWS = 2048
# Correlations need enough independent samples: with fewer residual degrees of freedom (samples minus
# contexts, as each context is centred on its own mean) than this, |r| is mostly noise (its null spread is
# about 1/sqrt(dof)), so the control profiles alone are not used.
MIN_DOF = 10
# A gene whose within-context variance is below this share of its mean square is constant (up to rounding of
# the one-pass moments): it gets no edge instead of a correlation made of rounding error.
CONSTANT = 1e-10

n_regulators = number_argument(par, "n_regulators", 50, int, low=0)
n_targets = number_argument(par, "n_targets", 20, int, low=1)

io = ComponentIO(par, meta)
train = io.read("input_train")
test = io.read("input_test", required_obs=("perturbation",))  # only obs['perturbation'] (target names) is used
try:
    baselines.check_genes_match(train, test)
except baselines.InputError as error:
    fail(f"--input_test file '{par['input_test']}': {error}")
genes = pd.Index(train.var_names.astype(str))
position = {g: i for i, g in enumerate(genes)}


def targets_in(adata, argument: str) -> list[str]:
    try:
        return sorted({t for p in adata.obs["perturbation"].astype(str).unique() for t in baselines.targets_of(p)})
    except baselines.InputError as error:
        fail(f"--{argument} file '{par[argument]}': obs['perturbation']: {error}")


train_targets, test_targets = targets_in(train, "input_train"), targets_in(test, "input_test")


# ------------------------------------------------------------------------------------------ the samples

def control_cells():
    """The training control cells and their contexts: only cells of the training part of the controls, which
    is all that file_train_cells holds of them (the reference part is the solution's); checked against train."""
    path = par["input_train_cells"]
    cells = io.read("input_train_cells", required_obs=("is_control", "cell_type", "condition", "profile_id"))
    if cells.n_vars != len(genes) or not (pd.Index(cells.var_names.astype(str)) == genes).all():
        fail(f"--input_train_cells file '{path}': its genes (var_names) differ from --input_train's")
    rows = np.flatnonzero(cells.obs["is_control"].to_numpy().astype(bool))
    control_profiles = set(train.obs_names[train.obs["is_control"].to_numpy().astype(bool)])
    profile = cells.obs["profile_id"].astype(str).to_numpy()[rows]
    foreign = ~np.isin(profile, list(control_profiles))
    if foreign.any():
        fail(f"--input_train_cells file '{path}': obs['profile_id'] of {int(foreign.sum())} control cells is not a "
             f"control row of --input_train (e.g. '{profile[foreign][0]}'); is it the cells file of another split?")
    return cells.X, rows, baselines.contexts_of(cells.obs.iloc[rows]), "training control cells"


def training_profiles():
    """The training control replicate profiles; when they are too few for a correlation (pseudobulk files
    have a couple per context), every training profile, controls and training perturbations: still only
    what a method reads, and the perturbations add the co-variation a regulator's change causes."""
    is_control = train.obs["is_control"].to_numpy().astype(bool)
    rows = np.flatnonzero(is_control)
    contexts = baselines.contexts_of(train.obs.iloc[rows])
    if len(rows) - len(set(contexts)) >= MIN_DOF:
        return train.X, rows, contexts, "training control profiles"
    log(f"{NAME}: {len(rows)} training control profiles in {len(set(contexts))} contexts are too few for a "
        f"correlation (fewer than {MIN_DOF} degrees of freedom); using all {train.n_obs} training profiles")
    rows = np.arange(train.n_obs)
    return train.X, rows, baselines.contexts_of(train.obs), "training profiles (controls and perturbations)"


if par.get("input_train_cells"):
    matrix, rows, contexts, source = control_cells()
else:
    matrix, rows, contexts, source = training_profiles()
context_names = sorted(set(contexts))
lookup = {c: i for i, c in enumerate(context_names)}
codes = np.fromiter((lookup[c] for c in contexts), dtype=np.int64, count=len(contexts))
dof = len(rows) - len(context_names)
if dof < 2:
    fail(f"--input_train file '{par['input_train']}': {len(rows)} {source} in {len(context_names)} contexts leave "
         f"{dof} degrees of freedom; a correlation needs at least 2")


# ------------------------------------------------------------------------------------------ moments

def moments(matrix, rows: np.ndarray, codes: np.ndarray, n_contexts: int):
    """Per-context sums and the gene sums of squares of the selected rows, a chunk of rows at a time."""
    sums = np.zeros((n_contexts, matrix.shape[1]))
    squares = np.zeros(matrix.shape[1])
    for start in range(0, len(rows), CHUNK_ROWS):
        block, block_codes = matrix[rows[start:start + CHUNK_ROWS]], codes[start:start + CHUNK_ROWS]
        indicator = sp.csr_matrix((np.ones(len(block_codes)), (block_codes, np.arange(len(block_codes)))),
                                  shape=(n_contexts, len(block_codes)))
        if sp.issparse(block):
            block = sp.csr_matrix(block, dtype=np.float64)
            sums += np.asarray((indicator @ block).toarray())
            squares += np.asarray(block.multiply(block).sum(axis=0)).ravel()
        else:
            block = np.asarray(block, dtype=np.float64)
            sums += indicator @ block
            squares += (block * block).sum(axis=0)
    return sums, squares


def cross_products(matrix, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """X[rows][:, columns]' X[rows] (columns x genes), by sparse (or dense) products a chunk of rows at a time."""
    cross = np.zeros((len(columns), matrix.shape[1]))
    for start in range(0, len(rows), CHUNK_ROWS):
        block = matrix[rows[start:start + CHUNK_ROWS]]
        if sp.issparse(block):
            block = sp.csr_matrix(block, dtype=np.float64)
            cross += np.asarray((block[:, columns].T @ block).toarray())
        else:
            block = np.asarray(block, dtype=np.float64)
            cross += block[:, columns].T @ block
    return cross


counts = np.bincount(codes, minlength=len(context_names)).astype(np.float64)
sums, squares = moments(matrix, rows, codes, len(context_names))
means = sums / counts[:, None]
# within-context sum of squares: each context is centred on its own mean, so that differences between cell
# types (or conditions) do not pass for co-expression
centred_squares = squares - (counts[:, None] * means ** 2).sum(axis=0)
constant = centred_squares <= CONSTANT * np.maximum(squares, 1e-300)
sd = np.where(constant, 0.0, np.sqrt(np.clip(centred_squares, 0.0, None)))
variance = np.where(constant, 0.0, centred_squares / dof)


# ------------------------------------------------------------------------------------------ regulators

def listed_regulators() -> list[str]:
    path = par["regulators"]
    if not os.path.isfile(path):
        fail(f"--regulators file '{path}': {'does not exist' if not os.path.exists(path) else 'is not a file'}")
    try:
        with open(path, encoding="utf-8") as handle:
            names = [line.strip() for line in handle if line.strip() and not line.lstrip().startswith("#")]
    except (OSError, UnicodeDecodeError) as error:
        fail(f"--regulators file '{path}': cannot be read as text, one gene symbol per line ({error})")
    measured = [g for g in dict.fromkeys(names) if g in position]
    if not measured:
        fail(f"--regulators file '{path}': none of its {len(names)} gene symbols (e.g. {', '.join(names[:3]) or 'none'})"
             f" is a measured gene of --input_train (e.g. {', '.join(genes[:3])})")
    log(f"{NAME}: --regulators: {len(measured)} of {len(set(names))} listed genes are measured")
    return measured


if par.get("regulators"):
    chosen = listed_regulators()
else:
    # the most variable measured genes of the samples used (ties in gene order); a constant gene has no edge
    order = np.argsort(-variance, kind="stable")
    chosen = [genes[i] for i in order[:n_regulators] if variance[i] > 0]
# a perturbed gene is a natural regulator: the screen shows (training) or asks (test) what it moves
perturbed = [t for t in train_targets + test_targets if t in position]
regulator_index = np.array(sorted({position[g] for g in chosen} | {position[t] for t in perturbed}), dtype=np.int64)
if len(regulator_index) == 0:
    fail(f"--input_train file '{par['input_train']}': no regulator: --n_regulators is 0, no --regulators file was "
         "given and no perturbation target is measured")


# ------------------------------------------------------------------------------------------ correlations

cross = cross_products(matrix, rows, regulator_index)
covariance = cross - (means[:, regulator_index] * counts[:, None]).T @ means   # within-context, times dof
with np.errstate(divide="ignore", invalid="ignore"):
    r = covariance / np.outer(sd[regulator_index], sd)
r[~np.isfinite(r)] = 0.0
r[:, constant] = 0.0
r[sd[regulator_index] == 0] = 0.0
np.clip(r, -1.0, 1.0, out=r)
r[np.arange(len(regulator_index)), regulator_index] = 0.0    # a gene is not its own target

keep = min(n_targets, len(genes) - 1)
# strongest |r| first, ties in gene order (stable), so the same inputs give the same network; a block of
# regulators at a time, so the sort's work arrays stay small beside r
top = np.zeros((len(regulator_index), keep), dtype=np.int64)
for start in range(0, len(regulator_index), 256):
    top[start:start + 256] = np.argsort(-np.abs(r[start:start + 256]), axis=1, kind="stable")[:, :keep]
weights = np.take_along_axis(r, top, axis=1)
edge = weights != 0
network = sp.csr_matrix((weights[edge], (np.repeat(regulator_index, keep).reshape(top.shape)[edge], top[edge])),
                        shape=(len(genes), len(genes)), dtype=np.float64)
network.sort_indices()

is_regulator = np.zeros(len(genes), dtype=bool)
is_regulator[regulator_index] = True
with_edges = np.diff(network.indptr) > 0
all_targets = sorted(set(train_targets) | set(test_targets))
measured_targets = [t for t in all_targets if t in position]
covered = [t for t in all_targets if t in position and with_edges[position[t]]]
covered_test = [t for t in test_targets if t in position and with_edges[position[t]]]
in_network = int((with_edges | (np.diff(network.tocsc().indptr) > 0)).sum())
log(f"{NAME}: {source}: {len(rows)} samples in {len(context_names)} contexts; {len(regulator_index)} regulators "
    f"({len(chosen)} {'listed' if par.get('regulators') else 'most variable'} + measured perturbation targets), "
    f"{network.nnz} edges (<= {keep} targets each, weight = Pearson r); {in_network} of {len(genes)} measured genes "
    f"are in the network; {len(covered)} of {len(all_targets)} perturbation targets ({len(measured_targets)} measured) "
    f"and {len(covered_test)} of {len(test_targets)} test targets are regulators with edges")

import anndata as ad  # noqa: E402

uns = {"prior_id": NAME, "source_dataset_id": str(train.uns.get("dataset_id", "unknown")), "source": source,
       "n_samples": int(len(rows)), "n_contexts": int(len(context_names)), "n_regulators": int(len(regulator_index)),
       "n_edges": int(network.nnz), "n_targets_per_regulator": int(keep), "n_genes_in_network": in_network,
       "n_measured_genes": int(len(genes)), "n_targets": int(len(all_targets)),
       "n_targets_covered": int(len(covered)), "n_test_targets": int(len(test_targets)),
       "n_test_targets_covered": int(len(covered_test)),
       "method": f"Pearson correlation within contexts of the {source}; the top |r| targets of each regulator"}
prior = ad.AnnData(obs=pd.DataFrame(index=pd.Index([], dtype=object)),
                   var=pd.DataFrame({"is_regulator": is_regulator}, index=pd.Index(list(genes), dtype=object)),
                   uns=uns)
prior.varp["network"] = network
io.write("output", prior)
