"""Chronological splits, the scaler (fitted on the training split only) and forecast targets."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .data import DataError, Series

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Scaler:
    """x_norm = (x - offset) / scale with the training split's mean and std.

    The device-side counterpart is runtime/scaler.Scaler, built from the manifest; the runtime's
    out-of-range and reject bands read the offset and scale as the training mean and std.
    """
    kind: str
    offset: tuple[float, ...]
    scale: tuple[float, ...]

    @staticmethod
    def fit(x: np.ndarray, kind: str, names: list[str]) -> "Scaler":
        x = x.reshape(len(x), -1)
        if kind != "standard":
            raise ValueError(f"unknown scaler '{kind}'; expected 'standard'")
        offset, scale = np.mean(x, axis=0), np.std(x, axis=0)
        const = [n for n, s in zip(names, scale) if not s > 1e-12]
        if const:
            raise DataError(f"constant column(s) {', '.join(const)} (zero spread in the training split); "
                            "remove them with --exclude")
        return Scaler(kind, tuple(map(float, offset)), tuple(map(float, scale)))

    def transform(self, x):
        return (x - np.asarray(self.offset)) / np.asarray(self.scale)

    def inverse(self, x):
        return x * np.asarray(self.scale) + np.asarray(self.offset)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "offset": list(self.offset), "scale": list(self.scale)}

    @staticmethod
    def from_dict(d: dict) -> "Scaler":
        return Scaler(d["kind"], tuple(d["offset"]), tuple(d["scale"]))


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
    in_scaler = Scaler.fit(series.inputs[train_rows], "standard", series.input_names)
    out_scaler = Scaler.fit(series.target[train_rows], "standard", [series.target_name])
    y_raw = np.full((n, horizon), np.nan)
    for a, b in series.segments:
        for k in range(horizon):
            y_raw[a:b - k - 1, k] = series.target[a + k + 1:b]
    x = in_scaler.transform(series.inputs).astype(np.float32)
    y = out_scaler.transform(y_raw).astype(np.float32)
    return Prepared(series, x, y, y_raw, splits, in_scaler, out_scaler, horizon)
