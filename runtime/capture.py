"""What the sensors said, kept on the device: one SQLite row per node and period (`capture.db`).

`serve --capture` (and `stream --capture`) record, per node seen in a closed period: the
aggregated reading the model saw (raw units), the period, the node, the bundle, the forecast
made, and its bounds when intervals are on. Python's own sqlite3, nothing else:

    PRAGMA user_version = SCHEMA_VERSION, journal_mode = WAL, auto_vacuum = INCREMENTAL, page_size 4096
    meta(key, value)            capture_id: a random id of this database (a new file is a new id)
    models(id, bundle_id, period_s, features, target, target_col, horizon, levels, phase_s)   JSON lists
    nodes(id, name)
    readings(seq INTEGER PRIMARY KEY, period, node, model, v)

`seq` only grows (retention never deletes the newest row, so a new row's seq is past every earlier
one), which is what `flash collect` keeps as its high-water mark. `period` is the period's index (clock.period_index):
it starts at period * period_s epoch seconds, or, for a bundle with a `sample_phase_s` (the model's
`phase_s`), is centred on phase_s + period * period_s, the time collect writes (clock.period_time).
A database of a runtime before phase_s was kept (a models table without it, the same schema version)
gains the column when this runtime writes to it; its older rows have none (NULL: periods that begin
on the grid). `v` is float32 little-endian: the reading x [features] (NaN
where nothing arrived: NULL in the collected dataset), the forecast y [horizon], and with
intervals the bounds [levels, 2, horizon] (lower, upper): one blob, because every column costs
a byte of record header and the demo's 26 features and 6 steps must fit 150 bytes (`split`).

One transaction per tick. Retention: rows more than `days` older than the newest row (not the
wall clock: a replay of old readings, or a device without a real-time clock, keeps them) and, past `mb`, the oldest rows go
first (freed pages are reused; the file shrinks only when it is over its cap). A full disk (or
any other failure to write) stops capture, never forecasting: said once, counted in
`capture_failures`, retried once a minute. A period at or before the last one captured (a
restart that replays acknowledged readings, a clock set back) is not captured again
(`capture_skipped`): what `flash collect` gets holds each node's period once.
"""
from __future__ import annotations

import json
import math
import os
import re
import secrets
import sqlite3
import sys
import time

import numpy as np

from .forecaster import target_index
from .service.clock import period_index

SCHEMA_VERSION = 1
FILE_NAME = "capture.db"
F32 = np.dtype("<f4")
RETRY_S = 60.0                 # after a failed write, the next try
# A tick is one commit, which writes every page it touched into the WAL whole: 4 KB pages (not 16 KB) and
# no AUTOINCREMENT (its sqlite_sequence page was a second page a commit) cut one node's tick from 33 KB
# written to 4.5 KB (tests/test_capture.py; python -m bench.capture_writes). A file made before keeps its own.
PAGE_SIZE = 4096
SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE models (id INTEGER PRIMARY KEY, bundle_id TEXT NOT NULL, period_s REAL NOT NULL, features TEXT NOT NULL,
                     target TEXT, target_col INTEGER, horizon INTEGER NOT NULL, levels TEXT NOT NULL, phase_s REAL);
