"""Calendar inputs derived from each row's timestamp: sin/cos of the time of day and day of week.

One definition with the device: the values come from runtime/derived.py (`DerivedInputs.table`,
the array form of what the device computes per reading), from the manifest section this module's
`section` writes. A cycle input is fn(2*pi * (wall mod period) / period), with `wall` the time
on the data's wall clock in seconds since 1970-01-01 00:00: local time in the `--timezone`
zone, or the fixed `--utc-offset-hours` clock (runtime/times.py reads device times the same way).

`auto` adds a cycle only where the data can teach it: the time of day when a day spans at least
four samples and the training data covers at least two days; the day of week when a sample is at
most a day and the data covers at least three weeks (many series: the longest series' training
rows, not all series' rows end to end).

`add_identity` adds the series' identity (runtime/derived.py `identity`), one input per series, to a
model of many series (`--series-input on`): each series gets its own bias in the GRU's gates. It is
off by default because it measured no better, within run-to-run noise (2026-12-06, seed 0, this
machine): the nine Appliances rooms within 5% of each room's own model on 5 of 9 with it and 5 of
9 without; the rooms beside traffic within 0.1-7% of the same MAE per series either way (traffic
624 against 628 vehicles/h). An earlier scratch run, with the one-hot standardized and one
deadband for all, gave 6 of 9. Its inputs are kept as they are (1 and 0, not z-scored), and each
costs 3H weights, so 64 series add as many as 64 features.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from runtime.derived import DerivedInputs, identity

from .data import DataError, Series

CYCLES = {"day": ("time_of_day", 86400.0), "week": ("day_of_week", 604800.0)}
CHOICES = ("auto", "none", "day", "week", "day,week")
IDENTITY = ("off", "on")
TRAIN_SHARE = 0.7           # the chronological training split's share of the rows (train/prepare.py)


def choose(kind: str, period_s: float | None, span_s: float) -> list[str]:
    """The cycles to add for `--calendar kind` (auto, none, day, week, day,week)."""
    if kind not in CHOICES:
        raise DataError(f"--calendar {kind!r} is not one of {', '.join(CHOICES)}")
    if kind == "none":
        return []
    if period_s is None:
        if kind == "auto":
            return []
        raise DataError(f"--calendar {kind} needs timestamps, and the data has no time column (name it with --time-col)")
    if kind != "auto":
        return kind.split(",")
    out = []
    if period_s <= 86400.0 / 4 and span_s >= 2 * 86400.0:
        out.append("day")
    if period_s <= 86400.0 and span_s >= 21 * 86400.0:
        out.append("week")
    return out


def section(cycles: list[str], utc_offset_s: float = 0.0, timezone: str | None = None,
            time_source: dict | None = None) -> dict:
    """The manifest's `derived_inputs` section for these cycles, on an IANA zone or a fixed offset;
    `time_source`: the file's time column(s) and day order (train/data.Series.time_source)."""
    inputs = [{"name": f"{CYCLES[c][0]}_{fn}", "kind": "cycle", "fn": fn, "period_s": CYCLES[c][1]}
              for c in cycles for fn in ("sin", "cos")]
    clock = {"timezone": timezone} if timezone is not None else {"utc_offset_s": float(utc_offset_s)}
    return {**clock, **(time_source or {}), "inputs": inputs}


def values(spec: dict, wall_s: np.ndarray) -> np.ndarray:
    """The section's inputs at each wall-clock time: float64 [N, D] (runtime/derived.py's definition)."""
    return DerivedInputs(spec).table(wall_s)


def add_calendar(series: Series, kind: str = "auto") -> Series:
    """The series with its calendar inputs appended to `inputs` (and described in `derived`), on
    the series' clock (its time zone, or its fixed UTC offset). Without any (a weekly series,
    --calendar none), `derived` still names the time column(s), the day order and the clock, for
    the device to read the times as training did (serve finds a time column by name otherwise)."""
    rows = max((p.stop - p.start for p in series.parts), default=len(series.target))     # many series: the longest
    span = TRAIN_SHARE * rows * (series.period_s or 0.0)
    cycles = choose(kind, series.period_s if series.start_s is not None else None, span)
    spec = section(cycles, series.utc_offset_s, series.timezone, series.time_source)
    if not cycles:       # no inputs; the device still reads the times training read, on its clock
        return dataclasses.replace(series, derived=spec) if series.time_source else series
    extra = values(spec, series.wall_times())
    extra[np.isnan(series.inputs).any(axis=1)] = np.nan      # outside segments, like the raw inputs
    return dataclasses.replace(series, inputs=np.concatenate([series.inputs, extra], axis=1), derived=spec)


def add_identity(series: Series, how: str = "off") -> Series:
    """The series with its identity inputs appended to `inputs` (`series_<i>`, kind series, after the
    calendar's in `derived`) for a model of two or more series when `how` is on."""
    if how not in IDENTITY:
        raise DataError(f"--series-input {how!r} is not one of {', '.join(IDENTITY)}")
    ids = [p.id for p in series.parts]
    if how == "off" or len(ids) < 2:
        return series
    extra = np.zeros((len(series.target), len(ids)))
    for p in series.parts:
        extra[p.start:p.stop] = identity(ids, p.id)
    extra[np.isnan(series.inputs).any(axis=1)] = np.nan      # outside segments, like the raw inputs
    spec = series.derived or section([], series.utc_offset_s, series.timezone)
    spec = {**spec, "inputs": spec["inputs"] + [{"name": f"series_{i}", "kind": "series", "id": sid}
                                                for i, sid in enumerate(ids)]}
    return dataclasses.replace(series, inputs=np.concatenate([series.inputs, extra], axis=1), derived=spec)
