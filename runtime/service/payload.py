"""What arrives from a sensor, checked: topics → node ids, payloads → readings, times → epoch seconds.

A bad message raises `Malformed` naming what was wrong; the service counts it and goes on.
Nothing here moves a forecaster's state.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import dataclass

MAX_PAYLOAD_BYTES = 64 * 1024      # no sensor reading is larger; a 1 MB message is refused unparsed
TIME_KEYS = ("time", "timestamp", "ts", "date")


class Malformed(ValueError):
    """A message that is no reading; the text says what was wrong and what was expected."""


@dataclass
class Reading:
    """One message's values for one node: {feature: float (NaN: sent as null)}, time in epoch s or None."""
    node: str
    values: dict
    time: float | None = None
    arrived: float = 0.0          # wall clock (time.time()) when it arrived, for the lag figures


def parse_time(value) -> float:
    """ISO 8601 (naive means UTC), epoch seconds (or milliseconds, when > 1e11) → epoch seconds."""
    if isinstance(value, bool):
        raise Malformed(f"time {value!r} is a boolean; expected ISO 8601 text or epoch seconds")
    if isinstance(value, (int, float)):
        t = float(value)
        if not math.isfinite(t):
            raise Malformed(f"time {value!r} is not finite")
        return t / 1000.0 if t > 1e11 else t
    if isinstance(value, _dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=_dt.timezone.utc)).timestamp()
    if isinstance(value, str):
        text = value.strip()
        try:
            return parse_time(float(text))
        except ValueError:
            pass
        try:
            return parse_time(_dt.datetime.fromisoformat(text.replace("Z", "+00:00")))
        except ValueError:
            pass
    raise Malformed(f"time {str(value)[:40]!r} is neither ISO 8601 (2026-01-31T12:00:00Z) nor epoch seconds")


def iso(t: float) -> str:
    """Epoch seconds → ISO 8601 UTC with a Z, to the second (or the millisecond when not whole)."""
    d = _dt.datetime.fromtimestamp(t, _dt.timezone.utc)
    spec = "seconds" if t == int(t) else "milliseconds"
    return d.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


class TopicPattern:
    """An MQTT subscription with named segments: `+` or `{node}` is the node id, `{feature}` the
    feature (for one topic per feature with a bare number). Without a node segment every message
    is the node `default_node`."""

    def __init__(self, pattern: str, default_node: str = "0"):
        parts = pattern.split("/")
        if not pattern or any(p == "#" or ("#" in p or "+" in p) and p != "+" for p in parts):
            raise ValueError(f"subscription {pattern!r}: use '+' or {{node}} for the node id and {{feature}} "
                             "for a feature name; '#' and partial wildcards are not supported")
        plus = [i for i, p in enumerate(parts) if p == "+"]
        node = [i for i, p in enumerate(parts) if p == "{node}"] or plus[:1]
        feat = [i for i, p in enumerate(parts) if p == "{feature}"] + [i for i in plus if i not in node]
        if len(node) > 1 or len(feat) > 1:
            raise ValueError(f"subscription {pattern!r}: at most one node and one feature segment")
        self.pattern, self.parts, self.default_node = pattern, parts, default_node
        self.node_at, self.feature_at = (node or [None])[0], (feat or [None])[0]
        self.subscription = "/".join("+" if i in (self.node_at, self.feature_at) else p for i, p in enumerate(parts))

    def match(self, topic: str):
        """(node, feature or None) for a topic of this subscription, else None."""
        segs = topic.split("/")
        if len(segs) != len(self.parts):
            return None
        for i, (s, p) in enumerate(zip(segs, self.parts)):
            if i not in (self.node_at, self.feature_at) and s != p:
                return None
        node = segs[self.node_at] if self.node_at is not None else self.default_node
        return node, (segs[self.feature_at] if self.feature_at is not None else None)


def _number(key: str, v) -> float:
    if v is None:
        return math.nan
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise Malformed(f"field {key!r} is {type(v).__name__} {str(v)[:30]!r}; expected a number or null")
    return float(v)


def decode_object(obj, fields: dict, ignore_extra: bool) -> tuple:
    """A JSON object → ({feature: value}, time or None). `fields` maps payload keys → features."""
    if not isinstance(obj, dict):
        raise Malformed(f"payload is a JSON {type(obj).__name__}; expected an object of feature values")
    t = next((obj[k] for k in TIME_KEYS if k in obj), None)
    values, unknown = {}, []
    for key, v in obj.items():
        if key in TIME_KEYS:
            continue
        feature = fields.get(key)
        if feature is None:
            unknown.append(key)
            continue
        values[feature] = _number(key, v)
    if unknown and not ignore_extra:
        raise Malformed(f"unknown field(s) {', '.join(map(repr, unknown[:5]))}; expected {', '.join(sorted(fields))}"
                        " (and an optional time); set ignore_extra_fields for payloads that carry more")
    if not values:
        raise Malformed(f"no feature field; expected some of {', '.join(sorted(fields))}")
    return values, (None if t is None else parse_time(t))


def decode_payload(raw: bytes, fields: dict, feature: str | None, ignore_extra: bool) -> tuple:
    """An MQTT payload → ({feature: value}, time or None): a JSON object, or a bare number for a
    per-feature topic (optionally a JSON object {"value": v, "time": t})."""
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise Malformed(f"payload of {len(raw)} bytes, over {MAX_PAYLOAD_BYTES}")
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise Malformed(f"payload {raw[:40]!r} is not JSON") from None
    if feature is not None:
        if feature not in fields.values():
            raise Malformed(f"topic names feature {feature[:40]!r}; expected one of {', '.join(sorted(fields.values()))}")
        if isinstance(obj, dict) and "value" in obj:
            t = next((obj[k] for k in TIME_KEYS if k in obj), None)
            return {feature: _number("value", obj["value"])}, (None if t is None else parse_time(t))
        return {feature: _number(feature, obj)}, None
    return decode_object(obj, fields, ignore_extra)
