"""`python -m runtime stream`: CSV readings in, one forecast line out per reading, for months.

Never loses data: the forecast file is appended to (its header must match), never truncated;
an input that is also the output is refused; a corrupt state file is moved aside instead of
crash-looping the service; a bad line is skipped and counted (an undecodable one stops the
stream, naming the line, with everything before it written and the state saved). Timed readings
keep time as serve's clock does (`_Timeline`): late and doubled periods are skipped, missing ones
stepped, so stream and serve give the same forecasts for the same readings.
"""
from __future__ import annotations

import csv
import json
import math
import os
import signal
import sys

from .files import restore_state
from .forecaster import load
from .service.clock import MAX_GAP_TICKS, period_index
from .readings import (MAX_ABOVE_HEADER, TIME_COLUMNS, CsvCells, Malformed, NotText, forecast_columns, line_text,
                       open_append, split_line, step_label, text_cell, time_columns, time_text,
                       value_cell)
from .streams import not_a_series, pooled_note, series_columns, series_names
from .times import BundleClock, TimeError
from .trust import check_signature_at_load

__all__ = ["StreamError", "forecast_columns", "step_label", "stream", "stream_cmd"]
_NAN = float("nan")


class StreamError(ValueError):
    """Bad stream input or arguments; the message names the file, the line and what was expected."""


class _Stop(Exception):
    pass


def open_output(path: str, header: list, input_path: str, legacy: list | None = None):
    """The forecast file (appended to when it exists with this header or the `legacy` one), or stdout."""
    if path == "-":
        return sys.stdout, True
    if input_path != "-" and os.path.exists(path) and os.path.samefile(path, input_path):
        raise StreamError(f"--output {path} is the input file: that would overwrite the readings; choose another file")
    try:
        return open_append(path, header, legacy)
    except ValueError as e:
        raise StreamError(f"--output {e}") from None


class _Signals:
    """SIGTERM/SIGINT stop the stream between readings; a read waiting for input is interrupted.
    A reading already read is stepped and written first, so the saved state matches the output."""

    def __init__(self):
        self.stop, self.waiting = False, False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame):
        if self.waiting:
            raise _Stop()
        self.stop = True


def _lines(src, sig: _Signals):
    """Input lines as bytes, numbered from 1, until EOF or a stop signal."""
    n = 0
    while not sig.stop:
        sig.waiting = True
        raw = src.readline()
        sig.waiting = False
        if not raw:
            return
        n += 1
        yield n, raw


def time_column(header: list, fc, wanted, name: str) -> tuple:
    """Indices of the readings' time column(s): `wanted`, else for a bundle that needs times those it
    was trained on or named like a time (runtime/readings.time_columns); () otherwise. (A column
    named `time` of a bundle without calendar inputs may hold sample numbers, not times: it keeps
    time only when named with --time-col.)"""
    if wanted:
        if wanted not in header:
            raise StreamError(f"{name}: no time column {wanted!r} in the header ({', '.join(header)})")
        return (header.index(wanted),)
    if not needs_time(fc):
        return ()
    found = time_columns(header, fc.manifest["derived_inputs"].get("time_columns"))
    if not found:
        trained = " ".join(fc.manifest["derived_inputs"].get("time_columns") or ())
        raise StreamError(f"{name}: this bundle's model takes {', '.join(d['name'] for d in fc.derived.cycles)} from each reading's time, "
                          f"and the header has no time column ({trained + ' as trained, or ' if trained else ''}one of "
                          f"{', '.join(TIME_COLUMNS)}; or name it with --time-col)")
    return found


def needs_time(fc) -> bool:
    return fc.derived is not None and fc.derived.needs_time



def _header(fc, lines, name: str, cells: CsvCells):
    """The header's column names (`cells.header`: the delimiter that finds every feature): the first
    line, or the first of the next MAX_ABOVE_HEADER that names every feature (the lines above it
    skipped and said: a logger's metadata, which training skips with --skip-rows); None for an empty
    file. Raises StreamError with what the first line lacked."""
    first_error = None
    for n, raw in lines:
        if n == 1 and raw.startswith(b"PAR1"):
            raise StreamError(f"{name} is a Parquet file; stream reads CSV text: write it as CSV first "
                              "(python -c \"import pandas as pd; pd.read_parquet('IN').to_csv('OUT.csv', index=False)\")")
        try:
            return _said_skipped(cells.header(line_text(raw), name), n, name)
        except Malformed as e:
            first_error = first_error or f"{name} line {n}: {e}"
        except ValueError as e:
            first_error = first_error or str(e)
        if n > MAX_ABOVE_HEADER:
            break
    if first_error is not None:
        raise StreamError(first_error)
    return None


