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
    "n_control_cells": 100,
    "model": "saturating",
    "perturbation_type": "knockdown",
    "mean_library_size": 3000.0,
    "dispersion": 0.2,
    "rewiring": 0.2,
    "share_ineffective": 0.2,
    "escape_rate": 0.1,
    "batch_effect": 0.1,
    "effect_scale": 1.0,
    "normalization": "log_cp10k_cell_mean",
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
from scipy.stats import norm  # noqa: E402

from cell_expectation import cell_log_normalised, expected_cell_log  # noqa: E402
from component_io import ComponentIO, fail, log  # noqa: E402
from dataset_report import dataset_report  # noqa: E402
from grn_network import context_network, random_network, steady_state_solver  # noqa: E402
import vocabulary  # noqa: E402

# Outputs are checked now (not an input, writable), not after the slow part.
outputs = ComponentIO(par, meta)

DATASET_ID = par.get("dataset_id") or "simulated_grn"
# Bumped whenever the simulation algorithm changes, so that source_sha256 (and any cache keyed on it)
# changes with it even when the arguments do not.
SIMULATOR_VERSION = 3

# What a fully efficient perturbation does to its target (see the config's description):
# CRISPRi keeps 10% of transcription; CRISPRa multiplies it by 4; a knockout leaves 2% of the protein's
# activity (log space needs > 0) while nonsense-mediated decay removes up to NMD_MAX of its mRNA.
KNOCKDOWN_TRANSCRIPTION = 0.1
ACTIVATION_GAIN = 4.0
KNOCKOUT_ACTIVITY = 0.02
NMD_MAX = 0.6
# Protein activity follows mRNA as mRNA^b with a per-gene buffering exponent b (translation control,
# protein stability), so the revealed mRNA of a knocked-down regulator under- or overstates what its
# targets see.
BUFFERING = (0.3, 1.0)
# Guide efficiency of an effective perturbation ~ Beta(4, 1.5) (mean 0.73); an ineffective one is
# uniform below 0.1. Within a perturbation, each non-escaping cell's efficiency varies log-normally.
EFFICIENCY_BETA = (4.0, 1.5)
INEFFECTIVE_MAX = 0.1
CELL_EFFICIENCY_LOG_SD = 0.3
# Quantile nodes per target for the expected profile over the cells' efficiency distribution: the
# midpoint rule on a smooth function of a quantile errs by O(1/n^2), far below the sampling noise.
QUADRATURE_NODES = 16
MAX_INPUT_WEIGHT = {"linear": 0.9, "saturating": 1.5}
LIBRARY_SIZE_LOG_SD = 0.3
CELL_CHUNK = 256
REPLICATES = ("r1", "r2")
CONTROL_PARTS = (1, 2)

INTEGER_ARGUMENTS = ("seed", "n_genes", "n_regulators", "n_perturbed_genes", "n_combos", "n_cell_types",
                     "cells_per_perturbation", "n_control_cells")
FLOAT_ARGUMENTS = ("edge_density", "cell_type_divergence", "mean_library_size", "dispersion", "rewiring",
                   "share_ineffective", "escape_rate", "batch_effect", "effect_scale")
STRING_ARGUMENTS = ("model", "perturbation_type", "normalization")
PERTURBATION_TYPES = ("knockout", "knockdown", "activation")
# How a profile is made from its cells' counts: the mean over cells of log1p(cp10k of each cell), whose
# expectation does not depend on how many cells a profile pools; or log1p(cp10k) of the summed counts,
# which rises with the pooled depth (Jensen), so that a control pooling more cells than a perturbation
# differs from it even where no gene responds.
NORMALIZATIONS = ("log_cp10k_cell_mean", "log_cp10k")



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
        (args["perturbation_type"] in PERTURBATION_TYPES,
         f"--perturbation_type is '{args['perturbation_type']}', expected one of {sorted(PERTURBATION_TYPES)}"),
        (args["mean_library_size"] > 0, f"--mean_library_size is {args['mean_library_size']}, expected > 0"),
        (args["dispersion"] >= 0, f"--dispersion is {args['dispersion']}, expected >= 0"),
        (0.0 <= args["rewiring"] <= 1.0, f"--rewiring is {args['rewiring']}, expected in [0, 1]"),
        (0.0 <= args["share_ineffective"] <= 1.0,
         f"--share_ineffective is {args['share_ineffective']}, expected in [0, 1]"),
        (0.0 <= args["escape_rate"] < 1.0, f"--escape_rate is {args['escape_rate']}, expected in [0, 1)"),
        (args["batch_effect"] >= 0, f"--batch_effect is {args['batch_effect']}, expected >= 0"),
        (0.0 <= args["effect_scale"] <= 1.0, f"--effect_scale is {args['effect_scale']}, expected in [0, 1]"),
        (args["normalization"] in NORMALIZATIONS,
         f"--normalization is '{args['normalization']}', expected one of {list(NORMALIZATIONS)}"),
    ]
    for ok, message in checks:
        if not ok:
            fail(message)
    return args


