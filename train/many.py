"""Many series in one table: each series prepared alone (train/data.prepare_series: its own grid,
gaps and split), then joined as separate segments that no window crosses, with `parts` naming each
series' rows. Series ids are taken as written; what cannot be used is named in the data report.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from runtime.readings import step_label
from runtime.times import BundleClock

from .cells import NotNumeric
from .data import DataError, DataReport, LongFormat, Part, Series, prepare_series
from .grid import reading_phase, round_up
from .table import control_character


_COUNTS = ("rows", "interpolated_cells", "long_gaps", "dropped_rows", "missing_samples",
           "irregular_intervals", "duplicate_timestamps", "unreadable_times", "unsorted_rows", "segments", "held_cells")


def prepare_many(df, series_col: str, target: str, features=None, time_col=None, exclude=(), max_gap: int = 3,
                 units=None, source: str = "", clock: BundleClock | None = None, only: str | None = None,
                 resample_s: float | None = None) -> Series:
    """Many series in one table (`series_col` names each row's series): each series gets its own
    regular grid and gap handling (prepare_series), then the grids are concatenated as separate
    segments (no window crosses series) and `parts` says which rows belong to which series.
    `only`: that one series alone (its grid, gaps and split are the same as among the others).

    Raises:
        DataError: an unknown series column, a series that cannot be prepared (named), series with
            different feature columns or sample periods.
    """
    ids, known = _series_ids(df, series_col)
    if len(known) > 20 and len(known) > 0.5 * ids.notna().sum():
        raise DataError(f"column '{series_col}' has {len(known)} different values in {int(ids.notna().sum())} rows: "
                        "it names no series (a long-format table repeats each sensor's id on its rows); expected "
                        "the column that names each row's sensor")
    if only is not None and only not in known:
        raise DataError(f"series {only!r} is not in column '{series_col}'; it has {', '.join(known[:20])}"
                        + (", ..." if len(known) > 20 else ""))
    rest = df.drop(columns=[series_col])
    done, text = [], {}
    for sid in known if only is None else [only]:
        s = _prepare_one(rest[(ids == sid).to_numpy()].reset_index(drop=True), f"series {sid!r} (column "
                         f"'{series_col}')", series_col, target, features, time_col, exclude, max_gap, units, source,
                         clock, resample_s)
        if isinstance(s, NotNumeric):
            text[sid] = s
        else:
            done.append((sid, s))
    if not done:
        raise next(iter(text.values()), None) or DataError(f"series column '{series_col}' has no values")
    left_out = {sid: len(s.target) for sid, s in done if s.period_s is None} if len(done) > 1 else {}
    if len(left_out) == len(done):
        left_out = {}
    out = _concatenate([(sid, s) for sid, s in done if sid not in left_out], source)
    out.report.rows_without_series, out.report.series_col = int(ids.isna().sum()), series_col
    out.report.left_out, out.report.not_numeric = left_out, {sid: e.examples for sid, e in text.items()}
    out.report.unservable = {sid: str(e) for sid in (p.id for p in out.parts) if (e := _not_a_node(sid))}
    return out


def _prepare_one(rows, where: str, series_col: str, target: str, *args):
    """prepare_series of one series' rows (`args`: its arguments after the target), or a NotNumeric
    naming `where` when its target reads no numbers (a door contact's on/off: left out, named).

    Raises:
        DataError: anything else that keeps the series from being prepared, naming `where`."""
    try:
        return prepare_series(rows, target, *args)
    except LongFormat as e:           # (host and _field: each series named by two columns)
        raise DataError(f"{where} repeats its times, told apart by column '{e.col}': a series is named by "
                        f"both columns; join them into one (such as {series_col}/{e.col}) and pass that as "
                        "--series-col") from None
    except NotNumeric as e:
        if e.col != target:
            raise DataError(f"{where}: {e}") from None
        return NotNumeric(f"{where}: {e}", e.col, e.examples)
    except DataError as e:
        raise DataError(f"{where}: {e}") from None


def _not_a_node(sid: str):
    """Why serve takes no node of this id (runtime/service/slots.check_node_id), or None."""
    from runtime.service.slots import NotANode, check_node_id
    try:
        check_node_id(sid)
    except NotANode as e:
        return e
    return None


def _series_ids(df, series_col: str):
    """(each row's series id as written, None for an empty or blank cell; the sorted distinct ids).
    Not stripped: serve matches a node's name as it arrives.

    Raises:
        DataError: no such column, an id with a control character (named)."""
    if series_col not in map(str, df.columns):
        raise DataError(f"series column '{series_col}' not found; columns are: {', '.join(map(str, df.columns))}")
    col = df[series_col]
    ids = col.astype(str).where(col.notna(), "")
    ids = ids.where(ids.str.strip() != "", None)
    known = sorted(ids.dropna().unique())
    for sid in known:
        ch = control_character(sid)
        if ch:
            raise DataError(f"series id {sid[:60]!r} (column '{series_col}') contains the control character {ch!r}; "
                            "expected printable ids (they name MQTT topics, files and tables)")
    return ids, known


def _why_apart(a, b) -> str:
    """Why two series' feature columns differ: a column empty, not numeric or a row counter in one."""
    why = []
    for (sid, s), (_, other) in ((a, b), (b, a)):
        for col in [c for c in other.features if c not in s.features]:
            kind = "a row counter" if col in s.report.counters else "empty or not numeric"
            why.append(f"{col} is {kind} in series {sid!r}")
    return f" ({'; '.join(why)})" if why else ""


def _concatenate(done: list, source: str) -> Series:
    """[(id, Series)] → one Series of concatenated grids with `parts` and a per-series report."""
    first = done[0][1]
    _one_day_order(done)
    for sid, s in done[1:]:
        if s.features != first.features:
            raise DataError(f"series {sid!r} has the feature columns {', '.join(s.features)}, series "
                            f"{done[0][0]!r} {', '.join(first.features)}{_why_apart(done[0], (sid, s))}: choose "
                            "common ones with --features, or leave the others out with --exclude")
        if (s.period_s is None) != (first.period_s is None) or (
                s.period_s and abs(s.period_s / first.period_s - 1) > 0.1):
            slow = max(s.period_s or 0, first.period_s or 0)
            raise DataError(f"series {sid!r} is sampled every {s.period_s} s, series {done[0][0]!r} every "
                            f"{first.period_s} s: expected one sample period for every series (readings on "
                            f"change, or at irregular times? --resample {step_label(1, round_up(slow))[1:]} "
                            "puts every series on one grid)")
    report, parts, segments, shifts, at = DataReport(), [], [], [], 0
    report.resample_s, report.period_s = first.report.resample_s, first.report.period_s
    for sid, s in done:
        parts.append(Part(sid, at, at + len(s.target), s.start_s))
        segments += [(a + at, b + at) for a, b in s.segments]
        shifts += [[row + at, seconds] for row, seconds in s.shifts]
        for k in _COUNTS:
            setattr(report, k, getattr(report, k) + getattr(s.report, k))
        for col, n in s.report.non_numeric_cells.items():
            report.non_numeric_cells[col] = report.non_numeric_cells.get(col, 0) + n
        for col, (n, ex) in s.report.extreme_cells.items():
            report.extreme_cells[col] = (report.extreme_cells.get(col, (0, ex))[0] + n, ex)
        for col, n in s.report.thousands.items():
            report.thousands[col] = report.thousands.get(col, 0) + n
        for col, (unit, n) in s.report.cell_units.items():
            report.cell_units[col] = (unit, report.cell_units.get(col, (unit, 0))[1] + n)
        report.skipped_columns += [c for c in s.report.skipped_columns if c not in report.skipped_columns]
        report.counters += [c for c in s.report.counters if c not in report.counters]
        report.hour_back = report.hour_back or s.report.hour_back
        report.per_series[sid] = {k: getattr(s.report, k) for k in _COUNTS}
        at += len(s.target)
    units, own = _units(done, report)
    made_up = [s.interpolated if s.interpolated is not None else np.zeros(len(s.target), bool) for _, s in done]
    return dataclasses.replace(first, inputs=np.concatenate([s.inputs for _, s in done]),
                               target=np.concatenate([s.target for _, s in done]), segments=segments,
                               interpolated=np.concatenate(made_up),
                               units=units, series_units=own, report=report, source=source, parts=parts,
                               shifts=shifts, phase_s=_pooled_phase(done))


def _units(done: list, report: DataReport) -> tuple:
    """(each column's unit, {series id: {column: unit}} where the series write different units in one
    column). Such a column has no one unit (""): each series keeps its own for the device (manifest
    `series.<id>.units`), said in the report. Before, the last series' unit was the column's, and the
    device read every other series' cells (`19.8 °C` in a column of W) as missing."""
    pooled, own = {}, {}
    for col in dict.fromkeys(k for _, s in done for k in s.units):
        found = {sid: s.units[col] for sid, s in done if s.units.get(col)}
        if len(set(found.values())) > 1:
            report.cell_units.pop(col, None)
            report.series_units[col] = found
            for sid, unit in found.items():
                own.setdefault(sid, {})[col] = unit
        pooled[col] = "" if col in report.series_units else next(iter(found.values()), "")
    return pooled, own


def _one_day_order(done: list) -> None:
    """DataError where the series write numeric dates in different orders (a folder of a day-first and
    a month-first export): each was read right, but the device reads every node's times in one
    order (the bundle's derived_inputs.dayfirst)."""
    orders = {}
    for sid, s in done:
        order = (s.time_source or {}).get("dayfirst")
        if order is not None:
            orders.setdefault(order, sid)
    if len(orders) > 1:
        raise DataError(f"the series write dates in different orders: series {orders[True]!r} day first, series "
                        f"{orders[False]!r} month first; the device reads one order: export them alike, or as "
                        "ISO 8601 (2024-01-31 13:00)")


def _pooled_phase(done: list):
    """The one phase of the device's periods (serve ticks every node at once): the series' phases'
    circular mean, each weighed by its rows; None where a series has none."""
    if any(s.phase_s is None for _, s in done):
        return None
    period = done[0][1].period_s
    return reading_phase(np.concatenate([np.full(len(s.target), s.phase_s) for _, s in done]), period)
