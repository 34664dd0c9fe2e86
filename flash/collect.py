"""`python -m flash collect DEVICE --out DIR`: the rows a device captured since the last collect,
into a Parquet dataset on the workstation (`device=<name>/node=<node>/part-*.parquet`, hive-style).

- Reached like `flash deploy` reaches it (flash/device.py: ssh, an ssh alias, or a folder). On the
  device, READER (stdlib python3, sqlite3) reads the rows after the mark inside one read
  transaction of `<root>/state/capture.db` while serve goes on writing it (WAL), and streams them:
  a JSON header line, the rows, a JSON trailer with their count and the SHA-256 of the rows' bytes.
- Verified: a batch whose count or checksum does not match (a cut connection) is refused whole.
- Incremental and resumable: the high-water mark (the device's `seq`, with the database's
  capture_id: a new capture.db starts again from 0) is kept in DIR/_collect/<device>.json. A batch
  is written as hidden temporary files, the mark records them as pending, they are renamed, then
  the mark moves: a run cut at any point is finished or undone by the next one, so nothing is lost
  and nothing is there twice, and no reader ever sees a half-written file.
- Columns: seq, time (UTC: the period's, centred on the bundle's phase where it has one), period,
  period_s, bundle_id, target, one per feature (float32, null
  where nothing arrived), forecast_1..K and, with intervals, lo80_1.. hi95_K (runtime/capture.py
  names them); `device` and `node` come from the folders (pandas, DuckDB, Ray Data, Dask read them).
"""
from __future__ import annotations

import glob
import json
import os
import shlex
import subprocess
import threading
import time
import urllib.parse

import numpy as np

from runtime.capture import FILE_NAME, SCHEMA_VERSION, bound_column, forecast_column
from runtime.files import atomic_write

from .batch import CollectError, head_units, parse_batch
from .device import CONNECT_TIMEOUT_S, Device, DeviceError

BATCH_ROWS = 200_000
MAX_BATCH_BYTES = 1 << 30     # one batch's bytes: 200,000 rows of 1,000 values are 0.8 GB; a device sending more lies
DEFAULT_CAPTURE = os.path.join("state", FILE_NAME)

# Runs on the device with its python3 (stdlib only): argv path, after, limit. Mirrors runtime/capture.py's schema.
READER = r'''
import hashlib, json, os, sqlite3, struct, sys
path, after, limit, want = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
if not os.path.isfile(path):
    sys.stderr.write("no capture database at %s (serve --capture writes it)\n" % path); sys.exit(3)
try:
    db = sqlite3.connect("file:%s?mode=ro" % os.path.abspath(path), uri=True, isolation_level=None)
    db.execute("BEGIN"); db.execute("SELECT count(*) FROM meta").fetchone()
except sqlite3.Error:
    db = sqlite3.connect(path, isolation_level=None); db.execute("BEGIN")
version = db.execute("PRAGMA user_version").fetchone()[0]
if version != want:
    sys.stderr.write("%s: capture schema version %s; this collect reads version %d\n" % (path, version, want)); sys.exit(3)
out = sys.stdout.buffer
head = {"version": version,
        "capture_id": db.execute("SELECT value FROM meta WHERE key = 'capture_id'").fetchone()[0],
        "models": [list(r) for r in db.execute("SELECT id, bundle_id, period_s, features, target, target_col, horizon, levels, %s FROM models"
                   % ("phase_s" if any(c[1] == "phase_s" for c in db.execute("PRAGMA table_info(models)")) else "NULL"))],
        "nodes": [list(r) for r in db.execute("SELECT id, name FROM nodes")],
        "units": dict(db.execute("SELECT substr(key, 7), value FROM meta WHERE key LIKE 'units %' LIMIT 1000").fetchall()),
        "first": db.execute("SELECT min(seq) FROM readings WHERE seq > ?", (after,)).fetchone()[0]}
out.write(json.dumps(head).encode() + b"\n")
row, h, n = struct.Struct("<qqqqi"), hashlib.sha256(), 0
for seq, period, node, model, v in db.execute(
        "SELECT seq, period, node, model, v FROM readings WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)):
    rec = row.pack(seq, period, node, model, len(v)) + v
    h.update(rec); out.write(rec); n += 1
out.write(b"\n" + json.dumps({"rows": n, "sha256": h.hexdigest()}).encode() + b"\n")
'''


