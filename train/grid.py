"""A table's rows on a regular time grid: the sample period and the readings' phase found in their
times, each reading put in its period by the device's rule (runtime/service/clock.period_index),
readings sharing a period averaged, short gaps interpolated and long ones split into segments.
"""
from __future__ import annotations

import numpy as np

from runtime.service.clock import period_indices

from .resample import nan_runs, period_means
from .table import DataError


def on_grid(columns: dict, times, report, max_gap: int, period: float | None, epoch0):
    """(column -> values on the regular grid, column -> the cells interpolated (no reading), its
    gap-free segments, the period or None, the long gaps' shifts, the phase, row 0's time): short
    gaps interpolated, long ones split; readings sharing a period averaged; rows in file order
    without times."""
    n_rows = len(next(iter(columns.values())))
    if times is not None and n_rows > 1:
        pos, period, split_after, shifts, phase, row0 = _regular_grid(times, report, max_gap, period, epoch0)
    else:
        pos, period, split_after, shifts, phase, row0 = np.arange(n_rows), None, np.array([], dtype=int), [], None, epoch0
    n = int(pos[-1]) + 1 if n_rows else 0
    cut, grid, filled = np.zeros(n, dtype=bool), {}, {}
    for c, v in columns.items():
        grid[c] = period_means(pos, v, n)
        empty = np.isnan(grid[c])
        report.interpolated_cells += _fill_gaps(grid[c], max_gap, cut)
        filled[c] = empty & np.isfinite(grid[c])
    report.dropped_rows = int(cut.sum())
    segments = _segments(n, cut, pos[split_after] + 1)
    report.segments = len(segments)
    return grid, filled, segments, period, shifts, phase, row0


def _regular_grid(times: np.ndarray, report, max_gap: int, period: float | None, epoch0: float):
    """(grid position of every row, the period: given, or found in the intervals; the split points at
    long gaps and their shifts; the phase: None where `period` was given, the grid's clock time of
    row 0). A reading's position is its period by the device's rule (runtime/service/clock.period_index)
    on a lattice centred on the readings' own phase: a logger on the hour with a few seconds of
    jitter, or 128 Hz stamped in whole ms, has one reading a period on the device too. epoch0: the
    first reading's time on the grid's clock."""
    d = np.diff(times)
    phased = period is None
    if phased:
        period = float(np.median(d)) if len(d) else 1.0
        if period <= 0:
            raise DataError("timestamps do not advance (median interval is 0)")
        period = _refined_period(d, period, max_gap)
        _refuse_calendar_steps(d, period)
    epoch, unit = epoch0 + times, _resolution(d)
    phase = reading_phase(epoch, period, unit) if phased else None
    k = period_indices(epoch, period, phase)
    steps = np.diff(k)
    # (off by less than the times' resolution is no irregularity: 128 Hz in whole ms is 7 and 8 ms apart)
    report.irregular_intervals = int(np.sum(np.abs(d - steps * period) > 0.1 * period + unit))
    report.shared_periods = int(np.sum(steps == 0))
    # Intervals of up to max_gap+1 periods are bridged by interpolation; longer ones split.
    split_after = np.flatnonzero(steps > max_gap + 1)
    report.long_gaps += len(split_after)
    bridged = np.where(steps > max_gap + 1, 1, steps)
    report.missing_samples = int(np.sum(np.maximum(bridged - 1, 0)))
    pos = np.concatenate([[0], np.cumsum(bridged)])
    # Each long gap is one period on the grid: the rows after it are later by the rest (row_seconds).
    shifts = [[int(pos[i + 1]), float((steps[i] - 1) * period)] for i in split_after]
    row0 = phase + k[0] * period if phased else epoch0
    return pos, period, split_after, shifts, phase, float(row0)


CALENDAR_STEPS = ((27, "a month"), (85, "a quarter"), (360, "a year"))     # days: readings about this far apart


def _refuse_calendar_steps(d: np.ndarray, period: float) -> None:
    """DataError for readings a calendar month, quarter or year apart (28-31 days, 90-92, 365-366):
    the device's periods have one length, and a 31-day grid merged two pairs of months a decade."""
    days = d[np.rint(d / period) == 1] / 86400.0
    if period < CALENDAR_STEPS[0][0] * 86400.0 or not len(days) or days.max() - days.min() < 1.0 - 1e-6:
        return
    what = [w for lo, w in CALENDAR_STEPS if period >= lo * 86400.0][-1]
    raise DataError(f"readings about {what} apart ({days.min():.0f} to {days.max():.0f} days): calendar months, "
                    "quarters and years have no one length, and a model steps in one fixed sample period "
                    "(from milliseconds to weeks); expected readings at a fixed interval")


