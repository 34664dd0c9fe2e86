"""Line sources: a serial port (pyserial, the `[serial]` extra) and stdin. CSV or JSON lines.

A reader thread only moves raw lines onto the service's queue; `LineDecoder` (main thread)
turns them into readings. CSV: the first line is a header naming the features, optionally a
`time` column (ISO 8601 or epoch seconds) and a `node` column; a JSON line is an object like an
MQTT payload, with an optional "node". Serial ports come and go (a USB adapter unplugged): the
reader reopens with backoff and a new CSV header is expected after each reopen.
"""
from __future__ import annotations

import csv
import json
import sys
import threading
import time

from ..stream import MAX_LINE_BYTES, parse_header
from .payload import TIME_KEYS, Malformed, Reading, decode_object, parse_time

EOF = b""            # queued once when stdin ends


class LineDecoder:
    """Raw lines of one source → readings. `fields` maps payload keys → features."""

    def __init__(self, name: str, fmt: str, node: str, features: list, fields: dict):
        self.name, self.fmt, self.node, self.features, self.fields = name, fmt, node, features, fields
        self.header = None

    def reopened(self) -> None:
        self.header = None

    def decode(self, raw: bytes, now: float):
        """A Reading, or None for a header line; raises Malformed for a bad line."""
        if len(raw) > MAX_LINE_BYTES:
            raise Malformed(f"{self.name}: line of {len(raw)} bytes, over {MAX_LINE_BYTES}")
        try:
            text = raw.decode("utf-8").lstrip("\ufeff").rstrip("\r\n")
        except UnicodeDecodeError:
            raise Malformed(f"{self.name}: line {raw[:40]!r} is not UTF-8") from None
        if not text.strip():
            return None
        if self.fmt == "json":
            try:
                obj = json.loads(text)
            except ValueError:
                raise Malformed(f"{self.name}: line {text[:40]!r} is not JSON") from None
            node = str(obj.pop("node", self.node)) if isinstance(obj, dict) else self.node
            values, t = decode_object(obj, self.fields, ignore_extra=False)
            return Reading(node, values, t, now)
        return self._csv(text, now)

    def _csv(self, text: str, now: float):
        row = next(csv.reader([text]), [])
        if self.header is None:
            try:
                self.header = parse_header(text, self.features, ",", self.name)
            except ValueError as e:
                raise Malformed(str(e)) from None
            h = self.header
            self._cols = [(h.index(f), f) for f in self.features]
            self._time = next((h.index(k) for k in TIME_KEYS if k in h), None)
            self._node = h.index("node") if "node" in h else None
            return None
        if len(row) != len(self.header):
            raise Malformed(f"{self.name}: {len(row)} cells; the header has {len(self.header)}")
        values = {}
        for i, f in self._cols:
            cell = row[i].strip()
            try:
                values[f] = float(cell) if cell else float("nan")
            except ValueError:
                values[f] = float("nan")          # a sensor's 'err' or 'N/A' is a missing value
        t = parse_time(row[self._time]) if self._time is not None and row[self._time].strip() else None
        node = row[self._node] if self._node is not None else self.node
        return Reading(node, values, t, now)


def _put_lines(stream, decoder, queue, stop) -> None:
    while not stop.is_set():
        raw = stream.readline()
        if not raw:
            return
        queue.put(("line", decoder, raw, time.time()))


def start_stdin(decoder: LineDecoder, queue, stop: threading.Event) -> threading.Thread:
    def run():
        _put_lines(sys.stdin.buffer, decoder, queue, stop)
        queue.put(("line", decoder, EOF, time.time()))
    t = threading.Thread(target=run, name="stdin", daemon=True)
    t.start()
    return t


def start_serial(url: str, baudrate: int, decoder: LineDecoder, queue, stop: threading.Event) -> threading.Thread:
    try:
        import serial
    except ImportError:
        raise RuntimeError("reading a serial port needs pyserial: pip install 'gru-edge[serial]'") from None

    def run():
        delay = 0.5
        while not stop.is_set():
            try:
                with serial.serial_for_url(url, baudrate=baudrate, timeout=0.5) as port:
                    delay = 0.5
                    queue.put(("reopened", decoder, b"", time.time()))
                    print(f"serial {url}: open", file=sys.stderr, flush=True)
                    partial = b""              # readline returns what it has when the timeout hits
                    while not stop.is_set():
                        raw = partial + port.readline()
                        if raw.endswith(b"\n"):
                            queue.put(("line", decoder, raw, time.time()))
                            partial = b""
                        else:
                            partial = raw[-MAX_LINE_BYTES - 1:]
            except (serial.SerialException, OSError) as e:
                print(f"serial {url}: {e}; reopening in {delay:.1f} s", file=sys.stderr)
                stop.wait(delay)
                delay = min(2 * delay, 30.0)
    t = threading.Thread(target=run, name="serial", daemon=True)
    t.start()
    return t
