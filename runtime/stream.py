"""`python -m runtime stream`: CSV readings in, one forecast line out per reading, for months.

Never loses data: the forecast file is appended to (its header must match), never truncated;
an input that is also the output is refused; a corrupt state file is moved aside instead of
crash-looping the service; a bad line is skipped and counted (an undecodable one stops the
stream, naming the line, with everything before it written and the state saved).
"""
from __future__ import annotations

import csv
import json
import os
import signal
import sys

from .files import restore_state
from .forecaster import load
from .readings import (TIME_COLUMNS, Malformed, NotText, cell_number, forecast_columns, line_text, open_append,
                       parse_header, split_line, step_label, text_cell, value_cell)
from .streams import not_a_series, pooled_note
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


def time_column(header: list, fc, wanted, name: str):
    """Index of the readings' time column, or None when the bundle needs no time."""
    if wanted and wanted not in header:
        raise StreamError(f"{name}: no time column {wanted!r} in the header ({', '.join(header)})")
    if fc.derived is None or not fc.derived.needs_time:
        return header.index(wanted) if wanted else None
    found = [wanted] if wanted else [h for h in header if h.strip().lower() in TIME_COLUMNS]
    if not found:
        raise StreamError(f"{name}: this bundle's model takes {', '.join(d['name'] for d in fc.derived.cycles)} from each reading's time, "
                         f"and the header has no time column (one of {', '.join(TIME_COLUMNS)}; or name it with --time-col)")
    return header.index(found[0])


def _start(fc, lines, name: str, src_path: str, output: str, delimiter: str, time_col, intervals: bool):
    """Read and check the header; open the output (header written when new). (cols, tcol, extra, writer, dst)."""
    first = next(lines, None)
    if first is None:
        return None
    try:
        text = line_text(first[1])
    except Malformed as e:
        raise StreamError(f"{name} line 1: {e}") from None
    try:
        header = parse_header(text, fc.features, delimiter, name)
    except ValueError as e:
        raise StreamError(str(e)) from None
    tcol = time_column(header, fc, time_col, name)
    cols = [header.index(f) for f in fc.features]
    extra = [i for i, h in enumerate(header) if h not in fc.features]
    out_header = [header[i] for i in extra] + forecast_columns(fc, intervals)
    legacy = [header[i] for i in extra] + forecast_columns(fc, intervals, labels=False)
    dst, fresh = open_output(output, out_header, src_path, legacy)
    writer = csv.writer(dst)
    if fresh and dst is sys.stdout:
        writer.writerow(out_header)
        dst.flush()
    return cols, tcol, extra, writer, dst


def _values(fc, y) -> list:
    vals = [value_cell(v) for v in y]
    for lo, hi in fc.bounds.values():
        vals += [value_cell(v) for v in lo] + [value_cell(v) for v in hi]
    return vals


def _reading(row: list, cols: list, tcol, clock: BundleClock, last_t):
    """(values, epoch time or None) of one row; a time that is no plausible instant raises TimeError."""
    values = [cell_number(row[i]) if i < len(row) else _NAN for i in cols]
    if tcol is None or tcol >= len(row) or not row[tcol].strip():
        return values, None
    return values, clock.epoch(row[tcol].strip(), after=last_t)


def stream_cmd(a) -> int:
    """`python -m runtime stream`: the parsed command line (argparse's Namespace) into `stream`."""
    return stream(a.bundle, a.input, a.output, engine=a.engine, precision=a.precision, nan_policy=a.nan_policy,
                  state=a.state, checkpoint_every=a.checkpoint_every, delimiter=a.delimiter,
                  time_col=a.time_col, intervals=a.intervals, capture=a.capture, series=a.series)


