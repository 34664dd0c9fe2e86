"""The residual's base: a linear AR on the target's last p readings, fitted on the training split,
or the plain level, whichever forecasts the validation split better.

A residual model forecasts the change from a base (runtime/residual.py holds the one definition).
The plain level (the target's current reading) suits a signal that mostly holds still; on one with a
daily cycle sampled hourly, or any that an AR(p) follows closely, the GRU then spends its capacity
learning what least squares gets exactly, and on small data it cannot: 1,300 hourly Yosemite rows
trained to 1.9 °C MAE on the level and 0.85-0.87 on an AR(24) base (bench/small_data.md). The GRU
learns only what the base misses, starting from the base itself (the head starts at zero).

`--base auto` (the default) considers an AR base on small data only (`auto_base`); `--base ar` on
any. On more data auto starts from the level, and gives the AR a second chance after training
(train/pipeline.second_base): when the trained model loses to the AR base alone on validation at
some horizon step, a second model is trained from that AR and the one with the lower validation
MAE is kept. A GRU that cannot beat a linear AR it could have started from has not learned the
cycle from the level: room2 of the Appliances rooms, trained alone, ran its 100 epochs to 0.207
test MAE on the level, 40% behind AR(24), and reached 0.147 from an AR(16) base, ahead of it.

The candidates are the level and AR(p) for p in BASE_LAGS, each fitted by least squares on
every training origin of every series (normalized, so one base serves many series), and chosen by
their mean normalized MAE on the validation split; an AR base must beat the level by BASE_MARGIN.
p stops at 24: a day of hourly readings, 96 bytes a stream on the device; longer seasons (a day of
10-minute readings is 144) are left to the GRU.
"""
from __future__ import annotations

import numpy as np

from runtime.residual import base_of, lag_window

from .prepare import Prepared, split_rows

SMALL_DATA_ROWS = 5_000          # auto: an AR base only below this many training rows per series (median)
BASE_LAGS = (2, 4, 8, 16, 24)
BASE_MARGIN = 0.05              # an AR base must beat the level by 5% on validation: on random walks
                                # (nothing to regress) the best AR came within 0.98-1.03 of the level
MAX_FIT_ROWS = 200_000          # training origins used for the fit (evenly spaced beyond that)


def series_base(data: Prepared, j: int | None, base, own=()) -> np.ndarray | None:
    """The base at every row [N, K] ([N, 1]: the level), each segment streamed from its start as the
    device streams it; None for a model without residual_input. own: ((series id, base), ...), the
    bases of those series of a many-series `data` (or of `data` itself, one series' part) that have their own."""
    if j is None:
        return None
    own = dict(own)
    parts = [(p.start, p.stop, p.id) for p in data.series.parts] or [(0, len(data.x), data.series_id)]
    out = np.zeros((len(data.x), len(base[0]) if base else 1), np.float32)
    for a, b in data.series.segments:
        sid = next((i for lo, hi, i in parts if lo <= a < hi), None)
        out[a:b] = base_of(data.x[a:b, j], own.get(sid, base))
    return out


def base_step_mae(data: Prepared, j: int, base, rows: np.ndarray | None = None) -> np.ndarray:
    """The base alone as a forecast: its normalized MAE per horizon step [K] on `rows` (the validation
    origins when None)."""
    rows = split_rows(data, "val") if rows is None else rows
    return np.mean(np.abs(data.y[rows] - series_base(data, j, base)[rows]), axis=0)


def lag_rows(data: Prepared, j: int, p: int) -> np.ndarray:
    """[N, p + 1]: at every row the level's last p readings as `base_of` sees them (each segment
    from its start), and a constant."""
    lags = np.zeros((len(data.x), p + 1))
    lags[:, p] = 1.0
    for a, b in data.series.segments:
        lags[a:b, :p] = lag_window(data.x[a:b, j].astype(np.float64), p)
    return lags


def fit_ar(data: Prepared, j: int, p: int) -> tuple:
    """AR(p) coefficients [p + 1][K] by least squares on the training origins."""
    rows = split_rows(data, "train")
    rows = rows[np.linspace(0, len(rows) - 1, min(len(rows), MAX_FIT_ROWS)).astype(int)]
    coef, *_ = np.linalg.lstsq(lag_rows(data, j, p)[rows], data.y[rows].astype(np.float64), rcond=None)
    return tuple(tuple(float(v) for v in r) for r in coef)


def training_rows_per_series(data: Prepared) -> float:
    """The median number of training origins per series (all of them for one series)."""
    parts = data.series.parts or [None]
    rows = [sum(min(b, p.stop) - max(a, p.start) for a, b in data.splits["train"] if a < p.stop and b > p.start)
            if p is not None else sum(b - a for a, b in data.splits["train"]) for p in parts]
    return float(np.median(rows))


