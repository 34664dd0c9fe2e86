"""The deadband: a change the model forecasts smaller than tau_k is forecast as no change at all.

Many sensors mostly read the same value from one sample to the next (a temperature with 0.1 degC
resolution, a counter, a setpoint), so for the near steps "no change" is exactly right most of
the time, and persistence scores well there: on the demo 58% of the 10-minute changes are 0.
A net's forecast is never exactly 0; a small wobble around it costs MAE at every such step. The
deadband zeroes the forecast change of step k where |change| < tau_k, in normalized units. tau_k
is chosen per step on the validation split (streamed, the device's way) to minimize MAE among
quantiles of the model's own |change|; 0 where no threshold helps, so a smooth sensor keeps its
forecasts; HOLD (larger than any change: the step forecasts no change at all) where validation
says the model's changes at that step never pay (a quiet sensor's near steps, which the quantiles
up to 0.9 could not reach). Residual models only (the change is relative to the target's current
reading).

The rule itself has one home, runtime/residual.py (`no_change`, `deadband`), which the device,
evaluation and export call; this module fits its thresholds. `apply` is that definition.
"""
from __future__ import annotations

import numpy as np

from runtime.residual import deadband as apply, no_change

__all__ = ["HOLD", "QUANTILES", "apply", "fit"]

QUANTILES = np.linspace(0.02, 0.9, 45)     # candidate thresholds: these quantiles of |change|, 0 and HOLD
HOLD = 1e30                                # a threshold no change reaches (finite: JSON, float32 and C take it)


def fit(change: np.ndarray, truth: np.ndarray) -> tuple[float, ...]:
    """tau [K] minimizing the MAE of apply(change) against the true changes, per step ([N, K] each)."""
    ok = np.isfinite(change).all(axis=1) & np.isfinite(truth).all(axis=1)
    change, truth = change[ok], truth[ok]
    taus = []
    for k in range(change.shape[1]):
        c, t = change[:, k], truth[:, k]
        cands = np.concatenate([[0.0], np.quantile(np.abs(c), QUANTILES), [HOLD]])
        maes = [np.mean(np.abs(np.where(no_change(c, [tau]), 0.0, c) - t)) for tau in cands]
        taus.append(float(cands[int(np.argmin(maes))]))    # the first minimum: 0 on a tie, HOLD only if strictly best
    return tuple(taus)
