"""One batch of a device's capture, as `flash collect` receives it, parsed and checked.

The device's reader (flash/collect.READER) prints a JSON head (capture id, models, nodes), the rows
packed as ROW + value blob, and a trailer with their count and SHA-256. The device computes that
checksum, so it proves only that nothing was cut on the way: a broken or hostile device can send a
consistent lie. So every field is checked here before anything is written: the capture id (it names
files), each model (period, horizon, levels, feature names that cannot overwrite the dataset's own
columns), each node (a node id, once), and each row (its length inside the body, its seq rising past
the mark, within the rows asked for, its node and model in the head, its blob the model's size, its
time plausible). Anything else is one CollectError line, and nothing of the batch is written.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import struct

from runtime.capture import FIXED_COLUMNS, OUTPUT_COLUMN, bound_column, forecast_column
from runtime.readings import unit_ok
from runtime.service.slots import NotANode, check_node_id
from runtime.times import EARLIEST, LATEST

ROW = struct.Struct("<qqqqi")           # seq, period, node, model, len(v)
PARTITIONS = ("device", "node")
MAX_HORIZON = 10_000
MAX_FEATURES = 10_000
_CAPTURE_ID = re.compile(r"[0-9a-f]{16}")


class CollectError(RuntimeError):
    """The device's rows could not be collected (unreachable, no capture, a batch that did not verify)."""


def parse_batch(data: bytes, where: str, after: int, limit: int) -> dict:
    """READER's output back as {"head", "rows": [(seq, period, node, model, v)]}, refused whole unless
    the trailer's count and checksum match and every field is what a capture holds."""
    head_end = data.find(b"\n")
    trailer_start = data.rfind(b"\n", 0, len(data) - 1)
    try:
        head, trailer = json.loads(data[:head_end]), json.loads(data[trailer_start + 1:])
        count, digest = int(trailer["rows"]), str(trailer["sha256"])
    except (ValueError, TypeError, KeyError):
        raise CollectError(f"device {where}: the batch was cut off (no trailer): nothing written, run collect "
                           "again") from None
    body = memoryview(data)[head_end + 1:trailer_start]
    if hashlib.sha256(body).hexdigest() != digest:
        raise CollectError(f"device {where}: the batch's checksum does not match: nothing written, run collect again")
    try:
        models, nodes = check_head(head)
        rows = _rows(body, limit)
        if len(rows) != count:
            raise ValueError(f"{len(rows)} rows arrived, the device sent {count}")
        _check_rows(rows, models, nodes, after)
    except ValueError as e:
        raise CollectError(f"device {where}: {e}: nothing written") from None
    return {"head": head, "rows": rows}


def _rows(body: memoryview, limit: int) -> list:
    rows, i = [], 0
    while i < len(body):
        if len(body) - i < ROW.size:
            raise ValueError(f"row {len(rows) + 1}: {len(body) - i} bytes left, a row needs {ROW.size}")
        seq, period, node, model, nv = ROW.unpack_from(body, i)
        i += ROW.size
        if not 0 <= nv <= len(body) - i:
            raise ValueError(f"row {len(rows) + 1}: a value length of {nv} bytes, with {len(body) - i} left")
        rows.append((seq, period, node, model, bytes(body[i:i + nv])))
        i += nv
        if len(rows) > limit:
            raise ValueError(f"{len(rows)} rows, more than the {limit} asked for")
    return rows


def _check_rows(rows: list, models: dict, nodes: dict, after: int) -> None:
    last = after
    for seq, period, node, model, v in rows:
        if seq <= last:
            raise ValueError(f"seq {seq} after {last}: a capture's rows come in rising seq past the mark")
        last = seq
        if node not in nodes:
            raise ValueError(f"seq {seq}: node {node} is not in the head's nodes")
        m = models.get(model)
        if m is None:
            raise ValueError(f"seq {seq}: model {model} is not in the head's models")
        if len(v) not in m["sizes"]:
            raise ValueError(f"seq {seq}: a value of {len(v)} bytes; model {model} writes {' or '.join(map(str, m['sizes']))}")
        if not EARLIEST <= period * m["period_s"] <= LATEST:
            raise ValueError(f"seq {seq}: period {period} of {m['period_s']:g} s is no time between 1900 and 2200")