def choose_perturbations(rng, n_genes: int, regulators, n_perturbed: int, n_combos: int):
    """Target genes (mostly regulators, as in TF-focused screens) and pairs of them for combinations."""
    n_regulator_targets = min(len(regulators), math.ceil(0.75 * n_perturbed))
    leaves = np.setdiff1d(np.arange(n_genes), regulators)
    n_leaf_targets = min(len(leaves), n_perturbed - n_regulator_targets)
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


def guides(rng, targets, share_ineffective: float, escape_rate: float, effect_scale: float = 1.0) -> dict:
    """Per target gene: the guide's efficiency, its share of escaping cells and (knockouts) its NMD.

    One guide per target, used in every cell type and combination. Escape shares ~ Beta with mean
    `escape_rate` (some guides leave many cells unperturbed, most few). `effect_scale` multiplies every
    efficiency after it is drawn (the draws stay the same): 0 makes a null screen."""
    result = {}
    for t in targets:
        ineffective = rng.random() < share_ineffective
        efficiency = effect_scale * (rng.uniform(0.0, INEFFECTIVE_MAX) if ineffective else rng.beta(*EFFICIENCY_BETA))
        escape = rng.beta(2.0 * escape_rate / (1 - escape_rate), 2.0) if escape_rate > 0 else 0.0
        result[int(t)] = {"efficiency": float(efficiency), "escape": float(escape),
                          "nmd": float(rng.uniform(0.0, NMD_MAX))}
    return result


def target_shift(kind: str, efficiency, guide: dict, buffering: float):
    """log shifts (mRNA production, protein activity beyond the mRNA) of a target at cell efficiencies."""
    if kind == "knockout":
        mrna = np.log1p(-efficiency * guide["nmd"])
        return mrna, np.log(np.maximum(1.0 - efficiency, KNOCKOUT_ACTIVITY)) - mrna
    if kind == "knockdown":
        mrna = np.log1p(-efficiency * (1.0 - KNOCKDOWN_TRANSCRIPTION))
    else:
        mrna = np.log1p(efficiency * (ACTIVATION_GAIN - 1.0))
    return mrna, (buffering - 1.0) * mrna


def cell_efficiencies(rng, guide: dict, n: int) -> np.ndarray:
    escaped = rng.random(n) < guide["escape"]
    jitter = np.exp(rng.normal(-CELL_EFFICIENCY_LOG_SD ** 2 / 2, CELL_EFFICIENCY_LOG_SD, size=n))
    return np.where(escaped, 0.0, np.minimum(1.0, guide["efficiency"] * jitter))


def efficiency_nodes(guide: dict):
    """Quadrature of a target's cell efficiency distribution: (values, weights); escapees are one node."""
    quantiles = (np.arange(QUADRATURE_NODES) + 0.5) / QUADRATURE_NODES
    jitter = np.exp(-CELL_EFFICIENCY_LOG_SD ** 2 / 2 + CELL_EFFICIENCY_LOG_SD * norm.ppf(quantiles))
    values = np.concatenate([[0.0], np.minimum(1.0, guide["efficiency"] * jitter)])
    weights = np.concatenate([[guide["escape"]], np.full(QUADRATURE_NODES, (1 - guide["escape"]) / QUADRATURE_NODES)])
    return values, weights