BASES = ("auto", "ar", "level")


def base_for(data: Prepared, j: int | None, how: str) -> tuple:
    """The base a new model forecasts from (ModelSpec.base): 'level' (), 'ar' (`choose_base`) or
    'auto' (`auto_base`)."""
    if how not in BASES:
        raise ValueError(f"unknown base '{how}'; expected one of {', '.join(BASES)}")
    return () if how == "level" else choose_base(data, j) if how == "ar" else auto_base(data, j)


def auto_base(data: Prepared, j: int | None) -> tuple:
    """--base auto: `choose_base` on small data (a median below SMALL_DATA_ROWS training rows per
    series), else () (the level). Measured (docs/defaults.md): below it the AR base turned a
    1,300-row hourly series from losing every step to winning every step; on the full sets (13,800
    to 33,000 training rows) the GRU learns the cycle from the level and the AR base cost 6-13% MAE."""
    return choose_base(data, j) if training_rows_per_series(data) < SMALL_DATA_ROWS else ()


def choose_base(data: Prepared, j: int | None) -> tuple:
    """The AR(p) with the lowest validation MAE when that is BASE_MARGIN below the level's, else ()
    (the level: also when there is no target input, no validation origin, or no finite fit)."""
    if j is None or not len(split_rows(data, "val")) or not len(split_rows(data, "train")):
        return ()
    return _best(data, j, (fit_ar(data, j, p) for p in BASE_LAGS), ()) or ()


def _best(data: Prepared, j: int, candidates, reference) -> tuple | None:
    """The finite candidate base with the lowest validation MAE when that is BASE_MARGIN below
    `reference`'s, else None."""
    best, best_mae = None, (1.0 - BASE_MARGIN) * float(np.mean(base_step_mae(data, j, reference)))
    for coef in candidates:
        if not np.isfinite(coef).all():
            continue
        mae = float(np.mean(base_step_mae(data, j, coef)))
        if mae < best_mae:
            best, best_mae = coef, mae
    return best


SERIES_BASES = ("pooled", "own")


def series_bases_for(data: Prepared, j: int | None, pooled, how: str) -> tuple:
    """ModelSpec.series_base: 'pooled', every series from the model's base (()), or 'own'
    (`choose_series_bases`). Pooled is the default: measured with bench.many_series (docs/record.md),
    own bases took the mixed set from 1 to 3 of 10 series beating every baseline at every step and
    traffic from 2.0x to 1.6x its own model's MAE, but the nine rooms from 2 to 1 of 9, their mean
    global/local MAE ratio from 1.03 to 1.08."""
    if how not in SERIES_BASES:
        raise ValueError(f"unknown series base '{how}'; expected one of {', '.join(SERIES_BASES)}")
    return choose_series_bases(data, j, pooled) if how == "own" else ()


def level_ar(horizon: int) -> tuple:
    """The level as an AR(1): every step's forecast is the current reading."""
    return ((1.0,) * horizon, (0.0,) * horizon)


def choose_series_bases(data: Prepared, j: int | None, pooled) -> tuple:
    """Many series with an AR base `pooled`: ((series id, base), ...) for each series whose own best
    candidate (the level, or AR(p) for p in BASE_LAGS fitted on its training split) forecasts its
    validation split BASE_MARGIN better than `pooled` does; () for one series or a level model.
    Measured on bench.many_series' sets (the base alone, validation MAE): traffic's own AR(24) beat
    the AR(24) fitted beside nine rooms by 19%; the level beat it on room5 and room9 by 7% and 33%;
    room4's own AR(24) lost to it by 7-9%, so the pooled base stays the default."""
    if j is None or not pooled or len(data.series.parts) < 2:
        return ()
    own = []
    for p in data.series.parts:
        sub = data.part(p)
        if not len(split_rows(sub, "val")) or not len(split_rows(sub, "train")):
            continue
        best = _best(sub, j, (level_ar(data.horizon), *(fit_ar(sub, j, q) for q in BASE_LAGS)), pooled)
        if best is not None:
            own.append((p.id, best))
    return tuple(own)


def base_name(base) -> str:
    """'level' (also as an AR(1) that forecasts the current reading: `level_ar`) or 'AR(p)'."""
    return "level" if not base or tuple(map(tuple, base)) == level_ar(len(base[0])) else f"AR({len(base) - 1})"


def model_base(model, data: Prepared) -> np.ndarray | None:
    """The model's AR base at every row [N, K] for its forward pass over pieces of `data`; None for
    the plain level (the forward takes it from x) and for models without residual_input."""
    cfg = model.cfg
    return series_base(data, cfg.residual_input, cfg.base, cfg.series_base) if cfg.base else None
