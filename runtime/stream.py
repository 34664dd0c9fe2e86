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
from .times import BundleClock, TimeError
from .trust import check_signature_at_load

__all__ = ["StreamError", "forecast_columns", "step_label", "stream"]
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
    if fc.derived is None:
        return header.index(wanted) if wanted else None
    found = [wanted] if wanted else [h for h in header if h.strip().lower() in TIME_COLUMNS]
    if not found:
        raise StreamError(f"{name}: this bundle's model takes {', '.join(fc.derived.names)} from each reading's time, "
                         f"and the header has no time column (one of {', '.join(TIME_COLUMNS)}; or name it with --time-col)")
    return header.index(found[0])


def _start(a, fc, lines, name):
    """Read and check the header; open the output (header written when new). (cols, tcol, extra, writer, dst)."""
    first = next(lines, None)
    if first is None:
        return None
    try:
        text = line_text(first[1])
    except Malformed as e:
        raise StreamError(f"{name} line 1: {e}") from None
    try:
        header = parse_header(text, fc.features, a.delimiter, name)
    except ValueError as e:
        raise StreamError(str(e)) from None
    tcol = time_column(header, fc, getattr(a, "time_col", None), name)
    cols = [header.index(f) for f in fc.features]
    extra = [i for i, h in enumerate(header) if h not in fc.features]
    out_header = [header[i] for i in extra] + forecast_columns(fc, a.intervals)
    legacy = [header[i] for i in extra] + forecast_columns(fc, a.intervals, labels=False)
    dst, fresh = open_output(a.output, out_header, a.input, legacy)
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


def stream(a) -> int:
    """CSV of readings in (header names the features; extra columns pass through), forecasts out."""
    check_signature_at_load(a.bundle)          # a device root that requires signatures runs only signed bundles
    fc = load(a.bundle, a.engine, a.precision, nan_policy=a.nan_policy, intervals=a.intervals)
    restore_state(fc, a.state)
    name = "stdin" if a.input == "-" else a.input
    src = sys.stdin.buffer if a.input == "-" else open(a.input, "rb")
    lines = _lines(src, _Signals())
    started = _start(a, fc, lines, name)
    if started is None:
        return 0
    cols, tcol, extra, writer, dst = started
    clock, last_t = BundleClock.from_manifest(fc.manifest), None
    counts = {"readings": 0, "skipped_lines": 0}
    try:
        for line_no, raw in lines:
            try:
                row = split_line(line_text(raw), a.delimiter)
                if not row:
                    continue
                values, t = _reading(row, cols, tcol, clock, last_t)
                y = fc.step(values, time=t)
            except NotText as e:
                raise StreamError(f"{name} line {line_no}: {e}; the readings before it were streamed and written") from None
            except (Malformed, TimeError) as e:          # a line that is no reading: skipped, counted
                counts["skipped_lines"] += 1
                print(f"warning: {name} line {line_no}: {e}: skipped", file=sys.stderr)
                continue
            last_t = t if t is not None else last_t
            counts["readings"] += 1
            writer.writerow([text_cell(row[i]) if i < len(row) else "" for i in extra] + _values(fc, y))
            dst.flush()
            if a.state and a.checkpoint_every and counts["readings"] % a.checkpoint_every == 0:
                fc.save_state(a.state)
    except _Stop:
        pass
    except BrokenPipeError:            # the reader went away (`... | head`): a normal end of a pipe
        os.dup2(os.open(os.devnull, os.O_WRONLY), dst.fileno())     # nothing left to flush at exit
    finally:
        if a.state:
            fc.save_state(a.state)
        print(json.dumps({**counts, **fc.stats}), file=sys.stderr)
    return 0
