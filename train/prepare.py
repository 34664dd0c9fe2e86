"""Chronological splits, the scaler (fitted on the training split only) and forecast targets.

The scaler is runtime/scaler.Scaler, the one the device applies: training fits it here.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from runtime.scaler import Scaler

from .data import DataError, Series

SPLITS = ("train", "val", "test")
MIN_SPREAD = 1e-12      # a column whose training spread is not above this never moves: constant


def fit_scaler(x: np.ndarray, names: list[str]) -> Scaler:
    """The standard scaler (runtime/scaler.Scaler, the one definition) on the training rows x.

    Raises:
        DataError: a column with zero spread (it would divide by zero), named.
    """
    sc = Scaler.fit(x)
    const = [n for n, s in zip(names, sc.to_dict()["scale"]) if not s > MIN_SPREAD]
    if const:
        raise DataError(f"constant column(s) {', '.join(const)} (zero spread in the training split); "
                        "remove them with --exclude")
    return sc


def split_segments(segments, n: int, fractions=(0.7, 0.15, 0.15), parts=()) -> dict:
    """Cut gap-free segments at chronological split points; never shuffles across time.

    parts: for many series (train/data.Part), each series' own rows are split chronologically,
    so every series has its own train, validation and test stretch."""
    out = {name: [] for name in SPLITS}
    for p0, p1 in [(p.start, p.stop) for p in parts] or [(0, n)]:
        bounds = p0 + np.rint(np.cumsum([0, *fractions]) / sum(fractions) * (p1 - p0)).astype(int)
        for name, lo, hi in zip(SPLITS, bounds[:-1], bounds[1:]):
            out[name] += [(max(a, lo), min(b, hi)) for a, b in segments
                          if min(b, hi) > max(a, lo) and p0 <= a < p1]
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
    # Many series (series.parts): id -> (input Scaler, target Scaler) fitted on that series' training
    # rows; x and y are normalized by them, while in_scaler/out_scaler are the pooled ones (a node
    # the model has never seen is forecast with those).
    series_scalers: dict = field(default_factory=dict)
    series_id: str | None = None    # `part`'s: the one series of a many-series set these rows are

    def part(self, p) -> "Prepared":
        """One series (a train/data.Part) alone: its rows, splits and scalers, as if prepared alone."""
        s = self.series
        sub = replace(s, inputs=s.inputs[p.start:p.stop], target=s.target[p.start:p.stop],
                      interpolated=None if s.interpolated is None else s.interpolated[p.start:p.stop],
                      segments=[(a - p.start, b - p.start) for a, b in s.segments if p.start <= a < p.stop],
                      start_s=p.start_s, parts=[],
                      shifts=[[r - p.start, sec] for r, sec in s.shifts if p.start <= r < p.stop])
        splits = {k: [(a - p.start, b - p.start) for a, b in v if p.start <= a < p.stop]
                  for k, v in self.splits.items()}
        ins, outs = self.series_scalers.get(p.id, (self.in_scaler, self.out_scaler))
        return Prepared(sub, self.x[p.start:p.stop], self.y[p.start:p.stop], self.y_raw[p.start:p.stop],
                        splits, ins, outs, self.horizon, series_id=p.id)

    @property
    def target_feature(self):
        """Index of the target among the inputs (its own history), or None."""
        f = self.series.features
        return f.index(self.series.target_name) if self.series.target_name in f else None


def split_rows(data: "Prepared", split: str) -> np.ndarray:
    """The row indices of a split's forecast origins, in order (empty when it has none)."""
    ranges = data.splits[split]
    return np.concatenate([np.arange(a, b) for a, b in ranges]) if ranges else np.zeros(0, int)