def _forecaster(bundle: str, engine: str, precision: str, nan_policy: str, intervals: bool, series):
    """The bundle's Forecaster, its one stream set to `series` (a bundle of many series: that series'
    scales, deadband and base); without `series` such a bundle forecasts in the pooled scale, said once.

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
    elif known:
        print(pooled_note(known, "these readings are forecast in"), file=sys.stderr)
    return fc


def stream(bundle: str, input_path: str = "-", output_path: str = "-", *, engine: str = "auto", precision: str = "fp32",
           nan_policy: str = "hold", state: str | None = None, checkpoint_every: int = 0, delimiter: str = ",",
           time_col: str | None = None, intervals: bool = False, capture: str | None = None, series=None) -> int:
    """Stream a CSV of readings (the header names the features; extra columns pass through) into a CSV of
    forecasts, one line per reading; returns 0. `input_path` / `output_path` "-": stdin / stdout.

    The forecast file is appended to (its header must match). `state`: a state file restored at the
    start and saved at the end (and every `checkpoint_every` readings). `time_col`: the readings' time
    column for bundles with calendar inputs (default: one named like a time). `intervals`: also write
    each level's bounds. `capture`: also record every reading and its forecast in this capture
    database (runtime/capture.py, node `series` or "stream"). `series`: a bundle of many series
    forecasts these readings as that series'. Stops cleanly at SIGTERM/SIGINT or a closed pipe.

    Raises:
        StreamError: bad input or arguments (one line naming the file, the line and what was expected).
    """
    fc = _forecaster(bundle, engine, precision, nan_policy, intervals, series)
    restore_state(fc, state)
    name = "stdin" if input_path == "-" else input_path
    src = sys.stdin.buffer if input_path == "-" else open(input_path, "rb")
    lines = _lines(src, _Signals())
    started = _start(fc, lines, name, input_path, output_path, delimiter, time_col, intervals)
    if started is None:
        return 0
    dst = started[-1]
    cap = _capture(capture, fc, intervals)
    counts = {"readings": 0, "skipped_lines": 0}
    try:
        _forecast_lines(fc, lines, name, delimiter, started, cap, series or "stream", counts,
                        (state, checkpoint_every))
    except _Stop:
        pass
    except BrokenPipeError:            # the reader went away (`... | head`): a normal end of a pipe
        os.dup2(os.open(os.devnull, os.O_WRONLY), dst.fileno())     # nothing left to flush at exit
    finally:
        if state:
            fc.save_state(state)
        if cap is not None:
            cap.close()
        print(json.dumps({**counts, **fc.stats}), file=sys.stderr)
    return 0


def _forecast_lines(fc, lines, name: str, delimiter: str, started: tuple, cap, node: str, counts: dict,
                    checkpoint: tuple) -> None:
    """Each input line's forecast row written (and captured under `node`), counted in `counts`; the
    state saved every N readings (`checkpoint`: (state path or None, N or 0))."""
    cols, tcol, extra, writer, dst = started
    clock, last_t = BundleClock.from_manifest(fc.manifest), None
    state, every = checkpoint
    for line_no, raw in lines:
        stepped = _step_line(fc, raw, f"{name} line {line_no}", delimiter, cols, tcol, clock, last_t, counts)
        if stepped is None:
            continue
        row, values, t, y = stepped
        last_t = t if t is not None else last_t
        counts["readings"] += 1
        writer.writerow([text_cell(row[i]) if i < len(row) else "" for i in extra] + _values(fc, y))
        dst.flush()
        if cap is not None:
            cap.record_step(t, node, values, y, fc.bounds)
        if state and every and counts["readings"] % every == 0:
            fc.save_state(state)


def _step_line(fc, raw: bytes, where: str, delimiter: str, cols, tcol, clock, last_t, counts):
    """(row, values, time, forecast) of one input line, or None for an empty line or one that is no
    reading (skipped, counted, warned about). A line that is not UTF-8 stops the stream."""
    try:
        row = split_line(line_text(raw), delimiter)
        if not row:
            return None
        values, t = _reading(row, cols, tcol, clock, last_t)
        return row, values, t, fc.step(values, time=t)
    except NotText as e:
        raise StreamError(f"{where}: {e}; the readings before it were streamed and written") from None
    except (Malformed, TimeError) as e:          # a line that is no reading: skipped, counted
        counts["skipped_lines"] += 1
        print(f"warning: {where}: {e}: skipped", file=sys.stderr)
        return None


def _capture(path, fc, intervals: bool):
    """The capture database `stream --capture` records into, or None."""
    if not path:
        return None
    from .capture import Capture
    levels = fc.manifest["intervals"]["levels"] if intervals else []
    return Capture(path, fc.manifest, fc.manifest.get("sample_period_s") or 1.0, levels)
