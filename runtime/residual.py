"""Residual-plus-deadband: how a residual model's graph output becomes a forecast. The one definition.

A residual model's graph outputs the forecast's *change* from the target's current reading, its
*level* (x[..., residual_input], normalized): the forecast is level + change, added in float
outside the graph (export/step.py says why). The deadband (manifest `model.deadband`, format 4;
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


def level_of(x: np.ndarray, j) -> np.ndarray | None:
    """The level the residual is added to: x[..., j:j+1] (normalized inputs), None when j is None."""
    return None if j is None else x[..., j:j + 1]


def add_level(y: np.ndarray, x: np.ndarray, j) -> np.ndarray:
    """Residual models (j = residual_input): y += x[..., j:j+1], in place; y unchanged when j is None."""
    if j is not None:
        y += x[..., j:j + 1]
    return y


def apply_deadband(y: np.ndarray, x: np.ndarray, md: dict) -> np.ndarray:
    """Forecasts y [T, O] as `run_stream` gives them (normalized, the level added back) through the
    manifest's deadband (`md` is its model section); no deadband: y itself."""
    j = md.get("residual_input")
    return through_deadband(y, level_of(x, j), md.get("deadband")).astype(np.float32, copy=False)