def reader_argv(dev: Device, capture_path: str, after: int, limit: int) -> list:
    """The command that runs READER against the device's capture database (ssh, or here for a folder)."""
    if dev.local:
        return [dev.python, "-c", READER, os.path.join(dev.root, capture_path), str(after), str(limit), str(SCHEMA_VERSION)]
    cmd = [os.environ.get("FLASH_SSH", "ssh"), "-o", "BatchMode=yes", *dev.ssh_args, "-o",   # as Device.command
           f"ConnectTimeout={CONNECT_TIMEOUT_S}", "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"]
    if os.environ.get("FLASH_SSH_CONFIG"):
        cmd += ["-F", os.environ["FLASH_SSH_CONFIG"]]
    if dev.port:
        cmd += ["-p", str(dev.port)]
    words = [dev.root, dev.python, READER, capture_path, str(after), str(limit), str(SCHEMA_VERSION)]
    remote = "sh -c 'cd \"$1\" && exec \"$2\" -c \"$3\" \"$4\" \"$5\" \"$6\" \"$7\"' sh " + " ".join(map(shlex.quote, words))
    return cmd + ["--", dev.host, remote]


def fetch(dev: Device, capture_path: str, after: int, limit: int = BATCH_ROWS, timeout: float = 600) -> dict:
    """One verified batch: {"head": {...}, "rows": [(seq, period, node, model, v)]} (runtime/capture.split reads v)."""
    out, err, rc = read_bounded(reader_argv(dev, capture_path, after, limit), dev.spec, timeout, MAX_BATCH_BYTES)
    why = (err.decode(errors="replace").strip().splitlines() or [f"exit status {rc}"])[-1]
    if rc == 255 and not dev.local:
        raise CollectError(f"cannot reach device {dev.spec}: {why}")
    if rc != 0:
        raise CollectError(f"device {dev.spec}: {why}")
    return parse_batch(out, dev.spec, after, limit)


def read_bounded(argv: list, where: str, timeout: float, cap: int) -> tuple:
    """(stdout, the last 64 KiB of stderr, exit status) of `argv`; CollectError when it prints more than
    `cap` bytes (a device that sends without end would exhaust this machine's memory) or overruns `timeout`."""
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err, expired = bytearray(), threading.Event()

    def drain():
        for chunk in iter(lambda: p.stderr.read(65536), b""):
            err.extend(chunk)
            del err[:-65536]
    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()
    timer = threading.Timer(timeout, lambda: (expired.set(), p.kill()))
    timer.start()
    try:
        out = p.stdout.read(cap + 1)
        if len(out) > cap:
            p.kill()
            raise CollectError(f"device {where}: sent more than {cap} bytes for one batch: nothing written")
        p.wait()
        drainer.join(5)
    finally:
        timer.cancel()
        p.stdout.close()
    if expired.is_set():
        raise CollectError(f"device {where}: reading capture.db did not finish within {timeout:.0f} s")
    return out, bytes(err), p.returncode


# -- the dataset ------------------------------------------------------------------------------------
def _segment(value: str) -> str:
    """A partition folder's value, percent-encoded as pyarrow's hive partitioning decodes it."""
    return urllib.parse.quote(value, safe="")


def _mark_path(out: str, device: str) -> str:
    return os.path.join(out, "_collect", _segment(device) + ".json")


def _tables(batch: dict) -> dict:
    """{node name: pyarrow Table} for a batch's rows."""
    import pyarrow as pa
    head = batch["head"]
    models = {m[0]: {"bundle_id": m[1], "period_s": m[2], "features": json.loads(m[3]), "target": m[4],
                     "horizon": m[6], "levels": json.loads(m[7]), "phase_s": m[8]} for m in head["models"]}
    names = dict((i, n) for i, n in head["nodes"])
    features = list(dict.fromkeys(f for m in models.values() for f in m["features"]))
    units, by_bundle = {}, head_units(head)
    for m in models.values():                        # a column's unit: that of the first model that has one
        for name, unit in by_bundle.get(m["bundle_id"], {}).items():
            units.setdefault(name, unit)
    K = max(m["horizon"] for m in models.values())
    levels = sorted({lv for m in models.values() for lv in m["levels"]})
    by_node = {}
    for r in batch["rows"]:
        by_node.setdefault(r[2], []).append(r)
    return {names[n]: _table(pa, rows, models, features, K, levels, units) for n, rows in by_node.items()}


