"""`python -m runtime serve`: live sensors in (MQTT, serial, stdin), forecasts out, for months.

    sources → queue → per-node slot → clock (one tick per sample period) → one batched
    Forecaster call for every slot → sinks (MQTT JSON, appended CSV, stdout)
    + health (retained status with last will, periodic stats) + state checkpoints

Every node (sensor) gets a fixed slot of a `Forecaster(streams=N)`, its own state, held values
and counters; a node beyond N is refused and counted. Nothing a sensor sends can crash the
service or move a state: a bad message is counted and warned about (rate-limited).
"""
from __future__ import annotations

import collections
import faulthandler
import json
import os
import select
import signal
import sys
import threading
import time

import numpy as np

from ..forecaster import load
from ..stream import forecast_columns, restore_state
from .clock import TickClock
from .health import Health, discovery
from .lines import EOF, LineDecoder, start_serial, start_stdin
from .payload import Malformed, Reading, TopicPattern, decode_payload
from .sinks import CsvSink, ForecastFormat, MqttSink, StdoutSink, csv_row

STATE_FILE = "serve-state.npz"


class Inbox:
    """Messages from the transport threads to the main loop: a deque and a self-pipe, waited on
    with select() (a timed lock or futex wait, which queue.SimpleQueue uses, was seen never to
    return under QEMU user mode). Signals wake the wait too (signal.set_wakeup_fd)."""

    def __init__(self):
        self._items = collections.deque()
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)

    def put(self, item) -> None:
        self._items.append(item)
        if len(self._items) == 1:              # the reader drains to empty before it waits again
            try:
                os.write(self._w, b"\0")
            except BlockingIOError:
                pass                           # the pipe is full: the reader is due to wake anyway

    def wait(self, timeout: float) -> None:
        if not self._items:
            select.select([self._r], [], [], timeout)
        try:
            os.read(self._r, 1 << 16)
        except BlockingIOError:
            pass

    def pop(self):
        return self._items.popleft()

    def wake_on_signals(self) -> None:
        signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
MAX_NODE_ID = 128
DRAIN = 500                        # messages handled between two looks at the clock


