"""Derived inputs: calendar features computed from each reading's time (manifest `derived_inputs`).

The manifest section, written by export from the checkpoint:

    "derived_inputs": {"timezone": "Europe/Paris",                  # format 5; formats 3 and 4:
                       "inputs": [{"name": "time_of_day_sin",        #   "utc_offset_s": 3600.0
                                   "kind": "cycle", "fn": "sin", "period_s": 86400.0}, ...]}

A `cycle` input is fn(2*pi * (wall mod period_s) / period_s) (`cycle`), where `wall` is the
reading's time on the bundle's wall clock in seconds since 1970-01-01 00:00: local time in the
IANA `timezone`, or UTC + `utc_offset_s` for older bundles. The time itself is read by the one
rule of runtime/times.py (`BundleClock`): epochs in s or ms, aware times, naive times on that
clock. Training computes its calendar inputs through `DerivedInputs.table` (train/calendar.py):
one definition on both sides.

A `series` input (format 9) is the stream's series identity, one input per series the model was
trained on: {"name": "series_0", "kind": "series", "id": "room1"}, 1.0 for a stream of that
series and 0.0 for the others (`identity`). A stream of a series the bundle does not know gets
1/N on each of its N identity inputs: the average of the known series. Series inputs come after
every cycle input; a stream's are constant, so the runtime sets them when it learns the stream's
series, not at each reading. train/calendar.py adds them for a model of many series (train --series-input on).

The graph input is [raw features..., derived inputs...], both normalized by the bundle's scaler.
"""
from __future__ import annotations

import math

import numpy as np

from .times import TIME_HELP, BundleClock, TimeError, zone

__all__ = ["KINDS", "FUNCTIONS", "TIME_HELP", "TimeError", "BundleClock", "cycle", "identity", "series_ids", "check_section",
           "DerivedInputs", "golden_stream", "full_inputs", "derived_of"]

KINDS = ("cycle", "series")
FUNCTIONS = {"sin": math.sin, "cos": math.cos}          # one reading (the device's step)
ARRAY_FUNCTIONS = {"sin": np.sin, "cos": np.cos}         # whole arrays (training, reports)


def cycle(fn, wall, period_s: float):
    """fn(2*pi * (wall mod period_s) / period_s): one cycle input, for a float or a numpy array."""
    return fn(2.0 * math.pi * (wall % period_s) / period_s)


def identity(ids, series_id) -> list[float]:
    """A stream's series inputs: 1.0 for its own series among `ids`, 0.0 for the others; a series not
    among them (or None): 1/N each, the average of the N known series."""
    if series_id is not None and str(series_id) in ids:
        return [1.0 if i == str(series_id) else 0.0 for i in ids]
    return [1.0 / len(ids)] * len(ids) if ids else []


def series_ids(section) -> list:
    """The ids of a `derived_inputs` section's series inputs (format 9), in order; [] for none, and for
    a malformed section (check_section says what is wrong with it)."""
    inputs = section.get("inputs") if isinstance(section, dict) else None
    return [d.get("id") for d in inputs or () if isinstance(d, dict) and d.get("kind") == "series"] \
        if isinstance(inputs, list) else []


def _check_identity(d: dict, f: str, seen: set) -> None:
    if not isinstance(d.get("id"), str) or not d["id"] or d["id"] in seen:
        raise ValueError(f"'{f}.id' is {d.get('id')!r}; expected a series id, once")
    seen.add(d["id"])


def _check_time_source(section: dict) -> None:
    """The optional record of training's time column(s) and day order (runtime/readings.time_columns,
    runtime/times.BundleClock): read where present, so older bundles (without) read as before."""
    cols = section.get("time_columns")
    if cols is not None and not (isinstance(cols, list) and 1 <= len(cols) <= 2 and all(
            isinstance(c, str) and 0 < len(c) <= 200 and c.isprintable() for c in cols)):
        raise ValueError(f"'derived_inputs.time_columns' is {str(cols)[:60]!r}; expected one or two column names "
                         "(a time, or a date and a time of day)")
    if not isinstance(section.get("dayfirst", False), bool):
        raise ValueError(f"'derived_inputs.dayfirst' is {str(section['dayfirst'])[:40]!r}; expected true or false")


