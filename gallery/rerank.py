"""Global similarity + local matches → one calibrated probability → the usual ranking.

The global kNN gives each query a shortlist of B gallery photos with their cosines; the local
matcher scores the query against each (number of matches). Each score is calibrated to
P(same individual) on validation pairs (`gallery.calibration`), then the two are fused:

- `mean`: the mean of the calibrated probabilities (WildFusion, Čermák et al. 2024); a score
  whose calibration is flat shifts every candidate alike and so cannot reorder them;
- `logistic`: a logistic regression on the logits of both calibrated probabilities, fitted on
  the same pairs, which can weigh a strong matcher above a weak one. Weights are kept
  non-negative, so the fused probability never falls as either score rises.

The fused probabilities then go through `gallery.rank.rank`, the ranking every other path
uses, with `new_individual` at a threshold on the fused probability.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from gallery.calibration import CalibrationTable, IsotonicCalibration
from gallery.rank import Ranking, rank

__all__ = ["Fusion", "FusionMethod", "fit_fusion", "fuse", "rerank"]

FusionMethod = Literal["mean", "logistic"]
_EPS = 1e-4  # probabilities are clipped this far from 0 and 1 before taking logits
_L2 = 1e-3  # ridge on the logistic weights: separable validation pairs must not blow them up


class Fusion(BaseModel):
    """How to fuse a global similarity and a local score: both calibrations, the method and,
    for `logistic`, its weights (bias, global, local) on the calibrated logits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: FusionMethod = "mean"
    global_calibration: CalibrationTable
    local_calibration: CalibrationTable
    weights: tuple[float, float, float] | None = Field(
        None, description="logistic only: bias, weight of the global logit, of the local logit"
    )


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _fit_logistic(features: np.ndarray, hits: np.ndarray, iterations: int = 50) -> np.ndarray:
    """Ridge logistic regression by Newton's method: (N, F) → weights (F + 1,), bias first.
    The bias is not penalised."""
    design = np.concatenate([np.ones((len(features), 1)), features], axis=1)
    w = np.zeros(design.shape[1])
    ridge = np.diag([0.0] + [_L2 * len(features)] * features.shape[1])
    for _ in range(iterations):
        p = _sigmoid(design @ w)
        gradient = design.T @ (p - hits) + ridge @ w
        hessian = (design * (p * (1 - p))[:, None]).T @ design + ridge
        step = np.linalg.solve(hessian + 1e-9 * np.eye(len(w)), gradient)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def fit_fusion(
    global_sims: np.ndarray,
    local_scores: np.ndarray,
    hits: np.ndarray,
    method: FusionMethod = "mean",
) -> Fusion:
    """Calibrate both scores on validation pairs ((N,) each, hits True for the same animal)
    and, for `logistic`, fit the weights on the same pairs."""
    hits = np.asarray(hits, dtype=bool).ravel()
    global_cal = IsotonicCalibration().fit(global_sims, hits)
    local_cal = IsotonicCalibration().fit(local_scores, hits)
    assert global_cal.table is not None and local_cal.table is not None
    weights = None
    if method == "logistic":
        features = np.stack(
            [_logit(global_cal.predict(global_sims)), _logit(local_cal.predict(local_scores))],
            axis=1,
        )
        w = _fit_logistic(features, hits.astype(np.float64))
        # A negative weight would make a better score lower the probability: drop that
        # feature (weight 0) and refit with the other.
        if (w[1:] < 0).any():
            keep = np.flatnonzero(w[1:] >= 0)
            w = np.zeros(3)
            if keep.size:
                sub = _fit_logistic(features[:, keep], hits.astype(np.float64))
                w[0], w[1 + keep] = sub[0], sub[1:]
            else:
                w[0] = float(_logit(np.array([hits.mean()]))[0])
        weights = (float(w[0]), float(w[1]), float(w[2]))
    return Fusion(
        method=method,
        global_calibration=global_cal.table,
        local_calibration=local_cal.table,
        weights=weights,
    )


def fuse(global_sims: np.ndarray, local_scores: np.ndarray, fusion: Fusion) -> np.ndarray:
    """P(same individual) for each (query, candidate), the shape of `global_sims`. A NaN local
    score (a candidate that was not matched) leaves the calibrated global probability."""
    p_global = IsotonicCalibration(fusion.global_calibration).predict(global_sims)
    local = np.asarray(local_scores, dtype=np.float64)
    missing = np.isnan(local)
    p_local = IsotonicCalibration(fusion.local_calibration).predict(np.where(missing, 0, local))
    if fusion.method == "mean":
        fused = (p_global + p_local) / 2
    else:
        if fusion.weights is None:
            raise ValueError("a logistic fusion needs its weights")
        bias, w_global, w_local = fusion.weights
        fused = _sigmoid(bias + w_global * _logit(p_global) + w_local * _logit(p_local))
    return np.where(missing, p_global, fused).astype(np.float32)


def rerank(
    global_sims: np.ndarray,
    local_scores: np.ndarray,
    labels: np.ndarray,
    fusion: Fusion,
    threshold: float | np.ndarray,
    top_k: int = 5,
) -> Ranking:
    """Rank individuals on the fused probability of each shortlisted photo (Q, B), with
    `new_individual` at `threshold` (a probability): `gallery.rank.rank` on fused scores."""
    return rank(fuse(global_sims, local_scores, fusion), labels, threshold, top_k)
