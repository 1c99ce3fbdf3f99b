"""The simulator's gene regulatory network: a random acyclic signed network, its per-cell-type rewiring, and
the steady state of expression under it (`simulated_grn`).

Included as a viash resource by `simulated_grn`; needs numpy and scipy.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

# share of a regulator's edges that activate (the rest repress)
SHARE_ACTIVATING = 0.6


def random_network(rng, n_genes: int, n_regulators: int, edge_density: float, max_input: float):
    """A sparse signed regulatory network W (W[target, regulator]) whose edges follow a random order.

    Regulators come first in the order and may regulate later regulators (cascades); every other gene
    is a leaf. Edges only point forward, so the graph is acyclic and a steady state always exists.
    Returns W, the regulators in order, and each regulator's possible targets (for rewiring).
    """
    regulators = rng.choice(n_genes, size=n_regulators, replace=False)
    leaves = np.setdiff1d(np.arange(n_genes), regulators)
    rows, cols, weights, candidates_of = [], [], [], {}
    for position, regulator in enumerate(regulators):
        candidates = np.concatenate([regulators[position + 1:], leaves])
        candidates_of[int(regulator)] = candidates
        chosen = candidates[rng.random(len(candidates)) < edge_density]
        if len(chosen) == 0:  # a regulator without targets would be a mislabelled leaf
            chosen = rng.choice(candidates, size=1)
        sign = np.where(rng.random(len(chosen)) < SHARE_ACTIVATING, 1.0, -1.0)
        rows.append(chosen)
        cols.append(np.full(len(chosen), regulator))
        weights.append(sign * rng.uniform(0.4, 1.2, size=len(chosen)))
    W = sp.coo_matrix((np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(n_genes, n_genes))
    return W, regulators, candidates_of


def limit_input(W, max_input: float):
    """Scale down the inputs of genes whose summed absolute input weight exceeds `max_input`."""
    W = sp.csr_matrix(W, copy=True)
    total = np.asarray(abs(W).sum(axis=1)).ravel()
    scale = np.minimum(1.0, max_input / np.maximum(total, 1e-12))
    return sp.csr_matrix(sp.diags(scale) @ W)


def context_network(rng, W, candidates_of, baseline, divergence: float, rewiring: float, max_input: float):
    """A cell type's network: a share `rewiring` of the edges moved to another possible target of the same
    regulator (the edge exists in this cell type only), then edge strengths jittered log-normally and
    baselines shifted normally by `divergence`."""
    W = sp.coo_matrix(W)
    rows, cols, data = W.row.copy(), W.col.copy(), W.data * np.exp(rng.normal(0.0, divergence, size=W.nnz))
    # A moved edge goes to the j-th still free candidate (candidate order, j uniform), as a list of the free
    # candidates would give it; the free ones are counted from the sorted occupied positions instead of
    # listed, because listing them per moved edge is O(edges x genes) (500 s at 8,000 genes).
    occupied, position_of = {}, {}
    for k in np.flatnonzero(rng.random(len(rows)) < rewiring):
        regulator = int(cols[k])
        candidates = candidates_of[regulator]
        if regulator not in occupied:
            position = np.full(W.shape[0], -1, dtype=np.int64)
            position[candidates] = np.arange(len(candidates))
            position_of[regulator] = position
            occupied[regulator] = np.sort(position[rows[cols == regulator]])
        taken = occupied[regulator]
        n_free = len(candidates) - len(taken)
        if n_free == 0:
            continue
        j = int(rng.integers(n_free))
        # the j-th free position p satisfies p = j + #(taken below p); taken[i] - i counts the free ones below it
        slot = j + int(np.searchsorted(taken - np.arange(len(taken)), j, side="right"))
        target = int(candidates[slot])
        old = position_of[regulator][rows[k]]
        taken = np.delete(taken, np.searchsorted(taken, old))
        occupied[regulator] = np.insert(taken, np.searchsorted(taken, slot), slot)
        rows[k] = target
    W = sp.csr_matrix((data, (rows, cols)), shape=W.shape)
    return limit_input(W, max_input), baseline + rng.normal(0.0, divergence, size=len(baseline))


def steady_state_solver(W, model: str):
    """A function (production, activity shift) -> log mRNA x, rows = cells, at the steady state
    x = production + W s(x + activity): regulators act through their protein activity, their mRNA
    plus the shift. s is the identity (linear) or tanh (saturating)."""
    if model == "linear":
        factor = spla.splu(sp.csc_matrix(sp.identity(W.shape[0], format="csc") - W))
        return lambda production, activity: factor.solve(np.ascontiguousarray((production + activity @ W.T).T)).T

    WT = sp.csr_matrix(W.T)
    # Only genes with outgoing edges (the regulators) feed the iteration; every other gene's state follows
    # from theirs in one product. Iterating the regulators alone gives the same fixed point for a fraction of
    # the work (at 8,000 genes and 1,000 regulators, 22 steps of 1,000 genes instead of 8,000).
    sources = np.flatnonzero(np.diff(sp.csc_matrix(W).indptr))
    from_sources = sp.csr_matrix(WT[sources])
    among_sources = sp.csr_matrix(from_sources[:, sources])

    def solve(production, activity):
        # Fixed-point iteration: exact after (longest cascade + 1) steps because the graph is acyclic,
        # so the loop bound is only a guard.
        x, base, shift = production[:, sources], production[:, sources], activity[:, sources]
        for _ in range(len(sources) + 2):
            updated = base + np.tanh(x + shift) @ among_sources
            if np.max(np.abs(updated - x), initial=0.0) < 1e-12:
                x = updated
                break
            x = updated
        return production + np.tanh(x + shift) @ from_sources

    return solve