def prepare(series: Series, horizon: int, min_rows: int = 64,
            fractions=(0.7, 0.15, 0.15)) -> Prepared:
    """Split chronologically, fit scalers on the training split, build horizon targets.

    Raises:
        DataError: too few rows for the horizon, a constant column in the training split.
    """
    if horizon < 1:
        raise DataError(f"horizon must be at least 1, got {horizon}")
    n = len(series.target)
    raw = split_segments(series.segments, n, fractions, series.parts)
    # Forecast origins: a window needs all K future targets inside its own segment.
    splits = {k: [(a, b - horizon) for a, b in v if b - horizon - a >= 1] for k, v in raw.items()}
    sizes = {k: int(sum(b - a for a, b in v)) for k, v in splits.items()}
    if sizes["train"] < min_rows or min(sizes["val"], sizes["test"]) < max(8, min_rows // 8):
        least = max(8, min_rows // 8)
        need = int(np.ceil(max(min_rows / fractions[0], least / min(fractions[1:])))) + 3 * horizon
        raise DataError(f"too few rows for horizon {horizon}: usable forecast origins per split "
                        f"{sizes} (need at least {min_rows} to train and {least} each to validate and test: about "
                        f"{need} readings in one piece); supply more data"
                        + (" or a shorter horizon" if horizon > 1 else "") + _most_missing(series))
    in_scaler, out_scaler = _scalers(series, raw["train"])
    in_scaler = _identity_as_is(in_scaler, series.identity_inputs)
    y_raw = np.full((n, horizon), np.nan)
    for a, b in series.segments:
        for k in range(min(horizon, b - a - 1)):          # (a segment shorter than the horizon: its first steps)
            y_raw[a:b - k - 1, k] = series.target[a + k + 1:b]
    x = in_scaler.normalize(series.inputs, np.float64).astype(np.float32)     # float64 math, float32 stored
    y = out_scaler.normalize(y_raw, np.float64).astype(np.float32)
    per = {}
    for p in series.parts if len(series.parts) > 1 else ():
        per[p.id] = ins, outs = _own_scalers(series, p, [(a, b) for a, b in raw["train"] if p.start <= a < p.stop],
                                             in_scaler, out_scaler)
        rows = slice(p.start, p.stop)
        x[rows] = ins.normalize(series.inputs[rows], np.float64).astype(np.float32)
        y[rows] = outs.normalize(y_raw[rows], np.float64).astype(np.float32)
        if not any(p.start <= a < p.stop for a, _ in splits["test"]):
            series.report.unscored[p.id] = (p.stop - p.start, horizon)
    return Prepared(series, x, y, y_raw, splits, in_scaler, out_scaler, horizon, per)


def _own_scalers(series: Series, part, train: list, pooled_in: Scaler, pooled_out: Scaler) -> tuple:
    """A series' own (input, target) scalers, fitted on its `train` ranges: its features' and target's
    mean and spread; derived inputs keep the pooled ones (one time for all streams; a series' identity
    inputs are constant within it). A column that never moves there (a stuck sensor) keeps its own
    mean and takes the pooled spread (its z-scores are 0, as they should be), noted in the report;
    a series without training rows takes the pooled scalers."""
    f, rows = len(series.features), np.concatenate([np.arange(a, b) for a, b in train] or [np.zeros(0, int)])
    fitted, still = [], []
    for x, pooled, names in ((series.inputs[rows, :f], pooled_in, series.input_names[:f]),
                             (series.target[rows], pooled_out, [series.target_name])):
        off, scale = pooled.to_dict()["offset"][:len(names)], pooled.to_dict()["scale"][:len(names)]
        if len(rows):
            own = Scaler.fit(x).to_dict()
            moves = np.asarray(own["scale"]) > MIN_SPREAD
            off = np.where(np.isfinite(own["offset"]), own["offset"], off)
            scale = np.where(moves, own["scale"], scale)
            still += [n for n, m in zip(names, moves) if not m and n not in still]
        fitted.append((np.asarray(off, np.float64), np.asarray(scale, np.float64)))
    if still:
        series.report.pooled_spread[part.id] = still
    (in_off, in_scale), target = fitted
    d = pooled_in.to_dict()
    return Scaler(np.r_[in_off, d["offset"][f:]], np.r_[in_scale, d["scale"][f:]]), Scaler(*target)


def _identity_as_is(sc: Scaler, n: int) -> Scaler:
    """The scaler with its last n inputs, the series' identity, left as they are (offset 0, scale 1):
    the model sees 1 and 0 (an unknown node 1/N each), not a z-score that depends on how many rows
    each series has (seed 0 on the nine rooms: standardized, the global model ran to its epoch cap
    and came within 5% of 4 rooms' own models by MAE; as they are, early stopping at 48 and 5)."""
    if not n:
        return sc
    d = sc.to_dict()
    return Scaler(np.r_[d["offset"][:-n], np.zeros(n)], np.r_[d["scale"][:-n], np.ones(n)])


def _most_missing(series) -> str:
    """A hint naming the feature columns missing on a tenth of the rows or more (a sensor that died
    mid-file cuts every row after it out of the segments), or ''."""
    missing = np.isnan(series.inputs[:, :len(series.features)]).mean(axis=0)
    worst = [(m, f) for m, f in sorted(zip(missing, series.features), reverse=True) if m >= 0.1][:3]
    if not worst or len(worst) == len(series.features):
        return ""
    return ("; rows are cut where a column is missing: " + ", ".join(f"{f} on {m:.0%} of them" for m, f in worst)
            + f" (--exclude {','.join(f for _, f in worst)} trains without)")


def _scalers(series: Series, train: list) -> tuple:
    """(input Scaler, target Scaler) fitted on the rows of the `train` ranges."""
    if not train:
        raise DataError("no training rows (every segment is too short)")
    rows = np.concatenate([np.arange(a, b) for a, b in train])
    return (fit_scaler(series.inputs[rows], series.input_names),
            fit_scaler(series.target[rows], [series.target_name]))