class Service:
    def __init__(self, bundle: str, cfg: dict):
        m = cfg["model"]
        self.cfg = cfg
        self.fc = load(bundle, m["engine"], m["precision"], streams=m["streams"], nan_policy=m["nan_policy"],
                       intervals=m["intervals"])
        man = self.fc.manifest
        self.B, self.features = m["streams"], self.fc.features
        self.col = {f: j for j, f in enumerate(self.features)}
        period = m.get("period_s") or man.get("sample_period_s")
        c = cfg["clock"]
        self.clock = TickClock(period, self.B, len(self.features), c["aggregate"], c.get("grace_s"),
                               c["max_gap_ticks"], c.get("max_future_s"), c["active_ticks"])
        self.format = ForecastFormat(man, self.clock.period_s)
        self.health = Health(self.B)
        self.queue, self.stop_event = Inbox(), threading.Event()
        self.slots, self.link, self.sinks, self.patterns, self.line_sources = {}, None, [], [], 0
        self.names = [None] * self.B                 # slot → node (the inverse of slots)
        self._last_t = np.full(self.B, np.nan)
        self._last_row = np.full((self.B, len(self.features)), np.nan)
        self.state_path = os.path.join(cfg["state"]["dir"], STATE_FILE) if cfg["state"].get("dir") else None
        self._restore()
        self._open_transports()

    # -- start ----------------------------------------------------------------------------------
    def _open_transports(self) -> None:
        cfg, q = self.cfg, self.cfg["mqtt"]
        identity = {f: f for f in self.features}
        for i, s in enumerate(q["subscribe"]):
            unknown = sorted(set(s.get("fields", {})) - set(self.features))
            if unknown:
                raise ValueError(f"mqtt.subscribe[{i}].fields: {', '.join(unknown)} is no feature of the bundle; "
                                 f"expected some of {', '.join(self.features)}")
            p = TopicPattern(s["topic"])
            self.patterns.append((p, {**identity, **{v: k for k, v in s.get("fields", {}).items()}},
                                  s.get("ignore_extra_fields", False)))
        if q.get("broker"):
            from .config import broker_address
            from .mqtt import MqttLink
            host, port = broker_address(q["broker"])
            base = q["base_topic"].format(client_id=q["client_id"])
            self.link = MqttLink(host, port, q["client_id"], base, [(p.subscription, s.get("qos", q["qos"]))
                                 for (p, _, _), s in zip(self.patterns, q["subscribe"])], self.queue,
                                 q["keepalive"], q.get("username"), q.get("password"))
            self.stats_topic = f"{base}/stats"
            self.sinks += [MqttSink(self.link, p["topic"], p.get("qos", q["qos"]), p.get("retain", False))
                           for p in q["publish"]]
        if cfg["csv"].get("path"):
            self.sinks.append(CsvSink(cfg["csv"]["path"], forecast_columns(self.fc, cfg["model"]["intervals"]),
                                      cfg["csv"]["rotate_bytes"], cfg["csv"]["keep"]))
        if cfg["stdout"]["enabled"]:
            self.sinks.append(StdoutSink())
        if cfg["serial"].get("url"):
            s = cfg["serial"]
            dec = LineDecoder(f"serial {s['url']}", s["format"], s["node"], self.features, identity)
            start_serial(s["url"], s["baudrate"], dec, self.queue, self.stop_event)
            self.line_sources += 1
        if cfg["stdin"]["enabled"]:
            start_stdin(LineDecoder("stdin", "csv", cfg["stdin"]["node"], self.features, identity),
                        self.queue, self.stop_event)
            self.line_sources += 1

    def _restore(self) -> None:
        if not self.state_path:
            return
        os.makedirs(os.path.dirname(self.state_path), exist_ok=True)
        meta = restore_state(self.fc, self.state_path)
        nodes = {str(n): int(s) for n, s in meta.get("nodes", {}).items() if isinstance(s, int) and 0 <= s < self.B}
        self.slots = nodes if len(set(nodes.values())) == len(nodes) else {}
        for node, slot in self.slots.items():
            self.names[slot] = node
        if isinstance(meta.get("open"), int):       # periods that ended while we were down are no silence we saw
            self.clock.open, self.clock.opened_wall = meta["open"], time.time()
            self.clock.last_arrival = time.time()
        if self.slots:
            print(f"serve: restored the state of {len(self.slots)} stream(s) from {self.state_path}", file=sys.stderr)

    def checkpoint(self) -> None:
        if self.state_path:
            self.fc.save_state(self.state_path, {"nodes": self.slots, "open": self.clock.open})

    # -- messages → readings → the clock ---------------------------------------------------------
    def handle(self, item) -> None:
        kind, src, raw, arrived = item
        try:
            if kind == "mqtt":
                reading = self._from_topic(src, raw, arrived)
            elif kind == "reopened":
                src.reopened()
                return
            elif raw == EOF:
                self.line_sources -= 1
                return
            else:
                reading = src.decode(raw, arrived)
        except Malformed as e:
            self.health.count("malformed")
            self.health.warn("malformed", f"malformed message ({src if kind == 'mqtt' else src.name}): {e}")
            return
        if reading is not None:
            self.accept(reading)

    def _from_topic(self, topic: str, raw: bytes, arrived: float):
        for pattern, fields, ignore_extra in self.patterns:
            hit = pattern.match(topic)
            if hit:
                values, t = decode_payload(raw, fields, hit[1], ignore_extra)
                return Reading(hit[0], values, t, arrived)
        return None

    def accept(self, r: Reading) -> None:
        slot = self._slot(r.node)
        if slot is None:
            return
        row = np.full(len(self.features), np.nan)
        for f, v in r.values.items():
            row[self.col[f]] = v
        t = r.time if r.time is not None else r.arrived
        if r.time is not None and t == self._last_t[slot] and np.array_equal(row, self._last_row[slot], equal_nan=True):
            self.health.count("duplicates", slot)               # a QoS 1 redelivery
            return
        verdict = self.clock.classify(t, time.time())
        if verdict == "jump":
            self._jump(t)
        elif verdict != "ok":
            self.health.count(verdict, slot)
            self.health.warn(verdict, f"{verdict} reading from {r.node} (time {t:.0f}, open period starts "
                             f"{(self.clock.open or 0) * self.clock.period_s:.0f}): dropped")
            return
        self.clock.add(slot, t, row, r.arrived)
        self._last_t[slot], self._last_row[slot] = t, row
        self.health.count("readings", slot)
        if self.clock.period_of(t) > self.clock.open:       # a stream moved on: the open period may close
            self.close_ticks(time.time())

    def _slot(self, node: str):
        slot = self.slots.get(node)
        if slot is not None:
            return slot
        if len(node) > MAX_NODE_ID or not node.isprintable() or not node:
            self.health.count("malformed")
            self.health.warn("malformed", f"node id {node[:40]!r}: expected 1-{MAX_NODE_ID} printable characters")
            return None
        if len(self.slots) >= self.B:
            self.health.count("refused_readings")
            if node not in self.health.refused_nodes and len(self.health.refused_nodes) < 10_000:
                self.health.refused_nodes.add(node)
            self.health.warn("refused", f"node {node!r} refused: all {self.B} streams are taken (--streams)")
            return None
        slot = self.slots[node] = len(self.slots)
        self.names[slot] = node
        self.fc.reset(stream=slot)
        self._announce(node)
        return slot

    def _announce(self, node: str) -> None:
        q = self.cfg["mqtt"]
        if self.link is not None and q["homeassistant"] and q["publish"]:
            topic, config = discovery(q["discovery_prefix"], q["client_id"], node,
                                      q["publish"][0]["topic"].format(node=node), self.link.status_topic, self.format)
            self.link.publish(topic, config, qos=1, retain=True)

    def _jump(self, t: float) -> None:
        self.close_ticks(time.time(), flush=True)
        self.clock.restart(t, time.time())
        self.fc.reset()
        self._last_t[:] = np.nan
        self.health.count("clock_jumps")
        self.health.warn("jump", f"the clock jumped to {t:.0f} s (over {self.clock.max_gap_ticks} periods ahead): "
                         "every stream starts from zero")

    # -- ticks → forecasts ----------------------------------------------------------------------
    def close_ticks(self, now: float, flush: bool = False) -> None:
        for tick in self.clock.close_ready(now, flush):
            self._tick(tick, time.time())

    def _tick(self, tick, closed: float) -> None:
        y = np.asarray(self.fc.step(tick.x[0] if self.B == 1 else tick.x, time=tick.start_s)).reshape(self.B, -1)
        bounds = {lv: (lo.reshape(self.B, -1), hi.reshape(self.B, -1)) for lv, (lo, hi) in self.fc.bounds.items()}
        seen = np.flatnonzero(tick.seen)
        missing = np.isnan(tick.x[seen]).sum(axis=1)
        times = self.format.times(tick.start_s)
        template = self.format.template(times, list(bounds))
        want_row = any(isinstance(sink, CsvSink) for sink in self.sinks)
        ys = y[seen].tolist()                  # Python floats format several times faster than numpy scalars
        bs = [(lo[seen].tolist(), hi[seen].tolist()) for lo, hi in bounds.values()]
        for i, (slot, imputed) in enumerate(zip(seen, missing)):
            node, b = self.names[slot], [(lo[i], hi[i]) for lo, hi in bs]
            text = self.format.render(template, node, ys[i], b)
            row = csv_row(node, times, self.format.bundle_id, ys[i], b) if want_row else None
            for sink in self.sinks:
                sink.write(node, text, row)
            self.health.count("imputed_cells", slot, int(imputed))
            self.health.count("forecasts", slot)
        for sink in self.sinks:
            if isinstance(sink, CsvSink):
                sink.flush()
        done = time.time()
        self.health.reading_lag.extend(done - tick.arrived[seen])
        self.health.tick_lag.append(done - closed)
        self.health.count("ticks")
        every = self.cfg["state"]["checkpoint_every"]
        if every and self.health.counts["ticks"] % every == 0:
            self.checkpoint()

    # -- the loop -------------------------------------------------------------------------------
    def stats(self) -> dict:
        return self.health.stats(self.slots, self.fc.stats, self.fc.manifest["bundle_id"], self.link)

    def publish_stats(self) -> None:
        doc = self.stats()
        print("stats " + json.dumps(doc), file=sys.stderr)
        if self.link is not None:
            self.link.publish(self.stats_topic, json.dumps(doc), qos=0)

    def run(self) -> int:
        every = self.cfg["mqtt"]["stats_every_s"]
        next_stats = time.monotonic() + every
        while not self.stop_event.is_set():
            now = time.time()
            self.queue.wait(min(max(self.clock.next_deadline(now) - now, 0.0), 0.5))
            try:
                for _ in range(DRAIN):
                    self.handle(self.queue.pop())
            except IndexError:
                pass
            self.close_ticks(time.time())
            if self.line_sources == 0 and not self.patterns:       # stdin ended and nothing else feeds us
                self.close_ticks(time.time(), flush=True)
                break
            if time.monotonic() >= next_stats:
                self.publish_stats()
                next_stats = time.monotonic() + every
        return 0

    def close(self) -> None:
        self.stop_event.set()
        self.checkpoint()
        self.publish_stats()
        if self.link is not None:
            self.link.close()
        for sink in self.sinks:
            sink.close()


def serve(bundle: str, cfg: dict) -> int:
    """Run until SIGTERM/SIGINT (or the end of stdin when it is the only source)."""
    faulthandler.register(signal.SIGUSR1, all_threads=True)      # kill -USR1: every thread's stack on stderr
    svc = Service(bundle, cfg)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: svc.stop_event.set())
    svc.queue.wake_on_signals()
    print(f"serve: bundle {svc.fc.manifest['bundle_id']} ({svc.fc.artifact['file']}, {svc.B} streams, "
          f"period {svc.clock.period_s:g} s, grace {svc.clock.grace_s:g} s)", file=sys.stderr)
    try:
        return svc.run()
    finally:
        svc.close()
