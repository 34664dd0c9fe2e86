"""`python -m runtime serve`: live sensors in (MQTT, serial, stdin), forecasts out, for months.

    sources → queue → per-node slot → clock (one tick per sample period) → one batched
    Forecaster call for every slot → sinks (MQTT JSON, appended CSV, stdout)
    + health (retained status with last will, periodic stats) + state checkpoints

Every node (sensor) gets a slot of a `Forecaster(streams=N)` (runtime/service/slots.py: an
allowlist, idle expiry), its own state, held values and counters. Nothing a sensor sends can
crash the service or move a state: every message is bounded and checked at the edge
(runtime/readings.py), and whatever goes wrong with one message is counted as malformed and
warned about (rate-limited). An MQTT message is acknowledged only once it is in a period (or
was dropped and counted), and the periods still open are saved at a stop, so a SIGTERM loses
nothing acknowledged; unacknowledged messages are redelivered by the broker after a restart.
A full or read-only disk costs checkpoints (counted, retried), never forecasts.

With capture on (`--capture`, `[capture]`; runtime/capture.py), every closed period's readings,
forecasts and bounds go into capture.db in one transaction, and an MQTT message is acknowledged
only once its period is in capture.db: a kill -9 loses no reading (the broker redelivers what
was not acknowledged) and captures none twice. The broker must then let about two periods of
every node's readings be in flight unacknowledged (mosquitto: max_inflight_messages).
"""
from __future__ import annotations

import collections
import faulthandler
import json
import math
import os
import signal
import sqlite3
import sys
import threading
import time

import numpy as np

from ..capture import FILE_NAME as CAPTURE_FILE
from ..capture import Capture, CaptureError
from ..files import atomic_write, restore_state
from ..forecaster import load, target_index
from ..readings import Malformed, forecast_columns
from ..streams import series_for
from ..times import BundleClock, TimeError
from ..trust import check_signature_at_load
from .clock import TickClock
from .health import Health, discovery, shadow_discovery
from .inbox import Inbox
from .lines import EOF, LineDecoder, start_serial, start_stdin
from .payload import Reading, TopicPattern, decode_payload
from .reload import open_rollback, open_shadow, publish_shadow, reload_models, shadow_step
from .sinks import CsvSink, ForecastFormat, MqttSink, StdoutSink, csv_row
from .slots import NotANode, Refused, Slots
from .steps import behind_sensors, stepped, why_dropped
from .walltime import ServiceTime

STATE_FILE = "serve-state.npz"


DRAIN = 500                        # messages handled between two looks at the clock
MAX_NAMED_NODES = 10_000           # node names kept in a set (refused, of no series): bounded however many come and go


