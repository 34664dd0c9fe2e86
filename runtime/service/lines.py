"""Line sources: a serial port (pyserial, the `[serial]` extra) and stdin. CSV or JSON lines.

A reader thread only moves raw lines onto the service's queue; `LineDecoder` (main thread)
turns them into readings through the reading's edge (runtime/readings.py). CSV: the first line
is a header naming the features, optionally a time column and a `node` column; a line whose
every cell is a known column name is a header re-sent mid-stream and re-maps the columns; a
serial port that reopens keeps the last header. A JSON line is an object like an MQTT payload,
with an optional "node". Serial ports come and go (a USB adapter unplugged): the reader reopens
with backoff.
"""
from __future__ import annotations

import os
import sys
import threading
import time

from ..readings import (MAX_LINE_BYTES, CsvCells, Malformed, is_header, line_text, loads, split_line, time_columns,
                        time_text, time_value)
from ..streams import series_columns
from .payload import Reading, decode_object

EOF = b""            # queued once when stdin ends


class LineDecoder:
    """Raw lines of one source → readings. `fields` maps payload keys → features."""

    def __init__(self, name: str, fmt: str, node: str, features: list, fields: dict, manifest: dict | None = None):
        """manifest: the bundle's, for how training read its file: the time column(s) it read
        (`derived_inputs.time_columns`), the column naming each row's series (a line's node:
        runtime/streams.series_columns) and each feature's unit after a number (`21.5 °C`)."""
        self.name, self.fmt, self.node, self.features, self.fields = name, fmt, node, features, fields
        manifest = manifest or {"features": [{"name": f} for f in features]}
        self.trained_time = (manifest.get("derived_inputs") or {}).get("time_columns")
        self.node_columns = series_columns(manifest)
        self.cells = CsvCells(manifest)               # delimiter, decimal mark, units: as stream reads a file
        self.known = set(features) | set(self.node_columns)
        self.header = None
        self.reopens = 0

    def reopened(self) -> None:
        """The port reopened: the device may resend its header, or go on with rows (the last header holds)."""
        self.reopens += 1

    def decode(self, raw: bytes, now: float):
        """A Reading, or None for a header or empty line; raises Malformed for a bad line."""
        text = line_text(raw)
        if not text.strip():
            return None
        if self.fmt == "json":
            obj = loads(text.encode("utf-8"))
            node = obj.pop("node", self.node) if isinstance(obj, dict) else self.node
            if not isinstance(node, (str, int)) or isinstance(node, bool):
                raise Malformed(f"node {str(node)[:40]!r} is no node id; expected a string")
            values, t = decode_object(obj, self.fields, ignore_extra=False)
            return Reading(str(node), values, t, now)
        return self._csv(text, now)

    def _set_header(self, text: str) -> None:
        try:
            h = self.cells.header(text, self.name)
        except ValueError as e:
            raise Malformed(str(e)) from None
        self.header = h
        self._time = time_columns(h, self.trained_time)
        self._node = next((h.index(c) for c in self.node_columns if c in h), None)

    def _csv(self, text: str, now: float):
        row = split_line(text, self.cells.delimiter)
        if self.header is None or is_header(row, self.known):
            self._set_header(text)
            return None
        if len(row) < len(self.header) or any(c.strip() for c in row[len(self.header):]):   # (a trailing delimiter: read)
            raise Malformed(f"{len(row)} cells; the header has {len(self.header)}")
        values = dict(zip(self.cells.features, self.cells.values(row)))
        t = time_value(time_text(row, self._time)) or None
        node = row[self._node] if self._node is not None else self.node
        return Reading(node, values, t, now)


def _put_lines(stream, decoder, queue, stop) -> None:
    while not stop.is_set():
        raw = stream.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        rest = raw
        while len(rest) > MAX_LINE_BYTES and not rest.endswith(b"\n"):     # an endless line: its start is
            rest = stream.readline(MAX_LINE_BYTES + 1)                         # enough to refuse it
        queue.put(("line", decoder, raw, time.time(), None))


def start_stdin(decoder: LineDecoder, queue, stop: threading.Event) -> threading.Thread:
    """Read stdin on a thread, through a reader of its own on a duplicate of the descriptor: a
    thread blocked in sys.stdin's readline holds that object's lock, and the interpreter takes it
    when it shuts down, so a SIGTERM while the pipe was still open ended in a fatal error (rc 134)."""
    stream = open(os.dup(sys.stdin.fileno()), "rb")

    def read():
        with stream:
            _put_lines(stream, decoder, queue, stop)
        queue.put(("line", decoder, EOF, time.time(), None))
    t = threading.Thread(target=read, name="stdin", daemon=True)
    t.start()
    return t


def start_serial(url: str, baudrate: int, decoder: LineDecoder, queue, stop: threading.Event) -> threading.Thread:
    try:
        import serial
    except ImportError:
        raise RuntimeError("reading a serial port needs pyserial: pip install 'gru-edge-runtime[serial]'") from None
    try:                  # what no reopening mends (an unknown URL scheme) is said at start, not in a dead thread
        serial.serial_for_url(url, baudrate=baudrate, do_not_open=True)
    except ValueError as e:
        raise RuntimeError(f"serial.url = {url[:80]!r}: {e}; expected a port (/dev/ttyUSB0) or a pyserial URL "
                           "(socket://host:port, rfc2217://...)") from None
    except OSError:           # (SerialException: hwgrep:// with its adapter unplugged) retried, as a missing port is
        pass

    def read():
        delay = 0.5
        while not stop.is_set():
            try:
                with serial.serial_for_url(url, baudrate=baudrate, timeout=0.5) as port:
                    delay = 0.5
                    queue.put(("reopened", decoder, b"", time.time(), None))
                    print(f"serial {url}: open", file=sys.stderr, flush=True)
                    partial = b""              # readline returns what it has when the timeout hits
                    while not stop.is_set():
                        raw = partial + port.readline(MAX_LINE_BYTES + 1)
                        if raw.endswith(b"\n"):
                            queue.put(("line", decoder, raw, time.time(), None))
                            partial = b""
                        else:
                            partial = raw[-MAX_LINE_BYTES - 1:]
            except (serial.SerialException, OSError) as e:
                print(f"serial {url}: {e}; reopening in {delay:.1f} s", file=sys.stderr)
                stop.wait(delay)
                delay = min(2 * delay, 30.0)
    t = threading.Thread(target=read, name="serial", daemon=True)
    t.start()
    return t
