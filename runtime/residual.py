"""Base-plus-deadband: how a residual model's graph output becomes a forecast. The one definition.

A residual model's graph outputs the forecast's *change* from a *base*, added in float outside the
graph (export/step.py says why). The base is the target's current reading, its *level*
(x[..., residual_input], normalized), unless the manifest's `model.base` (format 7; a series' own,
`series.<id>.base`, format 10, for that series' streams) holds a linear
autoregression on the level's last p readings (`base_of`): row i of its [p + 1, K] coefficients
weighs the level i steps back, the last row is a constant, column k is horizon step k + 1. Before a
stream has p readings (at its start, after a reset) the missing ones are its first reading. The
device keeps those p normalized levels per stream (4p bytes); train/base.py fits the coefficients
and chooses p, or the plain level, on the validation split.

The deadband (below) is always about the level: where the forecast's change from the current
reading is small, the forecast is the current reading (a sensor that holds still), whatever the base. The deadband (manifest `model.deadband`, format 4;
fitted by train/deadband.fit) forecasts no change where the model's change is small: every
|change_k| < tau_k becomes 0, in normalized units. A model without residual_input has neither.

Everything that turns model outputs into forecasts calls these functions: the engines' `run`,
training's evaluation and deadband fit, export's conformal intervals, quantize's drift report and
the benchmark. Two counterparts mirror them and are tested equal to them: `Forecaster.step`,
which inlines them in its hot path (test_runtime.py), and the C library export.mcu writes.

    >>> import numpy as np
    >>> forecast(np.float32([[0.01, 0.5]]), np.float32([[2.0]]), tau=[0.02, 0.02])
    array([[2. , 2.5]], dtype=float32)
"""
from __future__ import annotations

import numpy as np


def no_change(change, tau) -> np.ndarray:
    """The deadband's rule: True where |change_k| < tau_k (never for NaN). change [..., K], tau [K]."""
    return np.abs(change) < np.asarray(tau, np.float32)


def deadband(change: np.ndarray, tau) -> np.ndarray:
    """change [..., K] with every |change_k| < tau_k set to 0; tau None or empty: change itself."""
    if tau is None or len(tau) == 0:
        return change
    return np.where(no_change(change, tau), np.zeros((), change.dtype), change)


def forecast(change: np.ndarray, level, tau=None) -> np.ndarray:
    """The forecast from the graph's output: level [..., 1] + deadband(change [..., K], tau).

    level None (a model without residual_input): the output is the forecast itself, no deadband.
    """
    if level is None:
        return change
    return level + deadband(change, tau)


def through_deadband(y: np.ndarray, level, tau) -> np.ndarray:
    """Forecasts y [..., K] that already hold the level [..., 1] (as `run` and PyTorch give them),
    passed through the deadband: where |y - level| < tau_k (no_change) the forecast is the level,
    elsewhere y unchanged. tau None or empty, or level None: y."""
    if level is None or tau is None or len(tau) == 0:
        return y
    level = np.asarray(level, y.dtype)
    return np.where(no_change(y - level, tau), level, y)


def lag_window(levels: np.ndarray, p: int) -> np.ndarray:
    """levels [..., T] → [..., T, p]: at each t the levels at t, t-1, ..., t-p+1, the first level
    standing in for those before the start."""
    levels = np.asarray(levels)
    pad = np.repeat(levels[..., :1], p - 1, axis=-1)
    full = np.concatenate([pad, levels], axis=-1)                         # [..., T + p - 1]
    t = levels.shape[-1]
    return np.stack([full[..., p - 1 - i:p - 1 - i + t] for i in range(p)], axis=-1)


def base_of(levels: np.ndarray, base) -> np.ndarray:
    """The base over a stream's levels [..., T] (normalized) → [..., T, K]; base () (the plain level): [..., T, 1].

    On the device, one reading at a time: `lags @ coef[:-1] + coef[-1]`, lags the last p levels, newest first."""
    levels = np.asarray(levels)
    if base is None or len(base) == 0:
        return levels[..., None]
    coef = np.asarray(base, np.float64)
    return (lag_window(levels.astype(np.float64), len(coef) - 1) @ coef[:-1] + coef[-1]).astype(levels.dtype)


def level_of(x: np.ndarray, j) -> np.ndarray | None:
    """The level the residual is added to: x[..., j:j+1] (normalized inputs), None when j is None."""
    return None if j is None else x[..., j:j + 1]


def add_level(y: np.ndarray, x: np.ndarray, j) -> np.ndarray:
    """Residual models (j = residual_input): y += x[..., j:j+1], in place; y unchanged when j is None."""
    if j is not None:
        y += x[..., j:j + 1]
    return y


def with_base(y: np.ndarray, x: np.ndarray, md: dict) -> np.ndarray:
    """Outputs y [T, O] (or [T, B, O]) as `run_stream` gives them from the streams' start (normalized,
    the level added back) with the manifest's base in place of the level (`base_of`): the device's
    forecasts without the deadband. A level model (`md` is the model section): y itself."""
    j = md.get("residual_input")
    if j is None or not md.get("base"):
        return y
    base = np.moveaxis(base_of(np.moveaxis(x[..., j], 0, -1), md["base"]), -2, 0)   # time first
    return (y - x[..., j:j + 1] + base).astype(y.dtype, copy=False)


def apply_deadband(y: np.ndarray, x: np.ndarray, md: dict) -> np.ndarray:
    """`with_base`'s forecasts through the manifest's deadband (about the level); a level model
    without deadband: y itself."""
    j = md.get("residual_input")
    if j is None:
        return y
    return through_deadband(with_base(y, x, md), x[..., j:j + 1], md.get("deadband")).astype(np.float32, copy=False)
