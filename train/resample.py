"""Readings at any times on a regular grid (`train --resample`): a logger that writes on change, a
Home Assistant history export, events. Each period is the mean of the readings in it, binned by the
device's own rule (runtime/service/clock.period_index: serve averages a period's readings alike); a
period without a reading holds the column's last value (a value written on change has not changed),
for up to HOLD_PERIODS periods in a row, as long as the device fills a silent stream before its clock
moves on; a longer silence stays a gap (the grid splits the series there)."""
from __future__ import annotations

import re

import numpy as np

from runtime.service.clock import MAX_GAP_TICKS, period_indices

from .table import DataError

HOLD_PERIODS = MAX_GAP_TICKS
MAX_PERIODS = 20_000_000        # periods from the first reading to the last (float64: 160 MB a column)
_UNITS = {"ms": 1e-3, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_CALENDAR = re.compile(r"\s*\d*\s*(?:M|MS|ME|Q|QS|QE|Y|YS|YE|A|AS)\s*")     # pandas' months, quarters, years


def parse_period(text: str) -> float:
    """'10min', '1h', '30s', '500ms', '1d', '1w' or seconds ('600') → seconds.

    Raises:
        ValueError: not such a period (pandas' `1M` is a month, no minute), or not within 1 ms to 7 days."""
    if _CALENDAR.fullmatch(str(text)):
        raise ValueError(f"{text!r} is a calendar month, quarter or year to pandas, which has no one length; "
                         "expected a fixed period such as 10min, 1h or 1d (minutes: min)")
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", str(text).lower())
    if not m or m.group(2) not in ("", *_UNITS):
        raise ValueError(f"{text!r} is no period; expected a number and a unit, such as 10min, 1h, 30s or 500ms")
    seconds = float(m.group(1)) * _UNITS.get(m.group(2), 1.0)
    if not 1e-3 <= seconds <= 7 * 86400:
        raise ValueError(f"{text!r} is {seconds:g} s; expected a period from 1 ms to 7 days")
    return seconds


def resample(columns: dict, epoch: np.ndarray, period_s: float, report) -> tuple:
    """(column -> one value a period, each period's seconds from the first, the first period's time):
    periods from the first reading's to the last's, less those where every column stays empty. A
    row's time is its period's start plus the mean offset of all readings into their periods (serve
    computes the calendar inputs at its readings' mean time)."""
    idx = period_indices(epoch, period_s)
    k = idx - idx[0]
    n = int(k[-1]) + 1
    if n > MAX_PERIODS:
        raise DataError(f"--resample {period_s:g} s makes {n:,} periods from the first reading to the last; "
                        f"expected at most {MAX_PERIODS:,}: a longer period")
    out = {c: _hold(period_means(k, v, n), report) for c, v in columns.items()}
    rows = np.flatnonzero(np.any([np.isfinite(v) for v in out.values()], axis=0))
    offset = float(np.mean(epoch - idx * period_s))
    report.resample_s = period_s
    return {c: v[rows] for c, v in out.items()}, rows * period_s, float(idx[0] * period_s + offset)


def period_means(k: np.ndarray, v: np.ndarray, n: int) -> np.ndarray:
    """[n]: the mean of v's finite values in each period k (NaN where none), as serve's clock
    averages a period's readings (training's grid takes readings sharing a period alike)."""
    ok = np.isfinite(v)
    count = np.bincount(k[ok], minlength=n)
    return np.where(count > 0, np.bincount(k[ok], weights=v[ok], minlength=n) / np.maximum(count, 1), np.nan)


def nan_runs(v: np.ndarray) -> list:
    """[(start, stop)] of each run of NaN in v."""
    edges = np.diff(np.concatenate([[0], np.isnan(v).astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def _hold(v: np.ndarray, report) -> np.ndarray:
    """v with each run of up to HOLD_PERIODS empty periods after a value holding that value (the
    period's mean: the device holds the last row it stepped)."""
    for a, b in nan_runs(v):
        if a > 0 and b - a <= HOLD_PERIODS:
            v[a:b] = v[a - 1]
            report.held_cells += int(b - a)
    return v
