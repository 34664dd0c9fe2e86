"""What the service says about itself: counters, lag percentiles, rate-limited warnings, and
Home Assistant MQTT discovery (each stream's forecast appears as a sensor entity, no YAML)."""
from __future__ import annotations

import collections
import hashlib
import json
import re
import sys
import time

import numpy as np

COUNTERS = ("ticks", "readings", "malformed", "late", "future", "ahead", "duplicates", "refused_readings",
            "expired_slots", "missing_periods", "imputed_cells", "clock_jumps", "clock_steps", "forecasts", "checkpoint_failures",
            "sink_errors", "tick_errors", "capture_failures", "shadow_errors", "shadow_failures", "reload_failures")
PER_NODE = ("readings", "late", "future", "ahead", "duplicates", "missing_periods", "imputed_cells", "forecasts")
PER_NODE_IN_STATS = 64           # with more streams, stats carry totals only


class Health:
    """Service-wide and per-stream counters and the lag figures, as one stats document."""

    def __init__(self, streams: int):
        self.started = time.monotonic()
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.node = {k: np.zeros(streams, np.int64) for k in PER_NODE}
        self.refused_nodes = set()
        self.reading_lag = collections.deque(maxlen=100_000)     # s: last reading in a tick → its forecast out
        self.tick_lag = collections.deque(maxlen=10_000)         # s: a tick closed → all its forecasts out
        self._warned = {}

    def count(self, key: str, slot: int | None = None, n: int = 1) -> None:
        self.counts[key] += n
        if slot is not None and key in self.node:
            self.node[key][slot] += n

    def count_many(self, key: str, slots: np.ndarray, n) -> None:
        """Count n (a number, or one per slot) for each of `slots` [k] at once."""
        self.node[key][slots] += n
        self.counts[key] += int(np.sum(n) if np.ndim(n) else n * len(slots))

    def reset_node(self, slot: int) -> None:
        """A slot handed to a new node starts its per-node counts from zero."""
        for v in self.node.values():
            v[slot] = 0

    def warn(self, kind: str, text: str, per_minute: int = 5) -> None:
        """At most `per_minute` lines per kind per minute on stderr; then a count of the rest."""
        now = time.monotonic()
        start, shown, hidden = self._warned.get(kind, (now, 0, 0))
        if now - start > 60:
            if hidden:
                print(f"warning: {hidden} more {kind} message(s) in the last minute were not shown", file=sys.stderr)
            start, shown, hidden = now, 0, 0
        if shown < per_minute:
            print(f"warning: {text}", file=sys.stderr)
            shown += 1
        else:
            hidden += 1
        self._warned[kind] = (start, shown, hidden)

    def stats(self, slots: dict, fc_stats: dict, bundle_id: str, link=None) -> dict:
        out = {"bundle_id": bundle_id, "uptime_s": round(time.monotonic() - self.started, 1), **self.counts,
               "nodes": len(slots), "refused_nodes": len(self.refused_nodes),
               "lag_ms": {"reading_to_forecast": _percentiles(self.reading_lag),
                          "tick_to_published": _percentiles(self.tick_lag)},
               # the forecaster's own `imputed` also counts the cells of idle slots: imputed_cells is the true one
               "forecaster": {k: v for k, v in fc_stats.items() if k not in ("score", "imputed")}}
        if link is not None:
            out["mqtt"] = {"connected": link.connected, "connects": link.connects, "disconnects": link.disconnects}
        if len(slots) <= PER_NODE_IN_STATS:
            out["per_node"] = {n: {k: int(v[s]) for k, v in self.node.items()} for n, s in slots.items()}
        if "score" in fc_stats:
            out["score"] = fc_stats["score"]
        return out


def _percentiles(values) -> dict:
    if not values:
        return {"n": 0}
    a = 1e3 * np.asarray(values)
    return {"n": len(a), "p50": round(float(np.percentile(a, 50)), 3), "p99": round(float(np.percentile(a, 99)), 3),
            "max": round(float(a.max()), 3)}


def object_id(client_id: str, node: str, *rest: str) -> str:
    """A Home Assistant object id, unique per raw node id: the readable part ([A-Za-z0-9_-], so
    `é` and `ü`, or `a.b` and `a_b`, look alike) and a short hash of the raw id beside it."""
    readable = re.sub(r"[^A-Za-z0-9_-]", "_", "_".join((client_id, node[:64]) + rest))
    return f"{readable}_{hashlib.sha256(node.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def discovery(prefix: str, client_id: str, node: str, state_topic: str, status_topic: str, fmt,
              series=None) -> tuple:
    """(topic, retained JSON) announcing one stream's next-step forecast to Home Assistant (in the
    unit of its `series`: ForecastFormat.unit_of); every step's value and time is in the entity's
    attributes."""
    oid = object_id(client_id, node, fmt.target)
    minutes = fmt.period_s / 60
    config = {
        "name": f"{fmt.target} forecast (+{minutes:g} min)",
        "unique_id": f"gru_edge_{oid}",
        "object_id": f"gru_edge_{oid}",
        "state_topic": state_topic,
        "value_template": "{{ value_json.forecast[0].value }}",
        "json_attributes_topic": state_topic,
        "json_attributes_template": "{{ {'bundle_id': value_json.bundle_id, 'forecast': value_json.forecast} | tojson }}",
        "availability_topic": status_topic,
        "payload_available": "online", "payload_not_available": "offline",
        "device": {"identifiers": [f"gru_edge_{object_id(client_id, node)}"],
                   "name": f"gru-edge {node}", "manufacturer": "gru-edge", "model": f"bundle {fmt.bundle_id}"},
    }
    if fmt.unit_of(series):
        config["unit_of_measurement"] = fmt.unit_of(series)
    return f"{prefix}/sensor/{oid}/config", json.dumps(config)


def shadow_discovery(prefix: str, client_id: str, state_topic: str, status_topic: str, target: str) -> tuple:
    """(topic, retained JSON) announcing the shadow comparison (candidate vs live MAE) to Home Assistant."""
    oid = object_id(client_id, "shadow", target)
    config = {
        "name": f"{target} shadow candidate MAE",
        "unique_id": f"gru_edge_{oid}", "object_id": f"gru_edge_{oid}",
        "state_topic": state_topic,
        "value_template": "{{ value_json.candidate_mae_mean }}",
        "json_attributes_topic": state_topic,
        "availability_topic": status_topic,
        "payload_available": "online", "payload_not_available": "offline",
        "device": {"identifiers": [f"gru_edge_{object_id(client_id, 'shadow')}"], "name": f"gru-edge {client_id} shadow",
                   "manufacturer": "gru-edge"},
    }
    return f"{prefix}/sensor/{oid}/config", json.dumps(config)