def _table(pa, rows: list, models: dict, features: list, K: int, levels: list, units: dict):
    n = len(rows)
    x = np.full((n, len(features)), np.nan, np.float32)
    y = np.full((n, K), np.nan, np.float32)
    b = np.full((n, len(levels), 2, K), np.nan, np.float32)
    model_of = np.array([r[3] for r in rows])
    for mid in np.unique(model_of):                      # one model's rows at once: blobs of one size
        m, at = models[int(mid)], np.flatnonzero(model_of == mid)
        cols, h, nf = [features.index(f) for f in m["features"]], m["horizon"], len(m["features"])
        v = np.frombuffer(b"".join(rows[i][4] for i in at), "<f4").reshape(len(at), -1)     # x | y | bounds
        x[np.ix_(at, cols)], y[at, :h] = v[:, :nf], v[:, nf:nf + h]
        if v.shape[1] > nf + h:
            got = v[:, nf + h:].reshape(len(at), len(m["levels"]), 2, h)
            for j, lv in enumerate(m["levels"]):
                b[at, levels.index(lv), :, :h] = got[:, j]
    period = np.array([r[1] for r in rows], np.int64)
    period_s = np.array([models[r[3]]["period_s"] for r in rows])
    phase_s = np.array([models[r[3]]["phase_s"] or 0.0 for r in rows])       # clock.period_time: the readings' time
    cols = {"seq": pa.array([r[0] for r in rows], pa.int64()),
            "time": pa.array(np.round((phase_s + period * period_s) * 1e3).astype(np.int64), pa.timestamp("ms", tz="UTC")),
            "period": pa.array(period), "period_s": pa.array(period_s),
            "bundle_id": pa.array([models[r[3]]["bundle_id"] for r in rows]),
            "target": pa.array([models[r[3]]["target"] for r in rows])}
    for j, f in enumerate(features):
        cols[f] = pa.array(x[:, j], mask=np.isnan(x[:, j]))
    for k in range(K):
        cols[forecast_column(k + 1)] = pa.array(y[:, k], mask=np.isnan(y[:, k]))
    for j, lv in enumerate(levels):
        for s, side in enumerate(("lo", "hi")):
            for k in range(K):
                v = b[:, j, s, k]
                cols[bound_column(lv, side, k + 1)] = pa.array(v, mask=np.isnan(v))
    # each reading column's unit in its field's metadata: training on the dataset keeps it (train/table.py)
    return pa.table(cols, schema=pa.schema([pa.field(c, a.type, metadata={"unit": units[c]} if c in units else None)
                                            for c, a in cols.items()]))


def _write_parquet(table, path: str) -> None:
    import pyarrow.parquet as pq
    pq.write_table(table, path, compression="zstd")      # made durable for the whole batch at once (commit)


def _save_mark(out: str, device: str, mark: dict) -> None:
    path = _mark_path(out, device)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_write(path, "w") as f:
        json.dump(mark, f)


def load_mark(out: str, device: str) -> dict:
    """The device's mark after finishing (every file there) or undoing (not all) a batch a cut left pending."""
    path = _mark_path(out, device)
    mark = json.load(open(path)) if os.path.isfile(path) else {"capture_id": None, "seq": 0, "pending": None}
    pending = mark.get("pending")
    if pending:
        pairs = [(os.path.join(out, t), os.path.join(out, f)) for t, f in pending["files"]]
        if all(os.path.exists(t) or os.path.exists(f) for t, f in pairs):
            for t, f in pairs:
                if os.path.exists(t):
                    os.replace(t, f)
            mark.update(capture_id=pending["capture_id"], seq=pending["seq"])
        else:
            for t, f in pairs:
                for p in (t, f):
                    if os.path.exists(p):
                        os.remove(p)
        mark["pending"] = None
        _save_mark(out, device, mark)
    for stray in glob.glob(os.path.join(out, f"device={_segment(device)}", "node=*", ".part-*.tmp")):
        os.remove(stray)                    # written before a cut, never recorded: the batch comes again
    return mark


