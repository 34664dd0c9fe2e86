"""Where forecasts go: MQTT (JSON), an append-only CSV with size-based rotation, stdout (JSON lines).

One forecast message per stream per tick, the same everywhere:

    {"node": "kitchen", "time": "2026-01-31T12:00:00Z", "bundle_id": "...", "target": "T1",
     "unit": "degC", "forecast": [{"time": "2026-01-31T12:10:00Z", "value": 21.3,
                                   "lower_80": 20.9, "upper_80": 21.8}, ...]}

`time` is the reading's period (its start); each step's `time` is when that step applies.
"""
from __future__ import annotations

import csv
import json
import math
import os
import sys

from .payload import iso


def _num(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None        # JSON has no NaN: a reset stream forecasts null


class ForecastFormat:
    """Builds the message of one stream from a tick's forecasts [B, K] and bounds."""

    def __init__(self, manifest: dict, period_s: float):
        t = manifest["targets"][0]
        self.target, self.unit, self.bundle_id = t["name"], t.get("unit", ""), manifest["bundle_id"]
        self.horizon, self.period_s = manifest["model"]["horizon"], period_s

    def message(self, node: str, start_s: float, y, bounds: dict) -> dict:
        steps = []
        for k in range(self.horizon):
            step = {"time": iso(start_s + (k + 1) * self.period_s), "value": _num(y[k])}
            for lv, (lo, hi) in bounds.items():
                tag = f"{100 * lv:g}"
                step[f"lower_{tag}"], step[f"upper_{tag}"] = _num(lo[k]), _num(hi[k])
            steps.append(step)
        return {"node": node, "time": iso(start_s), "bundle_id": self.bundle_id, "target": self.target,
                "unit": self.unit, "forecast": steps}


class MqttSink:
    def __init__(self, link, topic: str, qos: int = 1, retain: bool = False):
        if "{node}" not in topic:
            raise ValueError(f"publish topic {topic!r} must contain {{node}} (one topic per stream)")
        self.link, self.topic, self.qos, self.retain = link, topic, qos, retain

    def write(self, msg: dict, text: str) -> None:
        self.link.publish(self.topic.format(node=msg["node"]), text, self.qos, self.retain)

    def close(self) -> None:
        pass


class StdoutSink:
    def write(self, msg: dict, text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def close(self) -> None:
        pass


class CsvSink:
    """node, time, bundle_id, target+1..K (+ _lo/_hi per level); appended, never truncated.

    Past `rotate_bytes` the file is renamed to <path>.1 (.1 → .2 …, `keep` files kept) and a new
    one started with the header. An existing file with another header is refused, not mixed.
    """

    def __init__(self, path: str, columns: list, rotate_bytes: int, keep: int):
        self.path, self.header, self.rotate_bytes, self.keep = path, ["node", "time", "bundle_id"] + columns, rotate_bytes, keep
        self._open()

    def _open(self) -> None:
        if os.path.exists(self.path) and os.path.getsize(self.path) > 0:
            with open(self.path, newline="", encoding="utf-8") as f:
                first = next(csv.reader(f), [])
            if first != self.header:
                raise ValueError(f"--csv {self.path} exists with another header ({','.join(first)[:100]}); expected "
                                 f"{','.join(self.header)[:100]}: refusing to mix two outputs in one file (move it aside)")
            self.f = open(self.path, "a", newline="", encoding="utf-8")
        else:
            self.f = open(self.path, "a", newline="", encoding="utf-8")
            csv.writer(self.f).writerow(self.header)
        self.w = csv.writer(self.f)

    def write(self, msg: dict, text: str) -> None:
        steps = msg["forecast"]
        row = [msg["node"], msg["time"], msg["bundle_id"]] + [_cell(s["value"]) for s in steps]
        for key in [k for k in steps[0] if k.startswith("lower_")]:
            row += [_cell(s[key]) for s in steps] + [_cell(s["upper_" + key[6:]]) for s in steps]
        self.w.writerow(row)

    def flush(self) -> None:
        """Once per tick: flush, and rotate when the file has grown past rotate_bytes."""
        self.f.flush()
        if self.f.tell() >= self.rotate_bytes:
            self.f.close()
            for i in range(self.keep - 1, 0, -1):
                if os.path.exists(f"{self.path}.{i}"):
                    os.replace(f"{self.path}.{i}", f"{self.path}.{i + 1}")
            os.replace(self.path, f"{self.path}.1")
            self._open()

    def close(self) -> None:
        self.f.close()


def _cell(v) -> str:
    return "" if v is None else f"{v:.6g}"


def dumps(msg: dict) -> str:
    return json.dumps(msg, separators=(",", ":"))
