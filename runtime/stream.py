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
import time

from .derived import TimeError
from .forecaster import load

MAX_LINE_BYTES = 128 * 1024      # a longer input line is no sensor reading: skipped and counted
_NAN = float("nan")


class StreamError(ValueError):
    """Bad stream input or arguments; the message names the file, the line and what was expected."""


class _Stop(Exception):
    pass


def _number(cell: str) -> float:
    """A CSV cell as a reading: empty or unparsable (a sensor's 'err', 'N/A') is missing (NaN),
    which the forecaster's nan_policy then holds, fills or refuses, and counts."""
    try:
        return float(cell)
    except ValueError:
        return _NAN


def _decode(raw: bytes, line_no: int, name: str) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise StreamError(f"{name} line {line_no}: not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1}); "
                          "the readings before it were streamed and written") from None
    return text.lstrip("\ufeff") if line_no == 1 else text


def parse_header(text: str, features: list, delimiter: str, name: str) -> list:
    """Column names of the header line, checked: every feature present once, the delimiter plausible."""
    header = [h.strip() for h in next(csv.reader([text.rstrip("\r\n")], delimiter=delimiter), [])]
    if len(header) == 1 and len(features) > 1:
        seen = max(";\t|, ", key=header[0].count)
        hint = f" The header looks like one column; it contains {seen!r}: pass --delimiter {seen!r}." \
            if header[0].count(seen) else ""
        raise StreamError(f"{name}: the header {header[0][:80]!r} is one column with delimiter {delimiter!r}; "
                          f"expected the features {', '.join(features)}.{hint}")
    dup = sorted({h for h in header if header.count(h) > 1 and h in features})
    if dup:
        raise StreamError(f"{name}: feature column(s) {', '.join(dup)} appear more than once in the header")
    missing = [f for f in features if f not in header]
    if missing:
        raise StreamError(f"{name}: the header lacks feature column(s) {', '.join(missing)}; expected (any order, "
                          f"extra columns pass through): {', '.join(features)}")
    return header


def open_output(path: str, header: list, input_path: str, legacy: list | None = None):
    """The forecast file, appended to when it exists with this header (or the `legacy` one, the
    same columns under their earlier names); refused when it differs."""
    if path == "-":
        return sys.stdout, True
    if input_path != "-" and os.path.exists(path) and os.path.samefile(path, input_path):
        raise StreamError(f"--output {path} is the input file: that would overwrite the readings; choose another file")
    if os.path.exists(path) and os.path.getsize(path) > 0:
        with open(path, newline="", encoding="utf-8") as f:
            first = next(csv.reader(f), [])
        if first != header and first != legacy:
            raise StreamError(f"--output {path} exists with another header ({','.join(first)[:120]}); expected "
                              f"{','.join(header)[:120]}: refusing to mix two streams in one file (move it aside)")
        return open(path, "a", newline="", encoding="utf-8"), False
    return open(path, "a", newline="", encoding="utf-8"), True


def restore_state(fc, path: str) -> dict:
    """Restore the state file if it is this bundle's and return its meta ({} otherwise); a foreign
    one is ignored (it is overwritten at the next save), a corrupt one is moved aside as
    <path>.corrupt-<time>. Warns once either way."""
    if not path or not os.path.exists(path):
        return {}
    try:
        return fc.load_state(path)
    except ValueError as e:
        if "belongs to bundle" in str(e):
            print(f"warning: not restoring {path}: {e}; starting from a zero state", file=sys.stderr)
            return {}
        aside = f"{path}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}"
        os.replace(path, aside)
        print(f"warning: {e}; moved it to {aside} and started from a zero state", file=sys.stderr)
        return {}


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


TIME_COLUMNS = ("time", "timestamp", "date", "datetime", "date_time", "ts", "ds")


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
    header = parse_header(_decode(first[1], 1, name), fc.features, a.delimiter, name)
    tcol = time_column(header, fc, getattr(a, "time_col", None), name)
    cols = [header.index(f) for f in fc.features]
    extra = [i for i, h in enumerate(header) if h not in fc.features]
    out_header = [header[i] for i in extra] + forecast_columns(fc, a.intervals)
    legacy = [header[i] for i in extra] + forecast_columns(fc, a.intervals, labels=False)
    dst, fresh = open_output(a.output, out_header, a.input, legacy)
    writer = csv.writer(dst)
    if fresh:
        writer.writerow(out_header)
        dst.flush()
    return cols, tcol, extra, writer, dst


def step_label(k: int, period_s) -> str:
    """How far ahead step k is: '+10min' for k=1 of a 600 s period, '+16ms', '+2h'; '+k' without a period."""
    if not period_s:
        return f"+{k}"
    t = k * period_s
    for unit, sec in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if t >= sec and abs(t / sec - round(t / sec)) < 1e-6:
            return f"+{round(t / sec)}{unit}"
    return f"+{1e3 * t:.4g}ms" if t < 1 else f"+{t:.4g}s"


def forecast_columns(fc, intervals: bool, labels: bool = True) -> list:
    """target+10min.. (the time ahead each step applies; target+1..K with labels=False, the
    header before version 0.2), then target+10min_lo80 / _hi80 per level when intervals are on."""
    target, horizon = fc.manifest["targets"][0]["name"], fc.manifest["model"]["horizon"]
    period = fc.manifest.get("sample_period_s") if labels else None
    names = [f"{target}{step_label(k + 1, period)}" for k in range(horizon)]
    cols = list(names)
    if intervals:
        for lv in fc.manifest["intervals"]["levels"]:
            tag = f"{100 * lv:g}"
            cols += [f"{n}_{side}{tag}" for side in ("lo", "hi") for n in names]
    return cols


def _values(fc, y) -> list:
    vals = [f"{v:.6g}" for v in y]
    for lo, hi in fc.bounds.values():
        vals += [f"{v:.6g}" for v in lo] + [f"{v:.6g}" for v in hi]
    return vals


def stream(a) -> int:
    """CSV of readings in (header names the features; extra columns pass through), forecasts out."""
    fc = load(a.bundle, a.engine, a.precision, nan_policy=a.nan_policy, intervals=a.intervals)
    restore_state(fc, a.state)
    name = "stdin" if a.input == "-" else a.input
    src = sys.stdin.buffer if a.input == "-" else open(a.input, "rb")
    lines = _lines(src, _Signals())
    started = _start(a, fc, lines, name)
    if started is None:
        return 0
    cols, tcol, extra, writer, dst = started
    counts = {"readings": 0, "skipped_lines": 0}
    try:
        for line_no, raw in lines:
            if len(raw) > MAX_LINE_BYTES:
                counts["skipped_lines"] += 1
                print(f"warning: {name} line {line_no}: {len(raw)} bytes, over {MAX_LINE_BYTES}: skipped", file=sys.stderr)
                continue
            row = next(csv.reader([_decode(raw, line_no, name).rstrip("\r\n")], delimiter=a.delimiter), [])
            if not row:
                continue
            reading = [_number(row[i]) if i < len(row) else _NAN for i in cols]
            try:
                y = fc.step(reading, time=row[tcol] if tcol is not None and tcol < len(row) else None)
            except TimeError as e:            # a line whose time does not parse: skipped, counted
                counts["skipped_lines"] += 1
                print(f"warning: {name} line {line_no}: {e}: skipped", file=sys.stderr)
                continue
            counts["readings"] += 1
            writer.writerow([row[i] if i < len(row) else "" for i in extra] + _values(fc, y))
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