def check_section(section, n: int | None = None) -> list[dict]:
    """The input specs of a `derived_inputs` section, checked (a message names the field)."""
    if section is None:
        return []
    if not isinstance(section, dict) or not isinstance(section.get("inputs"), list):
        raise ValueError("'derived_inputs' must be an object with an 'inputs' list")
    off = section.get("utc_offset_s", 0.0)
    if isinstance(off, bool) or not isinstance(off, (int, float)) or not math.isfinite(off):
        raise ValueError(f"'derived_inputs.utc_offset_s' is {off!r}; expected a finite number of seconds")
    if "timezone" in section:
        if "utc_offset_s" in section:
            raise ValueError("'derived_inputs' has both 'timezone' and 'utc_offset_s'; expected one clock")
        try:
            zone(section["timezone"])
        except ValueError as e:
            raise ValueError(f"'derived_inputs.timezone': {e} (known to this device's tz database)") from None
    _check_time_source(section)
    seen = set()
    for i, d in enumerate(section["inputs"]):
        f = f"derived_inputs.inputs[{i}]"
        if not isinstance(d, dict) or not isinstance(d.get("name"), str):
            raise ValueError(f"'{f}' must be an object with a 'name'")
        if d.get("kind") == "series":
            _check_identity(d, f, seen)
            continue
        if seen:
            raise ValueError(f"'{f}' is a cycle after a series input; expected every series input last")
        if d.get("kind") not in KINDS or d.get("fn") not in FUNCTIONS:
            raise ValueError(f"'{f}' is kind {d.get('kind')!r} fn {d.get('fn')!r}; expected kind in "
                             f"{', '.join(KINDS)} and fn in {', '.join(FUNCTIONS)}")
        p = d.get("period_s")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not (math.isfinite(p) and p > 0):
            raise ValueError(f"'{f}.period_s' is {p!r}; expected seconds > 0")
    return section["inputs"]


class DerivedInputs:
    """Computes a bundle's derived inputs: `values(t, series)` → float64 [D], the cycles at time t
    (`time_values`) then the series inputs of a stream of `series` (`identity`)."""

    def __init__(self, section: dict):
        self.specs = check_section(section)
        self.names = [d["name"] for d in self.specs]
        self.cycles = [d for d in self.specs if d["kind"] == "cycle"]     # from the time (first)
        self.ids = series_ids(section)                                         # the series identity (last)
        self.clock = BundleClock.from_section(section)
        self._fns = [(FUNCTIONS[d["fn"]], float(d["period_s"])) for d in self.cycles]
        self._out = np.zeros(len(self.cycles), np.float64)
        self._after = None        # the previous reading's epoch: resolves a naive time in a DST fold

    @property
    def needs_time(self) -> bool:
        """Whether a step needs the reading's time (a cycle input; series inputs do not)."""
        return bool(self.cycles)

    def time_values(self, t) -> np.ndarray:
        """The cycle inputs at time `t` (any form runtime/times.py reads): float64 [C]. Raises TimeError."""
        if not self._fns:
            return self._out
        epoch = self.clock.epoch(t, self._after)
        self._after = epoch
        wall = self.clock.wall(epoch)
        out = self._out
        for i, (fn, period) in enumerate(self._fns):
            out[i] = cycle(fn, wall, period)
        return out

    def values(self, t, series=None) -> np.ndarray:
        """Every derived input at time `t` for a stream of series `series` (None: an unknown one)."""
        return np.concatenate([self.time_values(t), identity(self.ids, series)])

    def table(self, wall_s: np.ndarray) -> np.ndarray:
        """The cycle inputs at each wall-clock time (seconds since 1970 on the bundle's clock): float64 [N, C]."""
        wall_s = np.asarray(wall_s, np.float64)
        cols = [cycle(ARRAY_FUNCTIONS[d["fn"]], wall_s, float(d["period_s"])) for d in self.cycles]
        return np.stack(cols, axis=1) if cols else np.zeros((len(wall_s), 0))


def golden_stream(path: str):
    """(raw readings [T, I_raw], times [T] epoch seconds or None) of a bundle's golden.npz."""
    with np.load(path, allow_pickle=False) as z:
        return z["inputs"], (z["times"] if "times" in z.files else None)


def full_inputs(manifest: dict, readings: np.ndarray, times, series=None) -> np.ndarray:
    """The graph's raw input rows [T, I]: the readings, then their derived inputs (when the bundle has
    any) for a stream of `series` (None: unknown; times may be None without cycle inputs)."""
    d = derived_of(manifest)
    if d is None:
        return readings
    times = times if d.needs_time else [None] * len(readings)
    return np.concatenate([readings, np.stack([d.values(t if t is None else float(t), series) for t in times])],
                          axis=1).astype(np.float32)


def derived_of(manifest: dict) -> DerivedInputs | None:
    """The bundle's derived inputs, or None when it has none (format 1 and 2 never have any)."""
    section = manifest.get("derived_inputs")
    if not section or not section.get("inputs"):
        return None
    return DerivedInputs(section)
