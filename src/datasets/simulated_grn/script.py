import sys

## VIASH START
par = {
    "output": "output/simulated_grn.h5ad",
    "dataset_id": "simulated_grn",
    "seed": 0,
    "n_genes": 200,
    "n_regulators": 30,
    "edge_density": 0.1,
    "n_perturbed_genes": 40,
    "n_combos": 20,
    "n_cell_types": 2,
    "cell_type_divergence": 0.5,
    "cells_per_perturbation": 40,
    "n_control_cells": 300,
    "model": "saturating",
    "perturbation_type": "knockdown",
    "mean_library_size": 3000.0,
    "dispersion": 0.2,
}
meta = {"name": "simulated_grn", "resources_dir": "src/utils", "config": None}
## VIASH END

sys.path.append(meta["resources_dir"])

import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import string  # noqa: E402

import anndata as ad  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.sparse as sp  # noqa: E402
import scipy.sparse.linalg as spla  # noqa: E402

from component_io import ComponentIO, fail, log  # noqa: E402
from dataset_report import dataset_report  # noqa: E402

# Outputs are checked now (not an input, writable), not after the slow part.
outputs = ComponentIO(par, meta)

DATASET_ID = par.get("dataset_id") or "simulated_grn"
# Bumped whenever the simulation algorithm changes, so that source_sha256 (and any cache keyed on it)
# changes with it even when the arguments do not.
SIMULATOR_VERSION = 1

# Factor on the target's production rate. A knockout keeps 2% rather than 0 because the model lives in
# log space (log 0 is undefined); at the default depth 2% is close to no counts for most genes.
PRODUCTION_FACTOR = {"knockout": 0.02, "knockdown": 0.3, "activation": 3.0}
# Cap on each gene's summed absolute input weight. Below 1 the linear model is a contraction, so an effect
# cannot grow along a regulatory cascade; tanh already bounds what each regulator can pass on, so the
# saturating model may have stronger inputs (it stays well defined because the network is acyclic).
MAX_INPUT_WEIGHT = {"linear": 0.9, "saturating": 1.5}
SHARE_ACTIVATING = 0.6
# Log-normal spread of per-cell library sizes (sd on the log scale), about what droplet data shows
# within a cell type after quality filtering.
LIBRARY_SIZE_LOG_SD = 0.3
# Cells simulated at once: bounds memory to CELL_CHUNK x n_genes however many cells a group has.
CELL_CHUNK = 256

INTEGER_ARGUMENTS = ("seed", "n_genes", "n_regulators", "n_perturbed_genes", "n_combos", "n_cell_types",
                     "cells_per_perturbation", "n_control_cells")
FLOAT_ARGUMENTS = ("edge_density", "cell_type_divergence", "mean_library_size", "dispersion")
STRING_ARGUMENTS = ("model", "perturbation_type")