class Service:
    def __init__(self, bundle: str, cfg: dict):
        m = cfg["model"]
        self.cfg, self.bundle, self.live_path, self.hup = cfg, bundle, os.path.realpath(bundle), False
        self.signer = check_signature_at_load(bundle)     # a device root that requires signatures runs only signed bundles
        self.fc = load(bundle, m["engine"], m["precision"], streams=m["streams"], nan_policy=m["nan_policy"],
                       intervals=m["intervals"])
        man = self.fc.manifest
        self.B, self.features = m["streams"], self.fc.features
        self.col = {f: j for j, f in enumerate(self.features)}
        period = m.get("period_s") or man.get("sample_period_s")
        phase = None if m.get("period_s") else man.get("sample_phase_s")       # (a period of its own: its own grid)
        c = cfg["clock"]
        self.clock = TickClock(period, self.B, len(self.features), c["aggregate"], c.get("grace_s"),
                               c["max_gap_ticks"], c.get("max_future_s"), c["active_ticks"], phase_s=phase)
        self.format = ForecastFormat(man, self.clock.period_s)
        self.health, self.time = Health(self.B), ServiceTime()
        self._started = self.time.now()
        self.timebase = BundleClock.from_manifest(man)         # how a reading's time is read (runtime/times.py)
        self.queue, self.stop_event = Inbox(), threading.Event()
        self.slots = Slots(self.B, m.get("nodes"), m.get("nodes_regex"), m.get("slot_idle_s"))
        self.link, self.sinks, self.patterns, self.line_sources = None, [], [], 0
        self._last_t = np.full(self.B, np.nan)                 # each stream's last event time (DST folds)
        self._held = {}                                        # slot → its latest reading ahead of the clock
        self._future = {}                                      # slot → (event time - now, the reading, now): its latest `future` one
        self._unknown = set()                                  # nodes that are none of the bundle's series
        self.state_path = os.path.join(cfg["state"]["dir"], STATE_FILE) if cfg["state"].get("dir") else None
        self.shadow, self.rollback = open_shadow(self), open_rollback(self)
        self._restore()
        self.capture, self._unacked, self._closed_through = self._open_capture(), collections.deque(), None
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
            from .config import broker_address, tls_context
            from .mqtt import MqttLink
            host, port = broker_address(q["broker"])
            base = q["base_topic"].format(client_id=q["client_id"])
            self.link = MqttLink(host, port, q["client_id"], base, [(p.subscription, s.get("qos", q["qos"]))
                                 for (p, _, _), s in zip(self.patterns, q["subscribe"])], self.queue,
                                 q["keepalive"], q.get("username"), q.get("password"), tls=tls_context(q))
            self.stats_topic = f"{base}/stats"
            if self.shadow is not None and q["homeassistant"]:
                self.link.publish(*shadow_discovery(q["discovery_prefix"], q["client_id"], f"{base}/shadow",
                                                    self.link.status_topic, self.format.target), qos=1, retain=True)
            self.sinks += [MqttSink(self.link, p["topic"], p.get("qos", q["qos"]), p.get("retain", False))
                           for p in q["publish"]]
        if cfg["csv"].get("path"):
            self.sinks.append(CsvSink(cfg["csv"]["path"], forecast_columns(self.fc, cfg["model"]["intervals"]),
                                      cfg["csv"]["rotate_bytes"], cfg["csv"]["keep"]))
        if cfg["stdout"]["enabled"]:
            self.sinks.append(StdoutSink())
        if cfg["serial"].get("url"):
            s = cfg["serial"]
            dec = LineDecoder(f"serial {s['url']}", s["format"], s["node"], self.features, identity, self.fc.manifest)
            start_serial(s["url"], s["baudrate"], dec, self.queue, self.stop_event)
            self.line_sources += 1
        if cfg["stdin"]["enabled"]:
            start_stdin(LineDecoder("stdin", "csv", cfg["stdin"]["node"], self.features, identity, self.fc.manifest),
                        self.queue, self.stop_event)
            self.line_sources += 1

    def _open_capture(self):
        """The capture database (runtime/capture.py), or None when capture is off or cannot start
        (said, counted: the service forecasts without it)."""
        c = self.cfg.get("capture") or {}
        if not c.get("enabled"):
            return None
        path = c.get("path") or os.path.join(self.cfg["state"]["dir"], CAPTURE_FILE)
        levels = self.fc.manifest["intervals"]["levels"] if self.cfg["model"]["intervals"] else []
        try:
            return Capture(path, self.fc.manifest, self.clock.period_s, levels, c.get("capture_days"),
                           c.get("capture_mb"), warn=self.health.warn, now=lambda: self.time.stamp(time.time()))
        except (CaptureError, OSError, sqlite3.Error) as e:
            self.health.count("capture_failures")
            why = str(e) if isinstance(e, CaptureError) else f"{path}: {getattr(e, 'strerror', None) or e}"
            print(f"warning: capture is off: {why}; forecasting goes on", file=sys.stderr)
            return None

    def _reset(self, stream=None) -> None:
        """Zero a slot's state (every slot's with None) in the live model and the shadow."""
        self.fc.reset(stream=stream)
        if self.shadow is not None:
            self.shadow.reset(stream)

    def _set_series(self, slot: int, node: str) -> None:
        """A many-series bundle forecasts a node in its own series' scale (runtime/streams.series_for:
        by name, with [model] device_name for a model of several devices); a node of no series, or of
        several, gets the pooled scale (and the average identity, format 9), said once. The shadow maps
        the node the same way."""
        known, device = self.fc.manifest.get("series") or {}, self.cfg["model"].get("device_name")
        sid, could = series_for(known, node, device)
        if known and not self.fc.set_series(slot, sid) and node not in self._unknown:
            if len(self._unknown) < MAX_NAMED_NODES:         # bounded as slots churn; warnings are rate-limited
                self._unknown.add(node)
            ident = " and the average series' identity" if self.fc.derived is not None and self.fc.derived.ids else ""
            why = (f"matches {len(could)} series ({', '.join(repr(c[:60]) for c in could[:4])}"
                   f"{', ...' if len(could) > 4 else ''}): set [model] device_name to this device's name in the collected "
                   "data;" if could else f"is none of this bundle's {len(known)} series:")
            self.health.warn("unknown_series", f"node {node[:40]!r} {why} it is forecast with the pooled scale{ident}")
        if self.shadow is not None:
            self.shadow.set_series(slot, node, self.fc, device)

    def bind_series(self) -> None:
        """Every slot's node as its series again, in the live model and the shadow (after a reload)."""
        for slot, node in enumerate(self.slots.names):
            if node is not None:
                self._set_series(slot, node)

    def _restore(self) -> None:
        if not self.state_path:
            return
        try:
            os.makedirs(os.path.dirname(self.state_path), exist_ok=True)
        except OSError as e:
            print(f"warning: state dir {os.path.dirname(self.state_path)}: {e.strerror}; starting from a zero state "
                  "(checkpoints will be retried and counted)", file=sys.stderr)
            return
        meta = restore_state(self.fc, self.state_path)
        skew = meta.get("clock_skew_s")
        if isinstance(skew, float) and 0.0 < skew < 1e9:        # a step back before the restart: go on from there
            self.time.restore(skew)
            print(f"serve: service time goes on {skew:.0f} s ahead of the wall clock, as before the restart "
                  "(the wall clock stepped back)", file=sys.stderr)
        now = self._started = self.time.now()
        dropped = self.slots.restore(meta, now)
        for slot in range(self.B):
            if self.slots.names[slot] is None:
                self._reset(slot)                   # expired or no longer allowed: its state goes too
            else:
                self._set_series(slot, self.slots.names[slot])
        self.health.count("expired_slots", n=dropped)
        self._restore_clock(meta, now)
        if len(self.slots):
            print(f"serve: restored the state of {len(self.slots)} stream(s) from {self.state_path}", file=sys.stderr)

    def _restore_clock(self, meta: dict, now: float) -> None:
        """The open period (and, after a clean stop, what was pending in it) unless it lies ahead of the wall clock."""
        doc = meta.get("clock") if isinstance(meta.get("clock"), dict) else {"open": meta.get("open")}
        if not isinstance(doc.get("open"), int) or isinstance(doc.get("open"), bool):
            return
        start = self.clock.time_of(doc["open"])
        if not math.isfinite(start) or start > now + self.clock.max_future_s:
            print(f"warning: {self.state_path}: the saved open period starts at {start:.0f} s, ahead of the wall "
                  f"clock ({now:.0f} s): not restored; the clock starts from the next reading", file=sys.stderr)
            return
        try:
            self.clock.load_json(doc, now)
        except (KeyError, TypeError, ValueError, IndexError) as e:
            print(f"warning: {self.state_path}: the saved open periods are unreadable ({e}); not restored",
                  file=sys.stderr)
            self.clock.pending, self.clock.open = {}, doc["open"]
        for slot in self.slots.by_node.values():      # restored streams are active: no lone node moves the clock
            self.clock.slot_latest[slot] = max(self.clock.slot_latest[slot], self.clock.open - 1)

    def checkpoint(self, final: bool = False) -> bool:
        """Save every stream's state, the node map and the open period (and at a stop, what is pending).
        A failure (a full or read-only disk) is warned about, counted, and retried at the next one."""
        if not self.state_path:
            return False
        meta = {**self.slots.to_json(), "open": self.clock.open, "clock_skew_s": self.time.skew}
        if final and self.clock.open is not None:
            meta["clock"] = self.clock.to_json()
        try:
            self.fc.save_state(self.state_path, meta)
            if self.shadow is not None:
                self.shadow.save_state(meta)
        except OSError as e:
            self.health.count("checkpoint_failures")
            self.health.warn("checkpoint", f"could not save the state to {self.state_path} ({e.strerror or e}); "
                             "forecasting goes on, retrying at the next checkpoint")
            return False
        return True

    # -- messages → readings → the clock ---------------------------------------------------------
    def handle(self, item) -> None:
        """One queued message or line, whatever it holds: a reading, counted and warned about when
        it is none. An MQTT message is acknowledged after it is in a period or dropped."""
        kind, src, raw, arrived, ack = item
        period = None
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
            if reading is not None:
                period = self.accept(reading)
        except Exception as e:          # noqa: BLE001 — no message may stop the service
            where = src if kind == "mqtt" else src.name
            why = str(e) if isinstance(e, Malformed) else f"{type(e).__name__}: {str(e)[:200]}"
            self.health.count("malformed")
            self.health.warn("malformed", f"malformed message ({str(where)[:80]}): {why}")
        finally:
            if ack is not None:
                self._ack(ack, period)

    def _ack(self, token, period) -> None:
        """Acknowledge now, or (capture on, the reading in a period) once that period is captured.
        Acknowledgements leave in arrival order, as MQTT wants them."""
        if self.capture is None:
            self.link.ack(token)
            return
        self._unacked.append((period, token))
        self._release()

    def _release(self, everything: bool = False) -> None:
        q, done = self._unacked, self._closed_through
        while q and (everything or q[0][0] is None or (done is not None and q[0][0] <= done)):
            self.link.ack(q.popleft()[1])

    def _from_topic(self, topic: str, raw: bytes, arrived: float):
        for pattern, fields, ignore_extra in self.patterns:
            hit = pattern.match(topic)
            if hit:
                values, t = decode_payload(raw, fields, hit[1], ignore_extra)
                return Reading(hit[0], values, t, arrived)
        return None

    def accept(self, r: Reading):
        """A reading into its stream's period (returns the period), or dropped and counted (late,
        future, ahead, duplicate: returns None)."""
        now = self.now()
        slot = self._slot(r.node, now)
        if slot is None:
            return None
        row = np.full(len(self.features), np.nan)
        for f, v in r.values.items():
            row[self.col[f]] = v
        t = self._epoch(r, slot)
        verdict = self.clock.classify(slot, t, now)
        if verdict == "future" and behind_sensors(self, slot, t, now, (t, row, r.arrived, True)):
            self.now()                          # the step: this reading and the others held are replayed
            return self.clock.period_of(t)
        if verdict in ("ahead", "jump"):
            self._held[slot] = (t, row, r.arrived, r.time is not None)
            if verdict == "jump":
                self._jump(now)
                return None
        if verdict != "ok":
            self.health.count(verdict, slot)
            self.health.warn(verdict, f"{verdict} reading from {r.node[:40]!r} ({why_dropped(self, verdict, t, now)}): dropped")
            return None
        return self.clock.period_of(t) if self._add(slot, t, row, r.arrived, r.time is not None) else None

    def _epoch(self, r: Reading, slot: int) -> float:
        if r.time is None:
            return self.time.stamp(r.arrived)
        last = self._last_t[slot]
        try:
            return self.timebase.epoch(r.time, after=None if math.isnan(last) else float(last))
        except TimeError as e:
            raise Malformed(str(e)) from None

    def _add(self, slot: int, t: float, row, arrived: float, timed: bool) -> bool:
        if not self.clock.add(slot, t, row, self.time.stamp(arrived), timed):
            self.health.count("duplicates", slot)               # a QoS 1 redelivery, a resent line
            return False
        self._last_t[slot] = t
        now = self.time.now()
        self.slots.touch(slot, now)
        self.health.count("readings", slot)
        if self.clock.period_of(t) > self.clock.open:       # a stream moved on: the open period may close
            self.close_ticks(now)
        return True

    def _slot(self, node: str, now: float):
        slot = self.slots.get(node)
        if slot is not None:
            return slot
        try:
            self.slots.check_id(node)
            slot, expired = self.slots.assign(node, now, self.clock.has_pending)
        except Refused as e:
            key = "malformed" if isinstance(e, NotANode) else "refused_readings"
            self.health.count(key)
            if key == "refused_readings" and len(self.health.refused_nodes) < MAX_NAMED_NODES:
                self.health.refused_nodes.add(node[:128])
            self.health.warn(key, str(e))
            return None
        if expired is not None:
            self.health.count("expired_slots")
            self.health.warn("expired", f"node {expired[:40]!r} was idle over {self.slots.idle_s:g} s: its stream "
                             f"goes to {node[:40]!r}")
        self._reset(slot)
        self._set_series(slot, node)
        self.clock.forget(slot)
        self.health.reset_node(slot)
        self._last_t[slot] = np.nan
        self._held.pop(slot, None)
        self._future.pop(slot, None)
        self._announce(node)
        return slot

    def _announce(self, node: str) -> None:
        q = self.cfg["mqtt"]
        if self.link is not None and q["homeassistant"] and q["publish"]:
            topic, config = discovery(q["discovery_prefix"], q["client_id"], node,
                                      q["publish"][0]["topic"].format(node=node), self.link.status_topic, self.format,
                                      self.fc.series_of(self.slots.by_node[node]))
            self.link.publish(topic, config, qos=1, retain=True)

    def _jump(self, now: float) -> None:
        """A quorum of streams (or all after a stall) is past the gap: flush, restart there, zero
        every state, and replay the readings held ahead."""
        target = self.clock.jump_target(now)
        self.close_ticks(now, flush=True)
        if self.clock.open is not None:            # the periods jumped over are missing for every stream
            skipped = max(self.clock.period_of(target) - self.clock.open, 0)
            self.health.count_many("missing_periods", np.flatnonzero(np.isfinite(self.slots.seen)), skipped)
        self.clock.restart(target, now)
        self._reset()
        self._last_t[:] = np.nan
        self.health.count("clock_jumps")
        self.health.warn("jump", f"the clock jumped to {target:.0f} s (over {self.clock.max_gap_ticks} periods "
                         "ahead, with a quorum of streams): every stream starts from zero")
        self._replay_held()

    def _replay_held(self) -> None:
        """The readings held ahead of the clock (each slot's latest), into the periods they belong to."""
        held, self._held = self._held, {}
        for slot, (t, row, arrived, timed) in sorted(held.items(), key=lambda kv: kv[1][0]):
            if self.clock.open is None or self.clock.period_of(t) >= self.clock.open:
                self._add(slot, t, row, arrived, timed)

    # -- the wall clock's steps ------------------------------------------------------------------
    def now(self) -> float:
        """Service time (runtime/service/walltime.py), the wall clock's steps since the last call said and taken."""
        now = self.time.now()
        for step, why in self.time.take_steps():
            stepped(self, step, why, now)
        return now


    # -- ticks → forecasts ----------------------------------------------------------------------
    def close_ticks(self, now: float, flush: bool = False) -> None:
        if not flush:          # the loop held up (a suspend, a slow disk): go on from now, the gap counted missing
            skipped = self.clock.skip_to(now, self.clock.max_gap_ticks)
            self.health.count_many("missing_periods", np.flatnonzero(np.isfinite(self.slots.seen)), skipped)
        for tick in self.clock.close_ready(now, flush):
            try:
                self._tick(tick, self.time.stamp(time.time()))
            except Exception as e:          # noqa: BLE001 — a tick that fails is counted, the next one runs
                self.health.count("tick_errors")
                self.health.warn("tick", f"tick at {tick.start_s:.0f} s failed: {type(e).__name__}: {str(e)[:200]}")
            self._closed_through = tick.period
        if self._unacked:
            self._release()

    def _tick(self, tick, closed: float) -> None:
        y = np.asarray(self.fc.step(tick.x[0] if self.B == 1 else tick.x, time=tick.time_s)).reshape(self.B, -1)
        bounds = {lv: (lo.reshape(self.B, -1), hi.reshape(self.B, -1)) for lv, (lo, hi) in self.fc.bounds.items()}
        if self.shadow is not None:
            shadow_step(self, tick, y)
        if self.rollback is not None:
            self.rollback.step(self.fc, tick.x[:, target_index(self.fc.manifest)], y)
        seen = np.flatnonzero(tick.seen)
        times = self.format.times(tick.start_s)
        template = self.format.template(times, list(bounds))
        want_row = any(isinstance(sink, CsvSink) for sink in self.sinks)
        ys = y[seen].tolist()                  # Python floats format several times faster than numpy scalars
        bs = [(lo[seen].tolist(), hi[seen].tolist()) for lo, hi in bounds.values()]
        for i, slot in enumerate(seen):
            node, b = self.slots.names[slot], [(lo[i], hi[i]) for lo, hi in bs]
            text = self.format.render(template, node, ys[i], b, self.fc.series_of(slot))
            row = csv_row(node, times, self.format.bundle_id, ys[i], b) if want_row else None
            for sink in self.sinks:
                self._write(sink, node, text, row)
        self._count_tick(tick, seen)
        for sink in self.sinks:
            if isinstance(sink, CsvSink):
                self._write(sink, None, None, None)
        if self.capture is not None:                 # the readings, the forecasts and bounds as made
            self.capture.record_tick(tick.period, [self.slots.names[s] for s in seen], tick.x[seen], y[seen],
                                     {lv: (lo[seen], hi[seen]) for lv, (lo, hi) in bounds.items()})
        done = self.time.stamp(time.time())                  # (arrivals are in service time too)
        self.health.reading_lag.extend(done - tick.arrived[seen])
        self.health.tick_lag.append(done - closed)
        every = self.cfg["state"]["checkpoint_every"]
        if every and self.health.counts["ticks"] % every == 0:
            self.checkpoint()

    def _write(self, sink, node, text, row) -> None:
        """One forecast into one sink (node None: the CSV's flush); a full disk, or a sink that refuses
        one node's forecast, is counted, not fatal: the other nodes' forecasts in the tick go on."""
        try:
            sink.write(node, text, row) if node is not None else sink.flush()
        except (OSError, ValueError) as e:
            self.health.count("sink_errors")
            why = e.strerror if isinstance(e, OSError) and e.strerror else f"{type(e).__name__}: {e}"
            self.health.warn("sink", f"{type(sink).__name__}: {why}; forecasts go on")

    def _count_tick(self, tick, seen) -> None:
        """Forecasts and imputed cells of the streams that sent something; `missing_periods` of
        the streams that have a node and sent nothing (a broker's drops show up here)."""
        h = self.health
        h.count("ticks")
        h.count_many("forecasts", seen, 1)
        h.count_many("imputed_cells", seen, np.isnan(tick.x[seen]).sum(axis=1))
        silent = np.flatnonzero(np.isfinite(self.slots.seen) & ~tick.seen)
        h.count_many("missing_periods", silent, 1)

    # -- the loop -------------------------------------------------------------------------------
    def stats(self) -> dict:
        doc = self.health.stats(self.slots.by_node, self.fc.stats, self.fc.manifest["bundle_id"], self.link)
        for key, n in (self.capture.counts.items() if self.capture is not None else ()):
            doc[key] = doc.get(key, 0) + n
        return doc

    def publish_stats(self) -> None:
        doc = self.stats()
        print("stats " + json.dumps(doc), file=sys.stderr)
        if self.link is not None:
            self.link.publish(self.stats_topic, json.dumps(doc), qos=0)
        if self.shadow is not None:
            publish_shadow(self)
        if self.rollback is not None and self.rollback.check(self.link):
            self.hup = True                                      # current switched back: reload it

    def loop(self) -> int:
        """Handle messages and close ticks until a stop (or the end of the only line source)."""
        every = self.cfg["mqtt"]["stats_every_s"]
        next_stats = time.monotonic() + every
        while not self.stop_event.is_set():
            now = self.now()
            self.queue.wait(min(max(self.clock.next_deadline(now) - now, 0.0), 0.5))
            try:
                for _ in range(DRAIN):
                    self.handle(self.queue.pop())
            except IndexError:
                pass
            self.close_ticks(self.now())
            if self.hup:                                           # SIGHUP: a new current or shadow
                self.hup = False
                reload_models(self)
            if self.line_sources == 0 and not self.patterns:       # stdin ended and nothing else feeds us
                self.close_ticks(self.now(), flush=True)
                break
            if time.monotonic() >= next_stats:
                self.publish_stats()
                next_stats = time.monotonic() + every
        return 0

    def close(self) -> None:
        """Save everything (the open periods too: their readings were acknowledged), say goodbye."""
        self.stop_event.set()
        saved = self.checkpoint(final=True)
        if self._unacked and saved:                  # what is still pending was saved with the state
            self._release(everything=True)
        if self.capture is not None:
            self.capture.close()
        self.publish_stats()
        if self.link is not None:
            self.link.close()
        for sink in self.sinks:
            try:
                sink.close()
            except OSError as e:
                print(f"warning: closing {type(sink).__name__}: {e.strerror or e}", file=sys.stderr)


def serve(bundle: str, cfg: dict) -> int:
    """Run until SIGTERM/SIGINT (or the end of stdin when it is the only source)."""
    faulthandler.register(signal.SIGUSR1, all_threads=True)      # kill -USR1: every thread's stack on stderr
    svc = Service(bundle, cfg)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: svc.stop_event.set())
    signal.signal(signal.SIGHUP, lambda *_: setattr(svc, "hup", True))
    if svc.state_path:                               # for flash promote / deploy --shadow to send the SIGHUP
        try:
            with atomic_write(os.path.join(os.path.dirname(svc.state_path), "serve.pid"), "w") as f:
                f.write(f"{os.getpid()}\n")
        except OSError as e:
            print(f"warning: serve.pid: {e.strerror or e}; flash promote cannot signal this serve", file=sys.stderr)
    svc.queue.wake_on_signals()
    print(f"serve: bundle {svc.fc.manifest['bundle_id']} ({svc.fc.artifact['file']}, {svc.B} streams, "
          f"period {svc.clock.period_s:g} s, grace {svc.clock.grace_s:g} s"
          f"{', signed by ' + svc.signer if svc.signer else ''})", file=sys.stderr)
    try:
        return svc.loop()
    finally:
        svc.close()
