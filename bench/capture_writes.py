"""`python -m bench.capture_writes [BUNDLE]`: bytes that `serve --capture` writes per tick.

An SD card wears by the bytes written to it, not by the size of the file: each tick is one SQLite
commit, which writes every page it touched into the WAL whole, and a checkpoint writes them again
into the database. This drives the runtime's own `Capture` (the bundle's features and horizon, with
its interval levels) for 2,000 ticks at 1, 40 and 1,000 nodes, counting what the process handed to
write() (/proc/self/io wchar), into a new file and into a file of the format before (16 KB pages,
AUTOINCREMENT), which a device that captured before keeps. Writes bench/capture_writes.json.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import sqlite3
import sys
import tempfile
import time

import numpy as np

from runtime.capture import SCHEMA, SCHEMA_VERSION, Capture

TICKS = 2000
YEAR_S = 365.25 * 86400


def written() -> int:
    """Bytes this process has handed to write() so far."""
    return next(int(line.split()[1]) for line in open("/proc/self/io") if line.startswith("wchar"))


def old_format(path: str) -> None:
    """An empty capture database as the runtime made it before 2026-12-08: 16 KB pages, AUTOINCREMENT."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA page_size = 16384")
    db.execute("PRAGMA auto_vacuum = INCREMENTAL")
    db.execute("PRAGMA journal_mode = WAL")
    db.executescript("BEGIN;" + SCHEMA.replace("seq INTEGER PRIMARY KEY,", "seq INTEGER PRIMARY KEY AUTOINCREMENT,")
                     + f"INSERT INTO meta VALUES ('capture_id', '{secrets.token_hex(8)}');"
                     + f"PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
    db.close()


def per_tick(manifest: dict, nodes: int, old: bool) -> dict:
    levels = (manifest.get("intervals") or {}).get("levels", [])
    I, K = len(manifest["features"]), int(manifest["model"]["horizon"])
    rng = np.random.default_rng(0)
    names = [f"node-{i}" for i in range(nodes)]
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "capture.db")
        if old:
            old_format(path)
        cap = Capture(path, manifest, 1.0, levels)
        before = written()
        for p in range(TICKS):
            x = rng.standard_normal((nodes, I)).astype(np.float32)
            y = rng.standard_normal((nodes, K)).astype(np.float32)
            cap.record_tick(p, names, x, y, {lv: (y - 1, y + 1) for lv in levels})
        cap.close()
        total = written() - before
        size = os.path.getsize(path)
    tick = total / TICKS
    return {"format": "before 2026-12-08 (16 KB pages, AUTOINCREMENT)" if old else "current (4 KB pages)",
            "nodes": nodes, "bytes_per_tick": round(tick), "bytes_per_row_written": round(tick / nodes, 1),
            "file_bytes_per_row": round(size / (TICKS * nodes), 1),
            "tb_per_year_at_1s": round(tick * YEAR_S / 1e12, 3)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.capture_writes", description=__doc__.splitlines()[0])
    p.add_argument("bundle", nargs="?", default="bundles/demo")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "capture_writes.json"))
    a = p.parse_args(argv)
    try:
        manifest = json.load(open(os.path.join(a.bundle, "manifest.json")))
    except (OSError, ValueError) as e:
        sys.exit(f"error: {a.bundle}: no readable bundle ({e}); expected a bundle folder (make demo makes bundles/demo)")
    rows = []
    for nodes in (1, 40, 1000):
        for old in (True, False):
            rows.append(per_tick(manifest, nodes, old))
            r = rows[-1]
            print(f"{nodes:5d} node(s), {r['format']}: {r['bytes_per_tick']:,} bytes written a tick "
                  f"({r['bytes_per_row_written']} a row; file {r['file_bytes_per_row']} a row; "
                  f"{r['tb_per_year_at_1s']} TB a year at 1 s)", flush=True)
    result = {"date": time.strftime("%Y-%m-%d"), "machine": os.uname().machine, "bundle": a.bundle,
              "features": len(manifest["features"]), "horizon": manifest["model"]["horizon"],
              "levels": (manifest.get("intervals") or {}).get("levels", []), "ticks": TICKS, "rows": rows}
    with open(a.out, "w") as f:
        json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