CREATE TABLE nodes (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE readings (seq INTEGER PRIMARY KEY, period INTEGER NOT NULL, node INTEGER NOT NULL,
                       model INTEGER NOT NULL, v BLOB NOT NULL);
"""


MAX_AHEAD_S = 86400.0      # a period starting further ahead of the wall clock than this is not captured


class CaptureError(ValueError):
    """A capture database that cannot be used (another schema version, not SQLite); names the file."""


def connect(path: str, readonly: bool = False) -> sqlite3.Connection:
    """A connection to a capture database (created with the schema unless readonly);
    CaptureError for a file of another schema version or no SQLite database."""
    try:
        if readonly:
            db = sqlite3.connect(f"file:{os.path.abspath(path)}?mode=ro", uri=True, isolation_level=None)
        else:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version == 0 and not readonly and not db.execute("SELECT 1 FROM sqlite_master").fetchone():
            _create(db)
            version = SCHEMA_VERSION
    except sqlite3.OperationalError:          # a full or read-only disk, a file that cannot be opened: no verdict on it
        raise
    except sqlite3.DatabaseError as e:
        raise CaptureError(f"{path}: not a usable capture database ({e})") from None
    if version != SCHEMA_VERSION:
        raise CaptureError(f"{path}: capture schema version {version}; this runtime reads version {SCHEMA_VERSION}")
    return db


def _create(db: sqlite3.Connection) -> None:
    db.execute(f"PRAGMA page_size = {PAGE_SIZE}")
    db.execute("PRAGMA auto_vacuum = INCREMENTAL")          # before the first table: lets an over-cap file shrink
    db.execute("PRAGMA journal_mode = WAL")
    db.executescript("BEGIN;" + SCHEMA + f"""INSERT INTO meta VALUES ('capture_id', '{secrets.token_hex(8)}');
                     PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;""")


class Capture:
    """The service's capture: `record_tick` once per closed period, `close` at the end.

    Args:
        path: the database (created with its folder when missing).
        manifest: the bundle's; period_s: the service's period; levels: interval levels ([] off).
        days, mb: retention (None: no limit of that kind).
        warn(kind, text): where a once-said warning goes (default stderr).
        now(): the time periods are counted in (serve's service time; default the wall clock).
    """

    def __init__(self, path: str, manifest: dict, period_s: float, levels=(), days=None, mb=None, warn=None,
                 now=time.time):
        self.path, self.days, self.cap = path, days, None if mb is None else int(mb * 1e6)
        self.levels = [float(v) for v in levels]
        self.counts = {"captured_rows": 0, "capture_failures": 0, "capture_skipped": 0, "capture_deleted": 0}
        self._warn = warn or (lambda kind, text: print(f"warning: {text}", file=sys.stderr))
        self._said, self._retry_at, self._down = set(), 0.0, False
        self._last_seq = None                    # node id -> its newest row's seq (filled at the first deletion)
        self.now = now                           # the clock periods are in (serve: its service time)
        self._nodes, self._manifest = {}, manifest
        self.period_s = float(period_s)
        # the service's periods (clock.period_index): centred on the bundle's phase, where its period is the bundle's
        self.phase_s = manifest.get("sample_phase_s") if self.period_s == manifest.get("sample_period_s") else None
        self.db, self.last_period, self._file = None, None, None
        try:
            self._open()
        except (OSError, sqlite3.OperationalError) as e:       # a full or read-only disk: tried again at a tick
            self._failed(e, time.monotonic())

    def _open(self) -> None:
        """Open (or create) the file and its model row; CaptureError for a file that is no capture database."""
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        db = connect(self.path)
        try:
            db.execute("PRAGMA synchronous = NORMAL")        # WAL: a kill -9 loses no commit; power loss the last few
            db.execute("PRAGMA journal_mode = WAL")
            if self.cap:                        # the cap holds the WAL too: a tenth of it, at most 4 MB
                page = db.execute("PRAGMA page_size").fetchone()[0]
                wal_pages = max(2, min(256, self.cap // page // 10))
                db.execute(f"PRAGMA wal_autocheckpoint = {wal_pages}")
                db.execute(f"PRAGMA journal_size_limit = {wal_pages * page}")
                self.db_cap = self.cap - 2 * wal_pages * page
            self.db, self._nodes, self._last_seq = db, {}, None
            self.model = self._model_id(self._manifest)
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (UNITS_KEY + self._manifest["bundle_id"],
                                                                      json.dumps(units_of(self._manifest))))
            last = db.execute("SELECT period FROM readings ORDER BY seq DESC LIMIT 1").fetchone()
        except BaseException:
            db.close()
            self.db = None
            raise
        self.last_period, self._file = (last[0] if last else None), _identity(self.path)

    def _usable(self, now: float) -> bool:
        """The open file is still the one at `path`; else (removed or replaced under us, or never opened)
        open what is there now. False when that fails (counted, tried again later)."""
        if self.db is not None:
            if _identity(self.path) == self._file:
                return True
            self._warn("capture", f"capture: {self.path} was removed or replaced while open: a new one is "
                       "started (or the replacement used)")
            self.db.close()
            self.db = None
        try:
            self._open()
        except (OSError, sqlite3.Error, CaptureError) as e:    # (replaced by a file that is no capture database)
            self._failed(e, now)
            return False
        return True

    def _model_id(self, manifest: dict) -> int:
        if phase_column(self.db) == "NULL":                     # a file of a runtime before phase_s was kept
            self.db.execute("ALTER TABLE models ADD COLUMN phase_s REAL")
        row = (manifest["bundle_id"], self.period_s, json.dumps([f["name"] for f in manifest["features"]]),
               manifest["targets"][0]["name"], target_index(manifest), int(manifest["model"]["horizon"]),
               json.dumps(self.levels), self.phase_s)
        got = self.db.execute("SELECT id FROM models WHERE bundle_id=? AND period_s=? AND features=? AND target=? "
                              "AND target_col IS ? AND horizon=? AND levels=? AND phase_s IS ?", row).fetchone()
        if got:
            return got[0]
        return self.db.execute("INSERT INTO models (bundle_id, period_s, features, target, target_col, horizon, "
                               "levels, phase_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row).lastrowid

    def _node_id(self, name: str) -> int:
        nid = self._nodes.get(name)
        if nid is None:
            got = self.db.execute("SELECT id FROM nodes WHERE name = ?", (name,)).fetchone()
            nid = got[0] if got else self.db.execute("INSERT INTO nodes (name) VALUES (?)", (name,)).lastrowid
            if len(self._nodes) >= 100_000:        # bounded: node ids come and go over months
                self._nodes.clear()
            self._nodes[name] = nid
        return nid

    def record_tick(self, period: int, nodes: list, x: np.ndarray, y: np.ndarray, bounds: dict | None = None) -> int:
        """One closed period: nodes [n] with x [n, I] (raw, NaN = missing), y [n, K], bounds
        {level: (lo [n, K], hi [n, K])}. One transaction; returns the rows written (0 when skipped
        or failed: counted, and said once)."""
        if not nodes:
            return 0
        if self.last_period is not None and period <= self.last_period:
            self.counts["capture_skipped"] += len(nodes)
            self._once("skipped", f"capture: period {period} is at or before the last one captured "
                       f"({self.last_period}): not captured again (counted in capture_skipped)")
            return 0
        if period * self.period_s > self.now() + MAX_AHEAD_S:
            # A clock that jumped ahead: captured, that period would stop capture until its date comes,
            # and retention by age would count back from it and delete the whole history.
            self.counts["capture_skipped"] += len(nodes)
            self._once("ahead", f"capture: period {period} starts more than {MAX_AHEAD_S / 3600:g} h ahead "
                       "of this device's clock: not captured (counted in capture_skipped)")
            return 0
        now = time.monotonic()
        if now < self._retry_at:
            self.counts["capture_failures"] += 1
            return 0
        if not self._usable(now):
            return 0
        try:
            self._insert(period, nodes, x, y, bounds)
        except (sqlite3.Error, OSError) as e:
            self._failed(e, now)
            return 0
        if self._down:
            self._down = False
            self._warn("capture", f"capture resumed: {self.path}")
        self.last_period = period
        self.counts["captured_rows"] += len(nodes)
        self._retention(now)
        return len(nodes)

    def record_step(self, t, node: str, x, y, bounds: dict | None = None) -> int:
        """One `stream` line: reading x [I] and forecast y [K] (bounds {level: (lo [K], hi [K])}) in
        the period of its time t (epoch s; None: the period after the last one captured)."""
        if t is None:
            period = 0 if self.last_period is None else self.last_period + 1
        else:
            period = period_index(t, self.period_s, self.phase_s)     # as the service's clock (TickClock.period_of)
        one = {lv: (np.reshape(lo, (1, -1)), np.reshape(hi, (1, -1))) for lv, (lo, hi) in (bounds or {}).items()}
        return self.record_tick(period, [node], np.reshape(x, (1, -1)), np.reshape(y, (1, -1)), one)

    def _insert(self, period: int, nodes: list, x, y, bounds) -> None:
        n = len(nodes)
        parts = [np.asarray(x, F32).reshape(n, -1), np.asarray(y, F32).reshape(n, -1)]
        if bounds and self.levels:
            parts.append(np.stack([np.stack([bounds[lv][0], bounds[lv][1]], axis=1)
                                   for lv in self.levels], axis=1).reshape(n, -1))       # [n, L * 2 * K]
        vb = _rows(np.concatenate(parts, axis=1), n)
        m = self.model
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            ids = [self._node_id(name) for name in nodes]
            db.executemany("INSERT INTO readings (period, node, model, v) VALUES (?, ?, ?, ?)",
                           [(period, ids[i], m, vb[i]) for i in range(n)])
            if self._last_seq is not None:         # rows take consecutive seqs in one transaction
                top = db.execute("SELECT max(seq) FROM readings").fetchone()[0]
                self._last_seq.update((nid, top - n + 1 + i) for i, nid in enumerate(ids))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            self._nodes.clear()                    # ids inserted in the rolled-back transaction are gone
            self._last_seq = None                  # (known again from the table at the next deletion)
            raise

    def _failed(self, e: Exception, now: float) -> None:
        """Counted; said once an outage (a full disk, a read-only one), retried every RETRY_S."""
        self.counts["capture_failures"] += 1
        self._retry_at = now + RETRY_S
        if not self._down:
            self._down = True
            self._warn("capture", f"capture stopped: {self.path}: {getattr(e, 'strerror', None) or e}; forecasting "
                       f"goes on (counted in capture_failures, retried every {RETRY_S:.0f} s)")

    def _once(self, kind: str, text: str) -> None:
        if kind not in self._said:
            self._said.add(kind)
            self._warn("capture", text)

    # -- retention ------------------------------------------------------------------------------
    def _retention(self, now: float) -> None:
        try:
            if self.days is not None:             # reads only the rows it deletes, and one more
                newest = (self.last_period + 1) * self.period_s
                self._expire(newest - 86400.0 * self.days)
            if self.cap:
                self._fit()
        except sqlite3.Error as e:
            self._once("retention", f"capture retention on {self.path} failed: {e}")

    def _expire(self, cutoff: float) -> None:
        """Delete from the oldest row up to the first one newer than `cutoff` (rows are in time order)."""
        last = None
        for seq, period, period_s in self.db.execute(
                "SELECT r.seq, r.period, m.period_s FROM readings r JOIN models m ON m.id = r.model ORDER BY r.seq"):
            if (period + 1) * period_s >= cutoff:
                break
            last = seq
        if last is not None:
            self._delete_through(last)

    def _fit(self) -> None:
        """Past 90% of the database's part of the cap, the oldest rows go until 80% of it is used."""
        page = self.db.execute("PRAGMA page_size").fetchone()[0]
        pages = self.db.execute("PRAGMA page_count").fetchone()[0]
        used = (pages - self.db.execute("PRAGMA freelist_count").fetchone()[0]) * page
        if used > 0.9 * self.db_cap:
            rows = self.db.execute("SELECT count(*) FROM readings").fetchone()[0]
            drop = max(1, math.ceil(rows * (1 - 0.8 * self.db_cap / used)))
            got = self.db.execute("SELECT seq FROM readings ORDER BY seq LIMIT 1 OFFSET ?", (drop - 1,)).fetchone()
            if got:
                self._delete_through(got[0])
        if pages * page > self.db_cap:                   # the cap was lowered: give the free pages back
            self.db.execute("PRAGMA incremental_vacuum")

    def _delete_through(self, seq: int) -> None:
        """Delete the rows up to `seq`, never the newest: the next row's seq is one past it (collect's
        mark). The node names no row uses any more go too, or ids that come and go would fill the
        file: known from each node's newest seq, kept as rows are written (one scan of the table a
        process, at its first deletion, for what an earlier process wrote)."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            if self._last_seq is None:
                db.execute("DELETE FROM nodes WHERE id NOT IN (SELECT DISTINCT node FROM readings)")
                self._last_seq = dict(db.execute("SELECT node, max(seq) FROM readings GROUP BY node"))
            newest = db.execute("SELECT max(seq) FROM readings").fetchone()[0] or 0
            bound = min(seq, newest - 1)
            n = db.execute("DELETE FROM readings WHERE seq <= ?", (bound,)).rowcount
            gone = [nid for nid, last in self._last_seq.items() if last <= bound]
            db.executemany("DELETE FROM nodes WHERE id = ?", [(nid,) for nid in gone])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            self._last_seq = None
            raise
        finally:
            self._nodes.clear()              # (names deleted, or a rolled-back transaction)
        for nid in gone:
            del self._last_seq[nid]
        self.counts["capture_deleted"] += n

    def close(self) -> None:
        if self.db is None:
            return
        try:
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass
        self.db.close()


def _identity(path: str):
    """(device, inode) of the file at `path`, None when there is none: what tells a file replaced under us."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _rows(a: np.ndarray, n: int) -> list:
    """n little-endian float32 byte strings, one per row of a [n, ...]."""
    b = np.ascontiguousarray(a, F32).reshape(n, -1)
    raw, size = b.tobytes(), b.shape[1] * 4
    return [raw[i * size:(i + 1) * size] for i in range(n)]


def split(blob: bytes, model: dict):
    """A row's `v` as (x [features], y [horizon], bounds [levels, 2, horizon] or None), float32."""
    a = np.frombuffer(blob, F32)
    i, k = len(model["features"]), model["horizon"]
    b = a[i + k:]
    return a[:i], a[i:i + k], (b.reshape(-1, 2, k) if len(b) else None)


# -- reading a capture (score here, `flash collect` on the workstation) ---------------------------
UNITS_KEY = "units "      # meta key (+ a bundle id): its features' units, {name: unit}, for `flash collect`


def units_of(manifest: dict) -> dict:
    """{column: unit} of a bundle's features and target, where it has one."""
    return {f["name"]: f["unit"] for f in manifest["features"] + manifest["targets"] if f.get("unit")}


def phase_column(db: sqlite3.Connection) -> str:
    """What to select for a model's phase: `phase_s`, or NULL in a file of a runtime before it was kept."""
    return "phase_s" if any(r[1] == "phase_s" for r in db.execute("PRAGMA table_info(models)")) else "NULL"


def models(db: sqlite3.Connection) -> dict:
    """{model id: {bundle_id, period_s, features, target, target_col, horizon, levels, phase_s}}."""
    out = {}
    for mid, bid, period_s, feats, target, col, horizon, levels, phase in db.execute(
            "SELECT id, bundle_id, period_s, features, target, target_col, horizon, levels, "
            f"{phase_column(db)} FROM models"):
        out[mid] = {"bundle_id": bid, "period_s": period_s, "features": json.loads(feats), "target": target,
                    "target_col": col, "horizon": horizon, "levels": json.loads(levels), "phase_s": phase}
    return out


def node_names(db: sqlite3.Connection) -> dict:
    return dict(db.execute("SELECT id, name FROM nodes"))


def capture_id(db: sqlite3.Connection) -> str:
    return db.execute("SELECT value FROM meta WHERE key = 'capture_id'").fetchone()[0]


def readings(db: sqlite3.Connection, after: int = 0, limit: int = -1):
    """Rows (seq, period, node id, model id, v) with seq > after, in seq order (`split` reads v)."""
    return db.execute("SELECT seq, period, node, model, v FROM readings WHERE seq > ? ORDER BY seq LIMIT ?",
                      (after, limit))


# -- the collected dataset's columns (written by flash/collect.py, read by runtime/score.py) -------
FIXED_COLUMNS = ("seq", "time", "period", "period_s", "bundle_id", "target")    # beside the partitions device, node


OUTPUT_COLUMN = re.compile(r"(?:forecast|(?:lo|hi)\d+(?:\.\d+)?)_\d+")     # forecast_3, lo80_1, hi97.5_6: no reading's


def forecast_column(k: int) -> str:
    """The forecast made for k periods ahead (k = 1..horizon)."""
    return f"forecast_{k}"


def bound_column(level: float, side: str, k: int) -> str:
    """A bound of that forecast: side 'lo' or 'hi', level 0.8 → 'lo80_1'."""
    return f"{side}{100 * level:g}_{k}"
