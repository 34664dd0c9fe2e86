"""Chronological splits, the scaler (fitted on the training split only) and forecast targets.

The scaler is runtime/scaler.Scaler, the one the device applies: training fits it here.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.scaler import Scaler

from .data import DataError, Series

SPLITS = ("train", "val", "test")


def fit_scaler(x: np.ndarray, names: list[str]) -> Scaler:
    """The standard scaler (runtime/scaler.Scaler, the one definition) on the training rows x.

    Raises:
        DataError: a column with zero spread (it would divide by zero), named.
    """
    sc = Scaler.fit(x)
    const = [n for n, s in zip(names, sc.to_dict()["scale"]) if not s > 1e-12]
    if const:
        raise DataError(f"constant column(s) {', '.join(const)} (zero spread in the training split); "
                        "remove them with --exclude")
    return sc


def split_segments(segments, n: int, fractions=(0.7, 0.15, 0.15)) -> dict:
    """Cut gap-free segments at chronological split points; never shuffles across time."""
    bounds = np.rint(np.cumsum([0, *fractions]) / sum(fractions) * n).astype(int)
    out = {}
    for name, lo, hi in zip(SPLITS, bounds[:-1], bounds[1:]):
        out[name] = [(max(a, lo), min(b, hi)) for a, b in segments if min(b, hi) > max(a, lo)]
    return out


@dataclass
class Prepared:
    """Normalized arrays and the split index ranges a model trains and is scored on."""
    series: Series
    x: np.ndarray            # float32 [N, I] normalized inputs
    y: np.ndarray            # float32 [N, K] normalized targets t+1..t+K (NaN past a segment end)
    y_raw: np.ndarray        # float64 [N, K] the same in raw units
    splits: dict             # name -> [(start, stop)] forecast origins with all K targets known
    in_scaler: Scaler
    out_scaler: Scaler
    horizon: int

    @property
    def target_feature(self):
        """Index of the target among the inputs (its own history), or None."""
        f = self.series.features
        return f.index(self.series.target_name) if self.series.target_name in f else None


def prepare(series: Series, horizon: int, min_rows: int = 64,
            fractions=(0.7, 0.15, 0.15)) -> Prepared:
    """Split chronologically, fit scalers on the training split, build horizon targets.

    Raises:
        DataError: too few rows for the horizon, a constant column in the training split.
    """
    if horizon < 1:
        raise DataError(f"horizon must be at least 1, got {horizon}")
    n = len(series.target)
    raw = split_segments(series.segments, n, fractions)
    # Forecast origins: a window needs all K future targets inside its own segment.
    splits = {k: [(a, b - horizon) for a, b in v if b - horizon - a >= 1] for k, v in raw.items()}
    sizes = {k: sum(b - a for a, b in v) for k, v in splits.items()}
    if sizes["train"] < min_rows or min(sizes["val"], sizes["test"]) < max(8, min_rows // 8):
        raise DataError(f"too few rows for horizon {horizon}: usable forecast origins per split "
                        f"{sizes} (need at least {min_rows} to train); supply more data or a shorter horizon")
    train_rows = np.concatenate([np.arange(a, b) for a, b in raw["train"]])
    in_scaler = fit_scaler(series.inputs[train_rows], series.input_names)
    out_scaler = fit_scaler(series.target[train_rows], [series.target_name])
    y_raw = np.full((n, horizon), np.nan)
    for a, b in series.segments:
        for k in range(horizon):
            y_raw[a:b - k - 1, k] = series.target[a + k + 1:b]
    x = in_scaler.normalize(series.inputs, np.float64).astype(np.float32)     # float64 math, float32 stored
    y = out_scaler.normalize(y_raw, np.float64).astype(np.float32)
    return Prepared(series, x, y, y_raw, splits, in_scaler, out_scaler, horizon)
