"""What arrives from a sensor, checked: topics → node ids, payloads → readings (values and the time as sent).

A bad message raises `Malformed` naming what was wrong; the service counts it and goes on.
Nothing here moves a forecaster's state.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..readings import Malformed, is_time_column, json_number, loads, time_value
from ..times import iso

__all__ = ["Malformed", "Reading", "TopicPattern", "decode_object", "decode_payload", "iso"]


@dataclass
class Reading:
    """One message's values for one node: {feature: float (NaN: sent as null)}, its time as sent
    (epoch s or ms, ISO 8601; read on the bundle's clock by the service) or None, and when it arrived."""
    node: str
    values: dict
    time: object = None
    arrived: float = 0.0          # wall clock (time.time()) when it arrived, for the lag figures


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


def _time_of(obj: dict):
    t = next((v for k, v in obj.items() if is_time_column(k)), None)
    return None if t is None else time_value(t)


def decode_object(obj, fields: dict, ignore_extra: bool) -> tuple:
    """A JSON object → ({feature: value}, time as sent or None). `fields` maps payload keys → features."""
    if not isinstance(obj, dict):
        raise Malformed(f"payload is a JSON {type(obj).__name__}; expected an object of feature values")
    values, unknown = {}, []
    for key, v in obj.items():
        if is_time_column(key):
            continue
        feature = fields.get(key)
        if feature is None:
            unknown.append(key)
            continue
        values[feature] = json_number(key, v)
    if unknown and not ignore_extra:
        raise Malformed(f"unknown field(s) {', '.join(repr(k[:40]) for k in unknown[:5])}; expected "
                        f"{', '.join(sorted(fields))} (and an optional time); set ignore_extra_fields for payloads "
                        "that carry more")
    if not values:
        raise Malformed(f"no feature field; expected some of {', '.join(sorted(fields))}")
    return values, _time_of(obj)


def decode_payload(raw: bytes, fields: dict, feature: str | None, ignore_extra: bool) -> tuple:
    """An MQTT payload → ({feature: value}, time as sent or None): a JSON object, or a bare number
    for a per-feature topic (optionally a JSON object {"value": v, "time": t}). Bounded: size,
    nesting depth, finite numbers (runtime/readings.py)."""
    obj = loads(raw)
    if feature is not None:
        if feature not in fields.values():
            raise Malformed(f"topic names feature {feature[:40]!r}; expected one of {', '.join(sorted(fields.values()))}")
        if isinstance(obj, dict) and "value" in obj:
            return {feature: json_number("value", obj["value"])}, _time_of(obj)
        return {feature: json_number(feature, obj)}, None
    return decode_object(obj, fields, ignore_extra)
