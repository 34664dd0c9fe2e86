"""Calendar inputs derived from each row's timestamp: sin/cos of the time of day and day of week.

The workstation half of one definition; runtime/derived.py is the device half (one reading at a
time) and reads the same manifest section this module's `section` writes. A test checks that both
give the same values. A cycle input is fn(2*pi * (wall mod period) / period), with `wall` the
timestamp on the data's own clock in seconds since 1970-01-01 00:00.

`auto` adds a cycle only where the data can teach it: the time of day when a day spans at least
four samples and the training data covers at least two days; the day of week when a sample is at
most a day and the data covers at least three weeks.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .data import DataError, Series

CYCLES = {"day": ("time_of_day", 86400.0), "week": ("day_of_week", 604800.0)}
CHOICES = ("auto", "none", "day", "week", "day,week")
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


def section(cycles: list[str], utc_offset_s: float = 0.0) -> dict:
    """The manifest's `derived_inputs` section for these cycles."""
    inputs = [{"name": f"{CYCLES[c][0]}_{fn}", "kind": "cycle", "fn": fn, "period_s": CYCLES[c][1]}
              for c in cycles for fn in ("sin", "cos")]
    return {"utc_offset_s": float(utc_offset_s), "inputs": inputs}


def values(spec: dict, wall_s: np.ndarray) -> np.ndarray:
    """The section's inputs at each wall-clock time: float64 [N, D]."""
    cols = []
    for d in spec["inputs"]:
        p = float(d["period_s"])
        cols.append({"sin": np.sin, "cos": np.cos}[d["fn"]](2.0 * np.pi * np.mod(wall_s, p) / p))
    return np.stack(cols, axis=1) if cols else np.zeros((len(wall_s), 0))


def add_calendar(series: Series, kind: str = "auto", utc_offset_s: float = 0.0) -> Series:
    """The series with its calendar inputs appended to `inputs` (and described in `derived`)."""
    span = TRAIN_SHARE * len(series.target) * (series.period_s or 0.0)
    cycles = choose(kind, series.period_s if series.start_s is not None else None, span)
    if not cycles:
        return series
    spec = section(cycles, utc_offset_s)
    extra = values(spec, series.wall_times())
    extra[np.isnan(series.inputs).any(axis=1)] = np.nan      # outside segments, like the raw inputs
    return dataclasses.replace(series, inputs=np.concatenate([series.inputs, extra], axis=1), derived=spec)