def shares(solve, baseline, abundance, targets, efficiencies, guide_of, buffering, kind):
    """Expression shares (rows sum to 1) of cells whose targets have the given efficiencies
    (one column per target)."""
    production = np.repeat(baseline[None, :], len(efficiencies), axis=0)
    activity = np.zeros_like(production)
    for column, t in enumerate(targets):
        mrna, protein = target_shift(kind, efficiencies[:, column], guide_of[t], buffering[t])
        production[:, t] += mrna
        activity[:, t] += protein
    state = abundance + solve(production, activity)
    share = np.exp(state - state.max(axis=1, keepdims=True))
    return share / share.sum(axis=1, keepdims=True)


def with_batch(share, batch):
    """Shares measured in a replicate whose per-gene capture differs by exp(batch)."""
    share = share * np.exp(batch)[None, :]
    return share / share.sum(axis=1, keepdims=True)


def sample_counts(rng, share, mean_library_size: float, dispersion: float):
    library = mean_library_size * np.exp(rng.normal(-LIBRARY_SIZE_LOG_SD ** 2 / 2, LIBRARY_SIZE_LOG_SD, size=len(share)))
    mean = library[:, None] * share
    if dispersion > 0:
        # numpy's (n, p) parametrisation of mean mu and variance mu + dispersion * mu^2
        return rng.negative_binomial(1.0 / dispersion, 1.0 / (1.0 + dispersion * mean))
    return rng.poisson(mean)