def _said_skipped(header: list, line_no: int, name: str) -> list:
    if line_no > 1:
        print(f"note: {name}: {line_no - 1} line(s) above the header skipped (a logger's metadata)", file=sys.stderr)
    return header


def _start(fc, lines, name: str, src_path: str, output: str, cells: CsvCells, time_col, intervals: bool, series):
    """Read and check the header (its feature columns set in `cells`); open the output (header written
    when new). (tcol, extra, writer, dst, the series column's index or None)."""
    header = _header(fc, lines, name, cells)
    if header is None:
        return None
    tcol = time_column(header, fc, time_col, name)
    scol = _series_column(fc, header, series, name)
    extra = [i for i, h in enumerate(header) if h not in fc.features]
    out_header = [header[i] for i in extra] + forecast_columns(fc, intervals)
    legacy = [header[i] for i in extra] + forecast_columns(fc, intervals, labels=False)
    dst, fresh = open_output(output, out_header, src_path, legacy)
    writer = csv.writer(dst)
    if fresh and dst is sys.stdout:
        writer.writerow(out_header)
        dst.flush()
    return tcol, extra, writer, dst, scol


def _series_column(fc, header: list, series, name: str):
    """The column of a long-format table naming each row's series, for a bundle of many series (its
    rows of other series are skipped, counted in `other_series`); None for a table of one sensor
    (without `series`, in the pooled scale: said once)."""
    known = fc.manifest.get("series") or {}
    scol = next((header.index(c) for c in series_columns(fc.manifest) if c in header), None) if known else None
    if scol is not None and series is None:
        raise StreamError(f"{name}: its column {header[scol]!r} names the series of each row (a long-format table): "
                          f"stream one with --series ID (this bundle knows {series_names(known)}), or all with serve --stdin")
    if known and series is None:
        print(pooled_note(known, "these readings are forecast in"), file=sys.stderr)
    return scol


def _values(fc, y) -> list:
    vals = [value_cell(v) for v in y]
    for lo, hi in fc.bounds.values():
        vals += [value_cell(v) for v in lo] + [value_cell(v) for v in hi]
    return vals


class _Timeline:
    """The sample periods of one stream's readings, kept as serve's clock keeps them (runtime/service/
    clock.py), so the model steps once a period whatever the lines do: a reading in an earlier period
    than the last one's is `late` and one in the same period `same_period` (both skipped); the periods
    missing before a reading are stepped with nothing read (the nan policy fills them, no row is
    written) up to MAX_GAP_TICKS, past which every state starts afresh (`clock_jumps`), as serve's
    clock jump does. Untimed readings, or a bundle without a sample period, step as they come."""

    def __init__(self, fc, counts: dict, saved: dict):
        self.fc, self.counts, self.warned = fc, counts, set()
        self.period_s = fc.manifest.get("sample_period_s")
        self.phase_s = fc.manifest.get("sample_phase_s")      # periods centred on it, as serve's (period_index)
        self.last, self.last_t = self._restored(saved)
        for key in ("late", "same_period", "missing_periods", "clock_jumps"):
            counts[key] = 0

    def _restored(self, saved: dict):
        """(last period, its reading's time) from a state file's meta (`stream_period`,
        `stream_time`), so a restart goes on in time; (None, None) without, or when they are not numbers."""
        p, t = saved.get("stream_period"), saved.get("stream_time")
        if isinstance(p, int) and not isinstance(p, bool) and isinstance(t, (int, float)) and math.isfinite(t):
            return p, float(t)
        return None, None

    def meta(self) -> dict:
        """What a state file keeps of the timeline (its `meta`)."""
        return {} if self.last is None else {"stream_period": int(self.last), "stream_time": float(self.last_t)}

    def admit(self, t, where: str) -> bool:
        """Whether the reading at `t` (epoch s or None) is stepped; the periods before it stepped first."""
        if t is None or not self.period_s:
            return True
        p = period_index(t, self.period_s, self.phase_s)
        if self.last is not None and p <= self.last:
            self._skip("late" if p < self.last else "same_period", where)
            return False
        missing = 0 if self.last is None else p - self.last - 1
        if missing >= MAX_GAP_TICKS:
            self.fc.reset()
            self.counts["clock_jumps"] += 1
            _warn_once(self.warned, "jump", where, f"{missing} sample periods missing before this reading: the model "
                       "starts afresh from here, as after a restart")
        else:
            for k in range(1, missing + 1):
                self._step_missing(self.last_t + k * self.period_s, where, missing)   # (the readings' offset kept)
        self.counts["missing_periods"] += missing
        self.last, self.last_t = p, t
        return True

    def _skip(self, kind: str, where: str) -> None:
        self.counts[kind] += 1
        why = ("its time lies before the last reading's sample period: readings must come in time order (a file newest "
               "first? sort it oldest first)" if kind == "late" else
               f"a second reading in the last one's sample period ({self.period_s:g} s): the model steps once a "
               "period (resample the readings to it, or use serve, which averages each period)")
        _warn_once(self.warned, kind, where, f"{why}; skipped, and such lines are counted in `{kind}`")

    def _step_missing(self, t: float, where: str, missing: int) -> None:
        try:
            self.fc.step([_NAN] * len(self.fc.features), time=t)
        except ValueError:           # nan_policy 'raise': a missing period is a missing reading
            raise StreamError(f"{where}: {missing} sample period(s) missing before this reading, and "
                              "--nan-policy raise fills none; the readings before it were streamed and written") from None