def check_head(head) -> tuple:
    """({model id: model}, {node id: name}) of a batch's head; ValueError naming what is wrong."""
    if not isinstance(head, dict):
        raise ValueError("the batch's head is no JSON object")
    cid = head.get("capture_id")
    if not isinstance(cid, str) or not _CAPTURE_ID.fullmatch(cid):
        raise ValueError(f"capture_id {str(cid)[:40]!r}: expected 16 hex digits")
    if not isinstance(head.get("models"), list) or not isinstance(head.get("nodes"), list):
        raise ValueError("the head lists no models or no nodes")
    first = head.get("first")
    if first is not None and (type(first) is not int or first < 1):
        raise ValueError(f"first {str(first)[:40]!r}: expected the first seq after the mark, a whole number >= 1")
    return dict(_model(m) for m in head["models"]), _nodes(head["nodes"])


def head_units(head: dict) -> dict:
    """{bundle id: {column: unit}} from a head's `units` (a capture of this runtime keeps them; an older
    one has none): what came from the device is kept only where it is a short, printable name."""
    out = {}
    units = head.get("units")
    for bid, text in (units.items() if isinstance(units, dict) else ()):
        try:
            got = json.loads(text) if isinstance(text, str) and len(text) <= 65536 else None
        except ValueError:
            continue
        if isinstance(got, dict):
            out[bid] = {k: v for k, v in got.items() if unit_ok(v) and len(k) <= 200}
    return out


def _nodes(items: list) -> dict:
    nodes = {}
    for item in items:
        if not (isinstance(item, list) and len(item) == 2 and type(item[0]) is int and isinstance(item[1], str)):
            raise ValueError(f"node {str(item)[:60]!r}: expected [id, name]")
        try:
            check_node_id(item[1])
        except NotANode as e:
            raise ValueError(str(e)) from None
        if item[1] in nodes.values() or item[0] in nodes:
            raise ValueError(f"node name {item[1][:40]!r} twice (or id {item[0]} twice) in the head")
        nodes[item[0]] = item[1]
    return nodes


def _model(item) -> tuple:
    """(id, {period_s, features, horizon, levels, sizes}) of one head model row, checked."""
    try:
        mid, bundle_id, period_s, features, target, _, horizon, levels, phase_s = item
        features, levels = json.loads(features), json.loads(levels)
    except (TypeError, ValueError):
        raise ValueError(f"model {str(item)[:60]!r}: expected [id, bundle_id, period_s, features, target, "
                         "target_col, horizon, levels, phase_s] with features and levels as JSON lists") from None
    if type(mid) is not int or not isinstance(bundle_id, str) or not isinstance(target, str):
        raise ValueError(f"model {str(mid)[:20]!r}: id, bundle_id or target of the wrong type")
    if not isinstance(period_s, (int, float)) or not (math.isfinite(period_s) and 0 < period_s <= 1e7):
        raise ValueError(f"model {mid}: period_s {period_s!r}: expected seconds between 0 and 1e7")
    if phase_s is not None and not (isinstance(phase_s, (int, float)) and 0 <= phase_s < period_s):
        raise ValueError(f"model {mid}: phase_s {repr(phase_s)[:20]}: expected null or seconds in [0, period_s)")
    if type(horizon) is not int or not 1 <= horizon <= MAX_HORIZON:
        raise ValueError(f"model {mid}: horizon {horizon!r}: expected 1 to {MAX_HORIZON}")
    if not (isinstance(levels, list) and all(isinstance(v, (int, float)) and 0 < v < 1 for v in levels)):
        raise ValueError(f"model {mid}: levels {str(levels)[:40]}: expected a list of coverage levels in (0, 1)")
    _check_features(mid, features, horizon, levels)
    nf, per_level = len(features), 2 * horizon * len(levels)
    sizes = {4 * (nf + horizon), 4 * (nf + horizon + per_level)}
    return mid, {"period_s": float(period_s), "features": features, "horizon": horizon, "levels": levels,
                 "sizes": sorted(sizes)}


def _check_features(mid, features, horizon: int, levels: list) -> None:
    """Feature names that are names, once, and none of the dataset's own columns."""
    if not (isinstance(features, list) and 0 < len(features) <= MAX_FEATURES
            and all(isinstance(f, str) and f for f in features)):
        raise ValueError(f"model {mid}: features {str(features)[:40]}: expected a list of names")
    taken = set(FIXED_COLUMNS) | set(PARTITIONS) | {forecast_column(k + 1) for k in range(horizon)}
    taken |= {bound_column(lv, side, k + 1) for lv in levels for side in ("lo", "hi") for k in range(horizon)}
    clash = sorted(set(features) & taken) or sorted(f for f in features if OUTPUT_COLUMN.fullmatch(f))
    if clash or len(set(features)) != len(features):
        raise ValueError(f"model {mid}: feature {(clash or features)[0][:40]!r} is a dataset column's name "
                         "(or given twice)")
