"""Where forecasts go: MQTT (JSON), an append-only CSV with size-based rotation, stdout (JSON lines).
Each sink's `write(node, json_text, csv_row)`.

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

from ..readings import open_append, text_cell, value_cell
from .payload import iso


def _num(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None        # JSON has no NaN: a reset stream forecasts null


def _js(v) -> str:
    return "%.9g" % v if math.isfinite(v) else "null"     # 9 digits: a float32 exactly; JSON has no NaN


class ForecastFormat:
    """The JSON of one stream's forecast, from a template built once per tick (the times, the
    bundle and the target are the same for every stream): about 3 µs a stream."""

    def __init__(self, manifest: dict, period_s: float):
        t = manifest["targets"][0]
        self.target, self.unit, self.bundle_id = t["name"], t.get("unit", ""), manifest["bundle_id"]
        self.horizon, self.period_s = manifest["model"]["horizon"], period_s
        self._units = {sid: u for sid, s in (manifest.get("series") or {}).items()
                       if (u := (s.get("units") or {}).get(self.target))}
        self._json = {sid: json.dumps(u) for sid, u in self._units.items()}     # (encoded once, not per tick)
        self._pooled_json = json.dumps(self.unit)

    def unit_of(self, series) -> str:
        """The unit of a stream of `series` (None: of no known series): its own where the bundle's
        series write different units (`series.<id>.units`), else the target's."""
        return self._units.get(series, self.unit)

    def times(self, start_s: float) -> tuple:
        """(the period's time, each step's time) as ISO 8601."""
        return iso(start_s, self.period_s), [iso(start_s + (k + 1) * self.period_s, self.period_s)
                                             for k in range(self.horizon)]

    def template(self, times: tuple, levels) -> str:
        """A %-template for one tick; its slots: the node and its unit (JSON), then per step the value
        and lower/upper per level."""
        tags = [f"{100 * lv:g}" for lv in levels]
        bounds = "".join(f',"lower_{t}":%s,"upper_{t}":%s' for t in tags)
        steps = ",".join('{"time":"' + when + '","value":%s' + bounds + "}" for when in times[1])
        def literal(v) -> str:                # user text (a unit of "%RH") is never a format directive
            return json.dumps(v).replace("%", "%%")
        return ('{"node":%s,"time":"' + times[0] + '","bundle_id":' + literal(self.bundle_id) + ',"target":'
                + literal(self.target) + ',"unit":%s,"forecast":[' + steps + "]}")

    def render(self, template: str, node: str, y, bounds: list, series=None) -> str:
        """One stream's JSON: y [K] and bounds [(lower [K], upper [K]) per level], in the unit of its
        `series` (unit_of)."""
        cells = [json.dumps(node), self._json.get(series, self._pooled_json)]
        for k in range(self.horizon):
            cells.append(_js(y[k]))
            for lo, hi in bounds:
                cells += (_js(lo[k]), _js(hi[k]))
        return template % tuple(cells)


class MqttSink:
    def __init__(self, link, topic: str, qos: int = 1, retain: bool = False):
        if "{node}" not in topic:
            raise ValueError(f"publish topic {topic!r} must contain {{node}} (one topic per stream)")
        self.link, self.topic, self.qos, self.retain = link, topic, qos, retain

    def write(self, node: str, text: str, row: list) -> None:
        self.link.publish(self.topic.format(node=node), text, self.qos, self.retain)

    def close(self) -> None:
        pass


class StdoutSink:
    def write(self, node: str, text: str, row: list) -> None:
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
        try:
            self.f, _ = open_append(self.path, self.header)
        except ValueError as e:
            raise ValueError(f"--csv {e}") from None
        self.w = csv.writer(self.f)

    def write(self, node: str, text: str, row: list) -> None:
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


def csv_row(node: str, times: tuple, bundle_id: str, y, bounds: list) -> list:
    """node (escaped against spreadsheet formulas), time, bundle_id, the values, then per level
    the lower bounds and the upper bounds."""
    row = [text_cell(node), times[0], bundle_id] + [value_cell(v) for v in y]
    for lo, hi in bounds:
        row += [value_cell(v) for v in lo] + [value_cell(v) for v in hi]
    return row