def _warn_once(warned: set, kind: str, where: str, text: str) -> None:
    if kind not in warned:
        warned.add(kind)
        print(f"warning: {where}: {text}", file=sys.stderr)


def stream_cmd(a) -> int:
    """`python -m runtime stream`: the parsed command line (argparse's Namespace) into `stream`."""
    return stream(a.bundle, a.input, a.output, engine=a.engine, precision=a.precision, nan_policy=a.nan_policy,
                  state=a.state, checkpoint_every=a.checkpoint_every, delimiter=a.delimiter, decimal=a.decimal,
                  time_col=a.time_col, intervals=a.intervals, capture=a.capture, series=a.series)


def _forecaster(bundle: str, engine: str, precision: str, nan_policy: str, intervals: bool, series):
    """The bundle's Forecaster, its one stream set to `series` (a bundle of many series: that series'
    scales, deadband and base); without `series` such a bundle forecasts in the pooled scale (said
    once the header is read: _series_column).

    Raises:
        StreamError: `series` is not one of the bundle's series.
    """
    check_signature_at_load(bundle)          # a device root that requires signatures runs only signed bundles
    fc = load(bundle, engine, precision, nan_policy=nan_policy, intervals=intervals)
    known = fc.manifest.get("series") or {}
    if series is not None:
        why = not_a_series(known, series)
        if why:
            raise StreamError(f"--series {why}")
        fc.set_series(0, series)
    return fc


def stream(bundle: str, input_path: str = "-", output_path: str = "-", *, engine: str = "auto", precision: str = "fp32",
           nan_policy: str = "hold", state: str | None = None, checkpoint_every: int = 0, delimiter: str | None = None,
           decimal: str | None = None, time_col: str | None = None, intervals: bool = False, capture: str | None = None,
           series=None) -> int:
    """Stream a CSV of readings (the header names the features; extra columns pass through) into a CSV of
    forecasts, one line per reading; returns 0. `input_path` / `output_path` "-": stdin / stdout.

    The forecast file is appended to (its header must match). `state`: a state file restored at the
    start and saved at the end (and every `checkpoint_every` readings). `time_col`: the readings' time
    column for bundles with calendar inputs (default: one named like a time). `intervals`: also write
    each level's bounds. `capture`: also record every reading and its forecast in this capture
    database (runtime/capture.py, node `series` or "stream"). `series`: a bundle of many series
    forecasts these readings as that series'. `delimiter`, `decimal`: the file's (None: as training
    read its file, runtime/readings.CsvCells). Stops cleanly at SIGTERM/SIGINT or a closed pipe.

    Raises:
        StreamError: bad input or arguments (one line naming the file, the line and what was expected).
    """
    fc = _forecaster(bundle, engine, precision, nan_policy, intervals, series)
    saved = restore_state(fc, state)
    name = "stdin" if input_path == "-" else input_path
    src = sys.stdin.buffer if input_path == "-" else open(input_path, "rb")
    lines = _lines(src, _Signals())
    cells = CsvCells(fc.manifest, delimiter, decimal)
    started = _start(fc, lines, name, input_path, output_path, cells, time_col, intervals, series)
    if started is None:
        return 0
    dst = started[3]
    cap = _capture(capture, fc, intervals)
    counts = {"readings": 0, "skipped_lines": 0, **({"other_series": 0} if started[4] is not None else {})}
    timeline = _Timeline(fc, counts, saved)
    try:
        _forecast_lines(fc, lines, name, cells, started, cap, series or "stream", timeline,
                        (state, checkpoint_every))
    except _Stop:
        pass
    except BrokenPipeError:            # the reader went away (`... | head`): a normal end of a pipe
        os.dup2(os.open(os.devnull, os.O_WRONLY), dst.fileno())     # nothing left to flush at exit
    finally:
        if state:
            fc.save_state(state, timeline.meta())
        if cap is not None:
            cap.close()
        print(json.dumps({**counts, **fc.stats}), file=sys.stderr)
    return 0


