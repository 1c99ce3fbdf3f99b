"""What the cell_eval2 metric scores where cell-eval2 leaves a condition without a value (a perturbcast score is
never NaN, and the paired comparisons need every method scored on the same conditions).

Two members are undefined exactly where cell-eval2's own definitions say nothing was there to find, read from
its source (cell_eval2/metrics/direction.py, 0.20.0):
- `de_wilcoxon_direction_fidelity_yield_raw = k / max(n_pred, N_conf)` is undefined only when neither the
  prediction nor the reference calls a significant gene. cell-eval2's corrected form applies its agreement
  convention there (1.0 if the model also called nothing), so the raw form gets 1.0 too: a prediction of no
  effect where there is none is right, not the worst.
- `de_wilcoxon_direction_reach_raw = k* / N_conf` is undefined when the reference calls nothing (N_conf = 0):
  by the same convention 1.0 if the prediction called nothing as well (its fidelity is undefined), else 0.0
  (it claimed effects that are not there).
cell-eval2's output keeps such conditions as rows with a NaN value; a condition without a row (cell-eval2
dropped it) and every other undefined member get UNDEFINED_VALUE: the value of a prediction of no change where
one is defined, else the worst value. Measured on Norman devel doubles: ground_truth's fidelity_yield was 0.800
with a fill of 0 against cell-eval2's own aggregate of 1.000 (3 of 15 conditions where the reference calls
nothing).
"""
from __future__ import annotations

import numpy as np

FIDELITY_YIELD = "de_wilcoxon_direction_fidelity_yield_raw"
REACH = "de_wilcoxon_direction_reach_raw"
UNDEFINED_VALUE = {
    "pds_cosine": 0.5,  # a prediction equidistant from every condition: the mid-rank
    "expr_mse_unbiased_capped_norm": 1.0,  # predicting the control
    FIDELITY_YIELD: 0.0,
    REACH: 0.0,
    "de_wilcoxon_sig_jaccard": 0.0,
    "de_wilcoxon_lfc_nmae": 1.0,  # predicting no change: |0 - lfc| / |lfc|
}


def agreement_fill(table):
    """`table` (conditions x members, one cell-eval2 run) with the two direction members filled by cell-eval2's
    agreement convention where the run holds the condition with a NaN value; a copy, the input unchanged."""
    table = table.copy()
    if FIDELITY_YIELD not in table.columns:
        return table
    both_silent = table[FIDELITY_YIELD].isna()
    table[FIDELITY_YIELD] = table[FIDELITY_YIELD].mask(both_silent, 1.0)
    if REACH in table.columns:
        table[REACH] = table[REACH].mask(table[REACH].isna(), np.where(both_silent, 1.0, 0.0))
    return table
