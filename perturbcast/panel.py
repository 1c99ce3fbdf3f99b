"""The scoring vocabulary (which methods set the scale, the headline panel, the rules of a verdict) and the
small statistics shared by scoring.py and headline.py (bootstrap intervals and p-values, Holm's correction).
"""
from __future__ import annotations

import warnings

import numpy as np

BASELINE_METHOD = "train_mean"
CEILING_METHOD = "replicate_ceiling"
ALL_STRATA = "all"
# Below this dynamic range the ratio is numerically meaningless.
MIN_DYNAMIC_RANGE = 1e-12
# The headline's pre-registered panel, one metric per family: an error, a correlation, a top-k DE agreement,
# a discrimination between perturbations, and a correlation against the perturbed centroid (Systema) that a
# prediction of the average perturbation effect cannot win. Fixed before any result was seen; the full
# metric table stays in results.parquet and the report.
HEADLINE_PANEL = ("mse_delta", "pearson_delta", "overlap_top100_de", "discrimination_l1",
                  "pearson_delta_perturbed_ref")
# Calibrated scores enter the headline clamped to [-1, 1]: bounded and symmetric, so one metric with a tiny
# dynamic range cannot dominate the mean and a loss counts as much as a gain of the same size.
HEADLINE_CLAMP = 1.0
# Family-wise error rate of the win / tie / loss calls (Holm's step-down correction within each family).
FAMILY_ALPHA = 0.05
# A dataset x task slice is ranked only where at least this many panel metrics have a scale (the ceiling
# beats train_mean beyond resampling noise) in every partition: a headline resting on one or two metrics
# says more about those metrics than about the methods.
MIN_PANEL_METRICS = 3
# A stratum with fewer test conditions gets raw values only: no calibrated score and no win/loss call.
MIN_STRATUM_CONDITIONS = 5
# Status of a method on a slice where it returned the training mean for every test condition.
FALLBACK_STATUS = "not applicable: falls back to the training mean on every condition"


def interval(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2.5th and 97.5th percentiles over resamples (axis 0), NaN-aware."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanpercentile(samples, 2.5, axis=0), np.nanpercentile(samples, 97.5, axis=0)


def finite_interval(samples: np.ndarray) -> tuple[float, float]:
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return np.nan, np.nan
    low, high = np.percentile(samples, [2.5, 97.5])
    return float(low), float(high)


def nanmean(arrays: list[np.ndarray]) -> np.ndarray:
    with warnings.catch_warnings():  # a resample with no value anywhere has no mean: NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.vstack(arrays), axis=0)


def p_value(oriented: np.ndarray) -> float:
    """Two-sided bootstrap p-value of a difference oriented so that > 0 is better: twice the share of
    resamples on the less frequent side of 0 (1 when the difference is exactly 0 everywhere)."""
    oriented = oriented[np.isfinite(oriented)]
    if oriented.size == 0:
        return np.nan
    return float(min(1.0, 2.0 * min(np.mean(oriented <= 0), np.mean(oriented >= 0))))


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and does not count as a test)."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    tested = np.flatnonzero(np.isfinite(p))
    if tested.size == 0:
        return adjusted
    order = tested[np.argsort(p[tested], kind="stable")]
    m = order.size
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted


def clamped(values: np.ndarray) -> np.ndarray:
    return np.clip(values, -HEADLINE_CLAMP, HEADLINE_CLAMP)


def orientation(better: bool | None, dynamic: float) -> float:
    """+1 where larger is better, -1 where smaller is; without a declared direction, the ceiling's side of
    the baseline (NaN where there is none)."""
    if better is not None:
        return 1.0 if better else -1.0
    return float(np.sign(dynamic)) if np.isfinite(dynamic) and dynamic != 0 else np.nan
