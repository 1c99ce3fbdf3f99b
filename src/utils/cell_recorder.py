"""The simulator's cells (`simulated_grn --output_cells`), recorded as it samples them.

Included as a viash resource by `src/datasets/simulated_grn` beside `cell_files.py`, whose writer and cell
selection it uses; needs numpy, scipy, pandas, h5py and anndata.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from cell_files import BLOCK_ROWS, StreamingCellWriter, _cells_obs, _normalised_block, select_cells


class CellRecorder:
    """The simulator's per-cell counts, recorded while `simulated_grn` samples them, for its --output_cells.

    The simulator adds each cell's counts into its profile as soon as they are sampled. Rather than threading
    cells through its code, the recorder wraps two of its module functions (in `namespace`, the script's
    globals): `condition_function` (one call per condition, in profile order) and `sampler` (returns the
    counts of a block of cells; the caller's local `half` says which of the condition's profiles they go to). `write`
    then checks that the recorded cells add up exactly to the profiles' counts, so a change of the
    simulator that breaks this bookkeeping stops with an error instead of writing wrong cells.
    """

    def __init__(self, namespace: dict, condition_function: str, sampler: str):
        import sys

        # `offset`: the first profile of the condition being simulated; a condition returns its profiles' sums
        # first, so the next condition starts after them (controls have more profiles than perturbations)
        self.blocks, self.offset, self.next_offset = [], 0, 0
        original_condition, original_sampler = namespace[condition_function], namespace[sampler]

        def condition_wrapper(*args, **kwargs):
            self.offset = self.next_offset
            result = original_condition(*args, **kwargs)
            self.next_offset += len(result[0])
            return result

        def sampler_wrapper(*args, **kwargs):
            counts = original_sampler(*args, **kwargs)
            half = sys._getframe(1).f_locals.get("half")
            # float32 holds a cell's counts exactly (below 2^24) in two thirds of float64's memory: at
            # 300k cells x 8,000 genes the recorded cells are the simulator's peak
            self.blocks.append((self.offset + (-10 ** 9 if half is None else int(half)),
                                sp.csr_matrix(counts, dtype=np.float32)))
            return counts

        namespace[condition_function], namespace[sampler] = condition_wrapper, sampler_wrapper

    def write(self, output, adata, options: dict, log=print) -> int:
        # Streamed from the recorded blocks (never stacked: at 300k cells x 8,000 genes a stacked copy and
        # its float64 products took the simulator past 18 GB).
        codes = np.concatenate([np.full(block.shape[0], code, dtype=np.int64) for code, block in self.blocks])
        profile_counts = adata.layers["counts"]
        profile_counts = profile_counts.toarray() if sp.issparse(profile_counts) else np.asarray(profile_counts)
        n_genes = {block.shape[1] for _, block in self.blocks}
        if codes.min() < 0 or codes.max() >= adata.n_obs or n_genes != {adata.n_vars}:
            raise ValueError("the recorded cells do not map onto the profiles (the simulator's sampling changed; "
                             "update cell_recorder.CellRecorder)")
        sums = np.zeros(profile_counts.shape, dtype=np.float64)
        for code, block in self.blocks:
            sums[code] += np.asarray(block.sum(axis=0, dtype=np.float64)).ravel()
        if not np.array_equal(sums, profile_counts.astype(np.float64)):
            raise ValueError("the recorded cells do not add up to the profiles' counts (the simulator's sampling "
                             "changed; update cell_recorder.CellRecorder)")
        del sums
        rows = select_cells(codes, adata.obs, options["max_cells"], options["max_control"], options["seed"])
        block_starts = np.cumsum([0] + [block.shape[0] for _, block in self.blocks])
        writer = StreamingCellWriter(output, adata.n_vars, layers=("counts",))
        try:
            for start in range(0, len(rows), BLOCK_ROWS):
                chunk = rows[start:start + BLOCK_ROWS]
                owner = np.searchsorted(block_starts, chunk, side="right") - 1
                pieces = [self.blocks[b][1][chunk[owner == b] - block_starts[b]] for b in np.unique(owner)]
                block = sp.vstack(pieces, format="csr").astype(np.float64)
                X, raw = _normalised_block(block, None, True)
                writer.append(X, counts=raw)
            var = adata.var[[c for c in ("gene_id",) if c in adata.var.columns]]
            writer.finish(_cells_obs(rows, codes, adata.obs), var,
                          {"dataset_id": adata.uns["dataset_id"], "normalization_id": adata.uns["normalization_id"],
                           "max_cells_per_condition": options["max_cells"], "max_control_cells": options["max_control"],
                           "cells_seed": options["seed"], "n_cells_eligible": int(len(codes))})
        except BaseException:
            writer.abort()
            raise
        log(f"cells: {len(rows)} of {len(codes)} simulated cells x {adata.n_vars} genes written to {output}")
        return len(rows)
