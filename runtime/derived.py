"""Derived inputs: calendar features computed from each reading's time (manifest `derived_inputs`).

The manifest section, written by export from the checkpoint (format version 3):

    "derived_inputs": {"utc_offset_s": 0.0,
                       "inputs": [{"name": "time_of_day_sin", "kind": "cycle", "fn": "sin", "period_s": 86400.0}, ...]}

A `cycle` input is fn(2*pi * (wall mod period_s) / period_s), where `wall` is the reading's
wall-clock time in seconds since 1970-01-01 00:00 on the clock of the training data's timestamps:
a naive time (datetime, ISO 8601 string without an offset) is taken as that wall clock; an aware
time and epoch seconds are UTC, shifted by `utc_offset_s` onto it. train/calendar.py computes the
same values over whole arrays at training time; a test checks the two agree.

The graph input is [raw features..., derived inputs...], both normalized by the bundle's scaler.
"""
from __future__ import annotations

import math
from datetime import datetime

import numpy as np

KINDS = ("cycle",)
FUNCTIONS = {"sin": math.sin, "cos": math.cos}
_EPOCH = datetime(1970, 1, 1)
TIME_HELP = "a datetime, an ISO 8601 string or epoch seconds"


class TimeError(ValueError):
    """A reading's time is missing where the bundle needs one, or is not a time."""


def wall_seconds(t, utc_offset_s: float = 0.0) -> float:
    """Seconds since 1970-01-01 00:00 on the training data's wall clock, for `t`.

    Raises:
        TimeError: `t` is none of a datetime, an ISO 8601 string, epoch seconds (or numpy datetime64).
    """
    if isinstance(t, str):
        try:
            return wall_seconds(float(t), utc_offset_s)       # epoch seconds as text (a CSV cell)
        except ValueError:
            pass
        try:
            t = datetime.fromisoformat(t.strip())
        except ValueError:
            raise TimeError(f"time {t!r} is not an ISO 8601 date-time (e.g. 2016-01-11T17:00:00 or "
                             "2016-01-11T17:00:00+01:00)") from None
    elif isinstance(t, np.datetime64):
        return float((t - np.datetime64("1970-01-01T00:00:00")) / np.timedelta64(1, "s"))
    if isinstance(t, datetime):
        if t.tzinfo is None or t.utcoffset() is None:
            return (t - _EPOCH).total_seconds()
        return t.timestamp() + utc_offset_s
    if isinstance(t, (int, float, np.integer, np.floating)) and not isinstance(t, bool):
        v = float(t)
        if not math.isfinite(v):
            raise TimeError(f"time {t!r} is not finite; expected {TIME_HELP}")
        return v + utc_offset_s
    raise TimeError(f"time {t!r} ({type(t).__name__}) is not a time; expected {TIME_HELP}")


def check_section(section, n: int | None = None) -> list[dict]:
    """The input specs of a `derived_inputs` section, checked (a message names the field)."""
    if section is None:
        return []
    if not isinstance(section, dict) or not isinstance(section.get("inputs"), list):
        raise ValueError("'derived_inputs' must be an object with an 'inputs' list")
    off = section.get("utc_offset_s", 0.0)
    if isinstance(off, bool) or not isinstance(off, (int, float)) or not math.isfinite(off):
        raise ValueError(f"'derived_inputs.utc_offset_s' is {off!r}; expected a finite number of seconds")
    for i, d in enumerate(section["inputs"]):
        f = f"derived_inputs.inputs[{i}]"
        if not isinstance(d, dict) or not isinstance(d.get("name"), str):
            raise ValueError(f"'{f}' must be an object with a 'name'")
        if d.get("kind") not in KINDS or d.get("fn") not in FUNCTIONS:
            raise ValueError(f"'{f}' is kind {d.get('kind')!r} fn {d.get('fn')!r}; expected kind in "
                             f"{', '.join(KINDS)} and fn in {', '.join(FUNCTIONS)}")
        p = d.get("period_s")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not (math.isfinite(p) and p > 0):
            raise ValueError(f"'{f}.period_s' is {p!r}; expected seconds > 0")
    return section["inputs"]


class DerivedInputs:
    """Computes a bundle's derived inputs for one time: `values(t)` → float64 [D]."""

    def __init__(self, section: dict):
        self.specs = check_section(section)
        self.names = [d["name"] for d in self.specs]
        self.utc_offset_s = float(section.get("utc_offset_s", 0.0))
        self._fns = [(FUNCTIONS[d["fn"]], float(d["period_s"])) for d in self.specs]
        self._out = np.zeros(len(self.specs), np.float64)

    def values(self, t) -> np.ndarray:
        wall = wall_seconds(t, self.utc_offset_s)
        out = self._out
        for i, (fn, period) in enumerate(self._fns):
            out[i] = fn(2.0 * math.pi * (wall % period) / period)
        return out

    def utc_epoch(self, wall: float) -> float:
        """Epoch seconds (UTC) for a wall-clock time: the inverse of `wall_seconds` for numbers."""
        return wall - self.utc_offset_s


def golden_stream(path: str):
    """(raw readings [T, I_raw], times [T] epoch seconds or None) of a bundle's golden.npz."""
    with np.load(path, allow_pickle=False) as z:
        return z["inputs"], (z["times"] if "times" in z.files else None)


def full_inputs(manifest: dict, readings: np.ndarray, times) -> np.ndarray:
    """The graph's raw input rows [T, I]: the readings, then their derived inputs (when the bundle has any)."""
    d = derived_of(manifest)
    if d is None:
        return readings
    return np.concatenate([readings, np.stack([d.values(float(t)).copy() for t in times])], axis=1).astype(np.float32)


def derived_of(manifest: dict) -> DerivedInputs | None:
    """The bundle's derived inputs, or None when it has none (format 1 and 2 never have any)."""
    section = manifest.get("derived_inputs")
    if not section or not section.get("inputs"):
        return None
    return DerivedInputs(section)