def commit(out: str, device: str, batch: dict, mark: dict) -> dict:
    """Write one verified batch into the dataset (temp files, pending mark, renames, mark); returns the new mark."""
    rows, cid = batch["rows"], batch["head"]["capture_id"]
    first, last = rows[0][0], rows[-1][0]
    files = []
    for node, table in _tables(batch).items():
        folder = os.path.join(f"device={_segment(device)}", f"node={_segment(node)}")
        os.makedirs(os.path.join(out, folder), exist_ok=True)
        name = f"part-{cid}-{first:012d}-{last:012d}.parquet"
        tmp, final = os.path.join(folder, f".{name}.tmp"), os.path.join(folder, name)
        _write_parquet(table, os.path.join(out, tmp))
        files.append((tmp, final))
    os.sync()                             # every file of the batch on disk before the mark names them (one sync, not one per file)
    _save_mark(out, device, {**mark, "pending": {"capture_id": cid, "seq": last, "files": files}})
    for tmp, final in files:
        os.replace(os.path.join(out, tmp), os.path.join(out, final))
    new = {"capture_id": cid, "seq": last, "pending": None}
    _save_mark(out, device, new)
    return new


def collect(dev: Device, out: str, device: str | None = None, capture_path: str = DEFAULT_CAPTURE,
            batch_rows: int = BATCH_ROWS) -> dict:
    """Every row `dev` captured after this dataset's mark for it; returns the summary `table` prints."""
    device = device or device_name(dev)
    mark = load_mark(out, device)
    summary = {"device": device, "rows": 0, "lost": 0, "first": None, "last": None, "nodes": set(),
               "bundles": set(), "seconds": 0.0}
    t0 = time.perf_counter()
    while True:
        batch = fetch(dev, capture_path, mark["seq"] if mark["capture_id"] else 0, batch_rows)
        head = batch["head"]
        if mark["capture_id"] not in (None, head["capture_id"]):      # a new capture.db: its rows from the start
            mark = {"capture_id": head["capture_id"], "seq": 0, "pending": None}
            continue
        if head["first"] is not None:
            summary["lost"] += head["first"] - mark["seq"] - 1           # deleted by retention before a collect
        if not batch["rows"]:
            break
        mark = commit(out, device, batch, mark)
        _tally(summary, batch)
        if len(batch["rows"]) < batch_rows:
            break
    summary["seconds"] = time.perf_counter() - t0
    return summary


def _tally(summary: dict, batch: dict) -> None:
    head = batch["head"]
    models = {m[0]: m for m in head["models"]}
    names = dict((i, n) for i, n in head["nodes"])
    rows = batch["rows"]
    summary["rows"] += len(rows)
    summary["nodes"] |= {names[r[2]] for r in rows}
    summary["bundles"] |= {models[r[3]][1] for r in rows}
    times = [r[1] * models[r[3]][2] for r in (rows[0], rows[-1])]
    summary["first"] = times[0] if summary["first"] is None else min(summary["first"], times[0])
    summary["last"] = times[1] if summary["last"] is None else max(summary["last"], times[1])


def device_name(dev: Device) -> str:
    """The dataset's `device` value: the host of an ssh device (no user), a folder's base name."""
    if dev.local:
        return os.path.basename(os.path.normpath(dev.root)) or "device"
    return dev.host.rsplit("@", 1)[-1]


def table(summaries: list) -> str:
    """One row per device: rows collected, time span, nodes, bundles, rows/s."""
    def when(t):
        return time.strftime("%Y-%m-%d %H:%M", time.gmtime(t)) if t is not None else "-"
    lines = ["| device | rows | from (UTC) | to (UTC) | nodes | bundles | rows/s |", "|---|---|---|---|---|---|---|"]
    for s in summaries:
        rate = s["rows"] / s["seconds"] if s["seconds"] else 0.0
        lost = f" ({s['lost']} expired before collect)" if s["lost"] else ""
        lines.append(f"| {_cell(s['device'])} | {s['rows']}{lost} | {when(s['first'])} | {when(s['last'])} | "
                     f"{len(s['nodes'])} | {_cell(', '.join(sorted(s['bundles'])) or '-')} | {rate:,.0f} |")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")[:200]


def main_collect(dev: Device, out: str, name: str | None, capture_path: str | None, batch_rows: int = BATCH_ROWS) -> int:
    """`flash collect`: collect one device and print its table row."""
    if batch_rows < 1:
        raise CollectError(f"--batch-rows {batch_rows}: expected >= 1")
    try:
        s = collect(dev, out, name, capture_path or DEFAULT_CAPTURE, batch_rows)
    except DeviceError as e:
        raise CollectError(str(e)) from None
    print(table([s]))
    return 0