def reading_phase(epoch: np.ndarray, period_s: float, unit: float = 0.0) -> float:
    """Where in their periods readings fall (seconds in [0, period)): the circular mean of each
    time's offset past a multiple of the period, to the `unit` the times are written in (a jitter's
    0.124 s is no phase of times written in whole seconds)."""
    angle = 2 * np.pi * np.mod(epoch, period_s) / period_s
    mean = np.arctan2(np.sin(angle).mean(), np.cos(angle).mean())
    phase = mean / (2 * np.pi) * period_s               # (signed: -0.4 ms of whole-ms stamps rounds to 0)
    if unit:
        phase = round(phase / unit) * unit
    phase = float(np.mod(phase, period_s))
    return phase if phase < period_s else 0.0          # (np.mod of a hair below 0 is the period itself)


# Sample periods loggers are set to (seconds), and the rates (Hz) of faster sensors: an estimate
# within SNAP of one is that one.
ROUND_RATES = (2, 4, 5, 8, 10, 16, 20, 25, 30, 32, 40, 50, 60, 64, 100, 120, 125, 128, 200, 250, 256, 500, 512,
               1000, 1024, 2000, 2048, 4000, 4096, 8000, 8192)
ROUND_PERIODS = tuple(1 / r for r in ROUND_RATES) + (
    1, 2, 5, 10, 15, 20, 30, 60, 120, 180, 300, 600, 900, 1200, 1800, 3600, 7200, 10800, 14400, 21600, 43200, 86400,
    604800)
SNAP = 0.005


def round_up(period_s: float) -> float:
    """The shortest round period (ROUND_PERIODS) of at least `period_s`, for --resample's hint."""
    return min((p for p in ROUND_PERIODS if p >= period_s * (1 - SNAP)), default=period_s)


def _refined_period(d: np.ndarray, median: float, max_gap: int) -> float:
    """The sample period: the mean over the bridged intervals (time over whole periods), then a round
    period within SNAP of it. The median interval of jittered readings (a logger's ±20%) was 3594 s
    for an hourly logger: row k's time drifted 3.3 hours from its reading's by row 2000, and the
    device's clock would bucket readings by a 3594 s period. A 64 Hz sensor stamped in whole ms
    (15 and 16 ms apart) had a median of 16 ms, and the device put 2.3% of its readings in the last
    one's period."""
    steps = np.rint(d / median)
    ok = steps <= max_gap + 1            # (a reading early in its period, jittered: 0 steps, its time counted)
    mean = float(d[ok].sum() / steps[ok].sum()) if steps[ok].sum() > 0 else median
    # Extra readings between the scheduled ones (events) are no jitter; the median of intervals
    # written in whole ms (or s) is off the period by up to that resolution.
    if abs(mean / median - 1) > 0.01 + _resolution(d[ok]) / median:
        mean = median
    near = min(ROUND_PERIODS, key=lambda p: abs(mean / p - 1))
    return float(near) if abs(mean / near - 1) <= SNAP else mean


def _resolution(d: np.ndarray) -> float:
    """The unit the times are written in, up to a second (0.001 s for 15 and 16 ms apart): the
    largest of 1 s, 0.1 s, ... 1 µs that every interval is a whole number of; 0 for none."""
    for unit in (1.0, 0.1, 0.01, 1e-3, 1e-4, 1e-5, 1e-6):
        if np.all(np.abs(d / unit - np.rint(d / unit)) < 1e-3):
            return unit
    return 0.0


def _fill_gaps(col: np.ndarray, max_gap: int, cut: np.ndarray) -> int:
    """Interpolate NaN runs of length <= max_gap in place; mark longer runs in `cut`."""
    filled = 0
    for a, b in nan_runs(col):
        if b - a > max_gap or a == 0 or b == len(col):
            cut[a:b] = True
            continue
        col[a:b] = np.interp(np.arange(a, b), [a - 1, b], [col[a - 1], col[b]])
        filled += b - a
    return filled


def _segments(n: int, cut: np.ndarray, starts_after_gap: np.ndarray) -> list:
    """Gap-free [start, stop) runs: cut rows are outside every run; a long time gap starts a new one."""
    boundary = np.zeros(n + 1, dtype=bool)
    boundary[starts_after_gap] = True
    segments, start = [], None
    for i in range(n + 1):
        if i < n and not cut[i] and not (boundary[i] and start is not None):
            start = i if start is None else start
            continue
        if start is not None:
            segments.append((start, i))
        start = None if (i == n or cut[i]) else i
    return segments