def simulate_condition(cell_rng, solve, baseline, abundance, targets, guide_of, buffering, batches, args):
    """Summed counts and noise-free expected log-normalised profiles of both replicates of a condition."""
    n_cells = (args["n_control_cells"] if not targets
               else max(2, int(cell_rng.poisson(args["cells_per_perturbation"]))))
    kind = args["perturbation_type"]
    # expected: the mean share over the cells' efficiency distribution (quadrature), per replicate batch
    nodes = [efficiency_nodes(guide_of[t]) for t in targets]
    if nodes:
        grids = np.meshgrid(*[v for v, _ in nodes], indexing="ij")
        weights = np.prod(np.meshgrid(*[w for _, w in nodes], indexing="ij"), axis=0).ravel()
        node_shares = shares(solve, baseline, abundance, targets, np.column_stack([g.ravel() for g in grids]),
                             guide_of, buffering, kind)
    else:
        weights = np.ones(1)
        node_shares = shares(solve, baseline, abundance, targets, np.zeros((1, 0)), guide_of, buffering, kind)
    if args["normalization"] == "log_cp10k":
        expected = [np.log1p(1e4 * (weights @ with_batch(node_shares, batch))) for batch in batches]
    else:
        expected = [weights @ expected_cell_log(with_batch(node_shares, batch), args["mean_library_size"],
                                                args["dispersion"], LIBRARY_SIZE_LOG_SD) for batch in batches]

    in_r1 = np.zeros(n_cells, dtype=bool)
    in_r1[cell_rng.permutation(n_cells)[: (n_cells + 1) // 2]] = True
    # Profiles of the condition: its two replicate halves; a control's halves are each cut once more into two
    # control parts (CONTROL_PARTS), so that the task can hold one part of every replicate out of training
    # as the reference of observed deltas, with the same replicate (batch) mix as the training part.
    profile_of_cell = np.where(in_r1, 0, 1)
    if not targets:
        part = np.zeros(n_cells, dtype=np.int64)
        for half in (0, 1):
            members = np.flatnonzero(profile_of_cell == half)
            part[members[cell_rng.permutation(len(members))[len(members) // 2:]]] = 1
        profile_of_cell = profile_of_cell * 2 + part
    n_profiles = 2 if targets else 4
    sums = np.zeros((n_profiles, len(baseline)), dtype=np.float64)
    log_sums = np.zeros((n_profiles, len(baseline)), dtype=np.float64)
    for start in range(0, n_cells, CELL_CHUNK):
        stop = min(n_cells, start + CELL_CHUNK)
        efficiencies = np.column_stack([cell_efficiencies(cell_rng, guide_of[t], stop - start) for t in targets]) \
            if targets else np.zeros((stop - start, 0))
        share = shares(solve, baseline, abundance, targets, efficiencies, guide_of, buffering, kind)
        for half in range(n_profiles):  # `half`: the profile's index within the condition (cell_recorder.CellRecorder)
            selected = profile_of_cell[start:stop] == half
            if selected.any():
                counts = sample_counts(cell_rng, with_batch(share[selected], batches[half * 2 // n_profiles]),
                                       args["mean_library_size"], args["dispersion"])
                sums[half] += counts.sum(axis=0)
                log_sums[half] += cell_log_normalised(counts).sum(axis=0)
    n_half = np.bincount(profile_of_cell, minlength=n_profiles)
    expected = [expected[k * 2 // n_profiles] for k in range(n_profiles)]
    return sums, [int(n) for n in n_half], expected, log_sums / np.maximum(n_half.astype(np.float64), 1.0)[:, None]


class Progress:
    """A log line about every 10% of the conditions (or 30 s), with the time so far: a genome-scale screen
    takes minutes."""

    def __init__(self, total: int):
        import time

        self.clock, self.total, self.done = time.monotonic, total, 0
        self.start = self.last = self.clock()

    def step(self, cell_type: str):
        now = self.clock()
        if self.done and (self.done % max(1, self.total // 10) == 0 or now - self.last > 30):
            log(f"{DATASET_ID}: {self.done} of {self.total} conditions simulated ({cell_type}; {now - self.start:.0f} s)")
            self.last = now
        self.done += 1


def simulate(args: dict) -> ad.AnnData:
    # Separate streams per purpose: e.g. more cells per perturbation leaves the network unchanged.
    network_seed, design_seed, context_seed, cell_seed, guide_seed, batch_seed = \
        np.random.SeedSequence(args["seed"]).spawn(6)
    network_rng = np.random.default_rng(network_seed)
    n_genes = args["n_genes"]
    max_input = MAX_INPUT_WEIGHT[args["model"]]
    W, regulators, candidates_of = random_network(network_rng, n_genes, args["n_regulators"], args["edge_density"],
                                                  max_input)
    baseline = network_rng.normal(0.0, 0.5, size=n_genes)
    # Abundance scales how much of a gene is measured (mRNA stability, capture) but not how strongly it
    # regulates others, so it is kept out of the network state.
    abundance = network_rng.normal(0.0, 1.0, size=n_genes)
    buffering = network_rng.uniform(*BUFFERING, size=n_genes)
    perturbations = choose_perturbations(np.random.default_rng(design_seed), n_genes, regulators,
                                         args["n_perturbed_genes"], args["n_combos"])
    guide_of = guides(np.random.default_rng(guide_seed), sorted({t for p in perturbations for t in p}),
                      args["share_ineffective"], args["escape_rate"], args["effect_scale"])
    # One capture bias per replicate and gene, shared by every profile of that replicate (controls too).
    batches = np.random.default_rng(batch_seed).normal(0.0, args["batch_effect"], size=(len(REPLICATES), n_genes))
    context_rng = np.random.default_rng(context_seed)
    cell_types = [f"type_{letter}" for letter in string.ascii_uppercase[: args["n_cell_types"]]]
    contexts = [context_network(context_rng, W, candidates_of, baseline, args["cell_type_divergence"],
                                args["rewiring"], max_input) for _ in cell_types]

    width = max(4, len(str(n_genes)))
    genes = [f"G{i + 1:0{width}d}" for i in range(n_genes)]
    cell_rng = np.random.default_rng(cell_seed)
    profiles, cell_profiles, expected, rows = [], [], [], []
    progress = Progress(len(cell_types) * (len(perturbations) + 1))
    for cell_type, (W_c, baseline_c) in zip(cell_types, contexts):
        solve = steady_state_solver(W_c, args["model"])
        for targets in [()] + perturbations:
            progress.step(cell_type)
            sums, halves, means, cell_means = simulate_condition(cell_rng, solve, baseline_c, abundance, list(targets),
                                                                 guide_of, buffering, batches, args)
            name = vocabulary.label(genes[t] for t in targets)
            labels = ([(r, 0) for r in REPLICATES] if targets
                      else [(r, part) for r in REPLICATES for part in CONTROL_PARTS])
            for (replicate, part), counts, n, mean, cell_mean in zip(labels, sums, halves, means, cell_means):
                profiles.append(counts)
                cell_profiles.append(cell_mean)
                expected.append(mean)
                rows.append({"perturbation": name, "is_control": not targets,
                             "perturbation_type": args["perturbation_type"], "n_targets": len(targets),
                             "cell_type": cell_type, "condition": "none", "replicate": replicate, "n_cells": n,
                             "control_part": part})
    n_ineffective = sum(g["efficiency"] < INEFFECTIVE_MAX for g in guide_of.values())
    return assemble(np.vstack(profiles), np.vstack(expected), rows, genes, args, W, n_ineffective,
                    np.vstack(cell_profiles))


def assemble(counts, expected, rows, genes, args, W, n_ineffective: int, cell_means) -> ad.AnnData:
    obs = pd.DataFrame(rows)
    obs.index = [f"{p}|{c}|{k}|{r}" + (f"|p{part}" if part else "") for p, c, k, r, part in
                 obs[["perturbation", "cell_type", "condition", "replicate", "control_part"]].itertuples(index=False)]
    obs["control_part"] = obs["control_part"].astype(np.int64)
    obs["is_control"] = obs["is_control"].astype(bool)
    obs["n_targets"] = obs["n_targets"].astype(np.int64)
    obs["n_cells"] = obs["n_cells"].astype(np.int64)
    totals = counts.sum(axis=1, keepdims=True)
    if (totals == 0).any():
        fail(f"{int((totals == 0).sum())} profile(s) got no counts at all; "
             "raise --mean_library_size or the cell numbers")
    X = (np.log1p(counts / totals * 1e4) if args["normalization"] == "log_cp10k" else cell_means).astype(np.float32)
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
            f"{args['model']} steady state, regulators act through their protein activity), "
            f"{args['n_perturbed_genes']} single and {args['n_combos']} double perturbations in "
            f"{args['n_cell_types']} cell type(s) that rewire {args['rewiring']:g} of the edges and differ in edge "
            f"strengths and baselines. Guides vary in efficiency ({n_ineffective} of {args['n_perturbed_genes']} "
            f"nearly ineffective), cells in efficiency and escape (mean escape rate {args['escape_rate']:g}). "
            f"Cells get negative-binomial UMI counts (dispersion {args['dispersion']}, mean library size "
            f"{args['mean_library_size']:g}) and are pooled into pseudobulk profiles per random half of the cells "
            f"(r1, r2), each half measured with its own per-gene batch effect (sd {args['batch_effect']:g} on the "
            "log scale); X is " + ("log1p(cp10k) of the summed counts" if args["normalization"] == "log_cp10k" else
                                   "the mean of the cells' log1p(cp10k)")
            + (f"; perturbation effects scaled by {args['effect_scale']:g}" if args["effect_scale"] != 1 else "")
            + ". layers['expected'] holds each profile's noise-free expected value."),
        "dataset_url": "simulated by src/datasets/simulated_grn",
        "dataset_reference": "none",
        "dataset_organism": "synthetic",
        "normalization_id": args["normalization"],
        # halves are random halves of each group's cells, each with its own batch effect
        "replicate_kind": "random_half",
        "source_sha256": hashlib.sha256(canonical.encode()).hexdigest(),
        "simulation": simulation,
    }
    layers = {"counts": counts.astype(counts_dtype), "expected": expected.astype(np.float32)}
    return ad.AnnData(X=X, obs=obs, var=var, uns=uns, layers=layers)


args = simulation_arguments(par)
if not par.get("output"):
    fail("--output was not given")
cell_recorder = None
if par.get("output_cells"):  # the cells behind the profiles, recorded as they are sampled (cell_recorder.py)
    from cell_files import loader_options
    from cell_recorder import CellRecorder
    try:
        cell_options = loader_options(par)
    except ValueError as error:
        fail(str(error))
    cell_recorder = CellRecorder(globals(), "simulate_condition", "sample_counts")
adata = simulate(args)
if cell_recorder is not None:
    try:
        cell_recorder.write(par["output_cells"], adata, cell_options, log=log)
    except ValueError as error:
        fail(f"--output_cells: {error}")
log(f"{DATASET_ID}: {adata.n_obs} profiles x {adata.n_vars} genes ({args['n_perturbed_genes']} single + "
    f"{args['n_combos']} double perturbations, {args['n_cell_types']} cell types)")
adata.uns["dataset_report"] = dataset_report(adata, log=log)
outputs.write("output", adata)