def simulation_arguments(par: dict) -> dict:
    """The simulation arguments as plain Python scalars (they go into uns and the source hash), cross-checked."""
    args = {}
    for name in INTEGER_ARGUMENTS + FLOAT_ARGUMENTS + STRING_ARGUMENTS:
        if par.get(name) is None:
            fail(f"--{name} was not given")
    for name in INTEGER_ARGUMENTS + FLOAT_ARGUMENTS:
        value = par[name]
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = None
        if number is None or isinstance(value, bool) or (name in INTEGER_ARGUMENTS and not number.is_integer()):
            fail(f"--{name} is {value!r}, expected {'an integer' if name in INTEGER_ARGUMENTS else 'a number'}")
        args[name] = int(number) if name in INTEGER_ARGUMENTS else number
    for name in STRING_ARGUMENTS:
        args[name] = str(par[name])

    n_genes, n_targets = args["n_genes"], args["n_perturbed_genes"]
    checks = [
        (args["seed"] >= 0, f"--seed is {args['seed']}, expected a non-negative integer"),
        (n_genes >= 2, f"--n_genes is {n_genes}, expected at least 2"),
        (1 <= args["n_regulators"] < n_genes,
         f"--n_regulators is {args['n_regulators']}, expected between 1 and n_genes - 1 = {n_genes - 1}"),
        (0.0 < args["edge_density"] <= 1.0, f"--edge_density is {args['edge_density']}, expected in (0, 1]"),
        (1 <= n_targets <= n_genes,
         f"--n_perturbed_genes is {n_targets}, expected between 1 and n_genes = {n_genes}"),
        (0 <= args["n_combos"] <= n_targets * (n_targets - 1) // 2,
         f"--n_combos is {args['n_combos']}, but {n_targets} perturbed genes make only "
         f"{n_targets * (n_targets - 1) // 2} distinct pairs"),
        (1 <= args["n_cell_types"] <= 26, f"--n_cell_types is {args['n_cell_types']}, expected 1 to 26"),
        (args["cell_type_divergence"] >= 0.0,
         f"--cell_type_divergence is {args['cell_type_divergence']}, expected >= 0"),
        (args["cells_per_perturbation"] >= 2,
         f"--cells_per_perturbation is {args['cells_per_perturbation']}, expected at least 2 (one per replicate)"),
        (args["n_control_cells"] >= 2,
         f"--n_control_cells is {args['n_control_cells']}, expected at least 2 (one per replicate)"),
        (args["model"] in ("linear", "saturating"), f"--model is '{args['model']}', expected linear or saturating"),
        (args["perturbation_type"] in PRODUCTION_FACTOR,
         f"--perturbation_type is '{args['perturbation_type']}', expected one of {sorted(PRODUCTION_FACTOR)}"),
        (args["mean_library_size"] > 0, f"--mean_library_size is {args['mean_library_size']}, expected > 0"),
        (args["dispersion"] >= 0, f"--dispersion is {args['dispersion']}, expected >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            fail(message)
    return args


def random_network(rng, n_genes: int, n_regulators: int, edge_density: float, max_input: float):
    """A sparse signed regulatory network W (W[target, regulator]) whose edges follow a random order.

    Regulators come first in the order and may regulate later regulators (cascades); every other gene
    is a leaf. Edges only point forward, so the graph is acyclic and a steady state always exists.
    """
    regulators = rng.choice(n_genes, size=n_regulators, replace=False)
    leaves = np.setdiff1d(np.arange(n_genes), regulators)
    rows, cols, weights = [], [], []
    for position, regulator in enumerate(regulators):
        candidates = np.concatenate([regulators[position + 1:], leaves])
        chosen = candidates[rng.random(len(candidates)) < edge_density]
        if len(chosen) == 0:  # a regulator without targets would be a mislabelled leaf
            chosen = rng.choice(candidates, size=1)
        sign = np.where(rng.random(len(chosen)) < SHARE_ACTIVATING, 1.0, -1.0)
        rows.append(chosen)
        cols.append(np.full(len(chosen), regulator))
        weights.append(sign * rng.uniform(0.4, 1.2, size=len(chosen)))
    W = sp.csr_matrix((np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(n_genes, n_genes))
    return limit_input(W, max_input), regulators


def limit_input(W, max_input: float):
    """Scale down the inputs of genes whose summed absolute input weight exceeds `max_input`."""
    W = sp.csr_matrix(W, copy=True)
    total = np.asarray(abs(W).sum(axis=1)).ravel()
    scale = np.minimum(1.0, max_input / np.maximum(total, 1e-12))
    return sp.csr_matrix(sp.diags(scale) @ W)


def context_network(rng, W, baseline, divergence: float, max_input: float):
    """A cell type's network: same edges, edge strengths and baselines jittered log-normally/normally."""
    W = sp.csr_matrix(W, copy=True)
    W.data = W.data * np.exp(rng.normal(0.0, divergence, size=W.nnz))
    return limit_input(W, max_input), baseline + rng.normal(0.0, divergence, size=len(baseline))


def steady_state_solver(W, model: str):
    """A function production -> log-expression x at the steady state x = production + W s(x).

    s is the identity (linear) or tanh (saturating). One solver serves every perturbation of a cell type,
    so the linear system is factorised once.
    """
    if model == "linear":
        factor = spla.splu(sp.csc_matrix(sp.identity(W.shape[0], format="csc") - W))
        return factor.solve

    def solve(production):
        # Fixed-point iteration: exact after (longest cascade + 1) steps because the graph is acyclic,
        # so the loop bound is only a guard.
        x = production.copy()
        for _ in range(W.shape[0] + 2):
            updated = production + W @ np.tanh(x)
            if np.max(np.abs(updated - x)) < 1e-12:
                return updated
            x = updated
        return x

    return solve


def choose_perturbations(rng, n_genes: int, regulators, n_perturbed: int, n_combos: int):
    """Target genes (mostly regulators, as in TF-focused screens) and pairs of them for combinations."""
    n_regulator_targets = min(len(regulators), math.ceil(0.75 * n_perturbed))
    leaves = np.setdiff1d(np.arange(n_genes), regulators)
    n_leaf_targets = min(len(leaves), n_perturbed - n_regulator_targets)
    # If there are too few leaves, take the remaining targets from the regulators after all.
    n_regulator_targets = n_perturbed - n_leaf_targets
    targets = np.sort(np.concatenate([rng.choice(regulators, n_regulator_targets, replace=False),
                                      rng.choice(leaves, n_leaf_targets, replace=False)]))
    # Draw pair indices and decode them instead of listing all n(n-1)/2 pairs, which grows fast.
    n = len(targets)
    first_pair_of_row = np.concatenate([[0], np.cumsum(np.arange(n - 1, 0, -1))])
    chosen = np.sort(rng.choice(n * (n - 1) // 2, size=n_combos, replace=False)) if n_combos else []
    combos = []
    for index in chosen:
        i = int(np.searchsorted(first_pair_of_row, index, side="right")) - 1
        combos.append((int(targets[i]), int(targets[i + 1 + index - first_pair_of_row[i]])))
    return [(int(t),) for t in targets] + combos


def simulate_counts(rng, expression_share, n_cells: int, mean_library_size: float, dispersion: float):
    """Summed negative-binomial UMI counts of `n_cells` cells split into two random halves (r1, r2).

    expression_share: the profile's expected share of each gene (sums to 1). Returns two count vectors
    and the two cell numbers; cells are drawn in chunks so no large cells x genes matrix is held.
    """
    in_r1 = np.zeros(n_cells, dtype=bool)
    in_r1[rng.permutation(n_cells)[: (n_cells + 1) // 2]] = True
    sums = np.zeros((2, len(expression_share)), dtype=np.float64)
    for start in range(0, n_cells, CELL_CHUNK):
        stop = min(n_cells, start + CELL_CHUNK)
        library = mean_library_size * np.exp(
            rng.normal(-LIBRARY_SIZE_LOG_SD ** 2 / 2, LIBRARY_SIZE_LOG_SD, size=stop - start))
        mean = library[:, None] * expression_share[None, :]
        if dispersion > 0:
            # numpy's (n, p) parametrisation of mean mu and variance mu + dispersion * mu^2
            counts = rng.negative_binomial(1.0 / dispersion, 1.0 / (1.0 + dispersion * mean))
        else:
            counts = rng.poisson(mean)
        sums[0] += counts[in_r1[start:stop]].sum(axis=0)
        sums[1] += counts[~in_r1[start:stop]].sum(axis=0)
    return sums, (int(in_r1.sum()), int((~in_r1).sum()))


def simulate(args: dict) -> ad.AnnData:
    # Separate streams per purpose: e.g. more cells per perturbation leaves the network unchanged.
    network_seed, design_seed, context_seed, cell_seed = np.random.SeedSequence(args["seed"]).spawn(4)
    network_rng = np.random.default_rng(network_seed)
    n_genes = args["n_genes"]
    max_input = MAX_INPUT_WEIGHT[args["model"]]
    W, regulators = random_network(network_rng, n_genes, args["n_regulators"], args["edge_density"], max_input)
    baseline = network_rng.normal(0.0, 0.5, size=n_genes)
    # Abundance scales how much of a gene is measured (mRNA stability, capture) but not how strongly it
    # regulates others, so it is kept out of the network state.
    abundance = network_rng.normal(0.0, 1.0, size=n_genes)
    perturbations = choose_perturbations(np.random.default_rng(design_seed), n_genes, regulators,
                                         args["n_perturbed_genes"], args["n_combos"])
    context_rng = np.random.default_rng(context_seed)
    cell_types = [f"type_{letter}" for letter in string.ascii_uppercase[: args["n_cell_types"]]]
    contexts = [context_network(context_rng, W, baseline, args["cell_type_divergence"], max_input)
                for _ in cell_types]

    width = max(4, len(str(n_genes)))
    genes = [f"G{i + 1:0{width}d}" for i in range(n_genes)]
    log_factor = math.log(PRODUCTION_FACTOR[args["perturbation_type"]])
    cell_rng = np.random.default_rng(cell_seed)
    profiles, rows = [], []
    for cell_type, (W_c, baseline_c) in zip(cell_types, contexts):
        steady_state = steady_state_solver(W_c, args["model"])
        for targets in [()] + perturbations:
            production = baseline_c.copy()
            production[list(targets)] += log_factor
            state = steady_state(production)
            share = np.exp(abundance + state - np.max(abundance + state))
            share /= share.sum()
            n_cells = (args["n_control_cells"] if not targets
                       else max(2, int(cell_rng.poisson(args["cells_per_perturbation"]))))
            sums, halves = simulate_counts(cell_rng, share, n_cells, args["mean_library_size"], args["dispersion"])
            name = "+".join(sorted(genes[t] for t in targets)) or "control"
            for replicate, counts, n in zip(("r1", "r2"), sums, halves):
                profiles.append(counts)
                rows.append({"perturbation": name, "is_control": not targets,
                             "perturbation_type": args["perturbation_type"], "n_targets": len(targets),
                             "cell_type": cell_type, "condition": "none", "replicate": replicate, "n_cells": n})
    return assemble(np.vstack(profiles), rows, genes, args, W)


def assemble(counts, rows, genes, args, W) -> ad.AnnData:
    obs = pd.DataFrame(rows)
    obs.index = obs[["perturbation", "cell_type", "condition", "replicate"]].agg("|".join, axis=1).to_numpy()
    obs["is_control"] = obs["is_control"].astype(bool)
    obs["n_targets"] = obs["n_targets"].astype(np.int64)
    obs["n_cells"] = obs["n_cells"].astype(np.int64)
    totals = counts.sum(axis=1, keepdims=True)
    if (totals == 0).any():
        fail(f"{int((totals == 0).sum())} profile(s) got no counts at all; "
             "raise --mean_library_size or the cell numbers")
    X = np.log1p(counts / totals * 1e4).astype(np.float32)
    variance = X.astype(np.float64).var(axis=0)
    rank = np.empty(len(genes), dtype=np.int64)
    rank[np.argsort(-variance, kind="stable")] = np.arange(len(genes))
    var = pd.DataFrame({"gene_id": [g.replace("G", "SIM", 1) for g in genes], "highly_variable_rank": rank,
                        "mean_expression": X.astype(np.float64).mean(axis=0)}, index=pd.Index(genes))
    # float32 holds integers exactly only below 2^24; larger sums (huge library sizes) stay float64.
    counts_dtype = np.float32 if counts.max() < 2 ** 24 else np.float64
    simulation = {"simulator_version": SIMULATOR_VERSION, **args}
    canonical = json.dumps(simulation, sort_keys=True, separators=(",", ":"))
    uns = {
        "dataset_id": DATASET_ID,
        "dataset_name": "Simulated GRN perturbation screen",
        "dataset_summary": ("Pseudobulk profiles of a simulated perturbation screen on a random sparse gene "
                            "regulatory network."),
        "dataset_description": (
            f"Seeded simulation (seed {args['seed']}) of a {args['perturbation_type']} screen: {args['n_genes']} genes "
            f"under a random acyclic signed network of {args['n_regulators']} regulators ({W.nnz} edges, "
            f"{args['model']} steady state), {args['n_perturbed_genes']} single and {args['n_combos']} double "
            f"perturbations in {args['n_cell_types']} cell type(s) that share the network topology but differ in "
            f"edge strengths and baselines. Cells get negative-binomial UMI counts (dispersion "
            f"{args['dispersion']}, mean library size {args['mean_library_size']:g}) and are summed into "
            "pseudobulk profiles per random half of the cells (r1, r2)."),
        "dataset_url": "simulated by src/datasets/simulated_grn",
        "dataset_reference": "none",
        "dataset_organism": "synthetic",
        "normalization_id": "log_cp10k",
        "source_sha256": hashlib.sha256(canonical.encode()).hexdigest(),
        "simulation": simulation,
    }
    return ad.AnnData(X=X, obs=obs, var=var, uns=uns, layers={"counts": counts.astype(counts_dtype)})


args = simulation_arguments(par)
if not par.get("output"):
    fail("--output was not given")
adata = simulate(args)
log(f"{DATASET_ID}: {adata.n_obs} profiles x {adata.n_vars} genes ({args['n_perturbed_genes']} single + "
    f"{args['n_combos']} double perturbations, {args['n_cell_types']} cell types)")
adata.uns["dataset_report"] = dataset_report(adata, log=log)
outputs.write("output", adata)