def _forecast_lines(fc, lines, name: str, cells: CsvCells, started: tuple, cap, node: str, timeline: "_Timeline",
                    checkpoint: tuple) -> None:
    """Each input line's forecast row written (and captured under `node`), counted in the timeline's
    counts; the state saved every N readings (`checkpoint`: (state path or None, N or 0))."""
    tcol, extra, writer, dst, scol = started
    clock, counts, warned = BundleClock.from_manifest(fc.manifest), timeline.counts, timeline.warned
    state, every = checkpoint
    for line_no, raw in lines:
        where = f"{name} line {line_no}"
        row = _split(raw, where, cells, counts)
        if row and scol is not None and (scol >= len(row) or row[scol] != node):
            counts["other_series"] += 1           # another series' row: not read (its bad cells are not ours)
            continue
        parsed = _parse_row(fc, row, where, cells, tcol, clock, timeline.last_t, counts, warned) if row else None
        if parsed is None or not timeline.admit(parsed[2], where):
            continue
        row, values, t = parsed
        y = fc.step(values, time=t)
        counts["readings"] += 1
        writer.writerow([text_cell(row[i]) if i < len(row) else "" for i in extra] + _values(fc, y))
        dst.flush()
        if cap is not None:
            cap.record_step(t, node, values, y, fc.bounds)
        if state and every and counts["readings"] % every == 0:
            fc.save_state(state, timeline.meta())


def _split(raw: bytes, where: str, cells: CsvCells, counts: dict) -> list:
    """One input line's cells; [] for an empty line or one that is no CSV line (too long, broken
    quoting: skipped, counted, warned about). A line that is not UTF-8 stops the stream."""
    try:
        return split_line(line_text(raw), cells.delimiter)
    except NotText as e:
        raise StreamError(f"{where}: {e}; the readings before it were streamed and written") from None
    except Malformed as e:
        counts["skipped_lines"] += 1
        print(f"warning: {where}: {e}: skipped", file=sys.stderr)
        return []


def _parse_row(fc, row: list, where: str, cells: CsvCells, tcol, clock, last_t, counts: dict, warned: set):
    """(row, values, epoch time or None) of one line's cells, or None for a line that is no reading
    (skipped, counted, warned about)."""
    try:
        values = cells.values(row)
        for text in cells.said():
            print(f"warning: {where}: {text}", file=sys.stderr)
        return row, values, _time_of(fc, row, tcol, clock, last_t, where, counts, warned)
    except (Malformed, TimeError) as e:          # a line that is no reading: skipped, counted
        counts["skipped_lines"] += 1
        print(f"warning: {where}: {e}: skipped", file=sys.stderr)
        return None


def _time_of(fc, row: list, tcol, clock: BundleClock, last_t, where: str, counts: dict, warned: set):
    """A row's time, epoch s, or None without one. A time that is no plausible instant raises
    TimeError, unless the bundle takes nothing from it: then the reading steps untimed (gaps and
    order unchecked), counted in `untimed`."""
    text = time_text(row, tcol)
    if not text:
        return None
    try:
        return clock.epoch(text, after=last_t)
    except TimeError as e:
        if needs_time(fc):
            raise
        counts["untimed"] = counts.get("untimed", 0) + 1
        _warn_once(warned, "untimed", where, f"{e}: stepped without its time; such lines are counted in `untimed`")
        return None


def _capture(path, fc, intervals: bool):
    """The capture database `stream --capture` records into, or None."""
    if not path:
        return None
    from .capture import Capture
    levels = fc.manifest["intervals"]["levels"] if intervals else []
    return Capture(path, fc.manifest, fc.manifest.get("sample_period_s") or 1.0, levels)
