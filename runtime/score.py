"""`python -m runtime score capture.db|DIR`: each node's live MAE per horizon step against persistence.

It scores the forecasts as they were made (captured by `serve --capture`), against the readings
that arrived later: the forecast for k periods ahead made in period p meets the target's reading
of period p + k. Persistence forecasts the reading of period p. A pair counts when both readings
and the forecast are there (a period with nothing, or no target reading, scores nothing), which
is the service's own running score (`stats["score"]` with intervals on; runtime/intervals.py),
summed over every node, computed again from what was kept. DIR is a dataset `flash collect` wrote
(pyarrow needed, workstation), the file a capture database (stdlib sqlite3, on the device too).
"""
from __future__ import annotations

import collections
import json
import math
import os
import sqlite3

import numpy as np

from .capture import FIXED_COLUMNS, connect, forecast_column, models, node_names, readings, split


class ScoreError(ValueError):
    """Nothing to score, or an input that is neither a capture database nor a collected dataset."""


def series_from_capture(path: str) -> dict:
    """{node: (periods [n], truths [n], forecasts [n, K])} from a capture database, in period order."""
    db = connect(path, readonly=True)
    rows = collections.defaultdict(list)
    try:
        ms, names = models(db), node_names(db)
        for seq, period, node, model, v in readings(db):
            try:
                m, name = ms[model], names[node]
                x, y, _ = split(v, m)
                truth = math.nan if m["target_col"] is None else float(x[m["target_col"]])
            except (KeyError, IndexError, TypeError, ValueError):
                raise ScoreError(f"{path}: seq {seq} is no row this capture wrote (model {model}, node {node}, a "
                                 f"{len(v) if isinstance(v, bytes) else '?'}-byte value)") from None
            rows[name].append((period, truth, y))
    except sqlite3.DatabaseError as e:
        raise ScoreError(f"{path}: the capture database is damaged ({e})") from None
    finally:
        db.close()
    return {n: _arrays(r) for n, r in rows.items()}


def series_from_dataset(folder: str) -> dict:
    """The same from a collected Parquet dataset (hive partitions device=/node=): one series per device and node."""
    try:
        import pyarrow as pa
        import pyarrow.dataset as ds
    except ImportError:
        raise ScoreError(f"{folder}: scoring a collected dataset needs pyarrow (workstation: pip install "
                         "'gru-edge[train]'); on the device, score capture.db") from None
    ids = ds.partitioning(pa.schema([("device", pa.string()), ("node", pa.string())]), flavor="hive")
    try:                    # the partitions as text: node=007 and node=7 are two sensors
        table = ds.dataset(folder, format="parquet", partitioning=ids).to_table()
    except (pa.ArrowException, OSError) as e:
        raise ScoreError(f"{folder}: not a dataset flash collect wrote ({type(e).__name__}: {str(e)[:200]})") from None
    if table.num_rows == 0:
        raise ScoreError(f"{folder}: the dataset holds no rows")
    cols = table.column_names
    ks = sorted(int(c.split("_")[1]) for c in cols if c.startswith("forecast_"))
    data = {c: table.column(c).to_pylist() for c in ("device", "node", "period", "target") if c in cols}
    y = np.stack([table.column(forecast_column(k)).to_numpy(zero_copy_only=False) for k in ks], axis=1)
    values = {t: table.column(t).to_numpy(zero_copy_only=False).astype(np.float64)      # nulls: NaN
              for t in set(data["target"]) if t in cols and t not in FIXED_COLUMNS}
    rows = collections.defaultdict(list)
    for i, (node, period, target) in enumerate(zip(data["node"], data["period"], data["target"])):
        key = f"{data['device'][i]}/{node}" if "device" in data else node
        truth = values[target][i] if target in values else math.nan
        rows[key].append((period, float(truth), y[i]))
    return {n: _arrays(r) for n, r in rows.items()}


def _arrays(rows: list):
    rows.sort(key=lambda r: r[0])
    k = max(len(r[2]) for r in rows)
    y = np.full((len(rows), k), np.nan)
    for i, r in enumerate(rows):
        y[i, :len(r[2])] = r[2]
    return (np.array([r[0] for r in rows], np.int64), np.array([r[1] for r in rows], np.float64), y)


def score_series(periods: np.ndarray, truth: np.ndarray, y: np.ndarray) -> dict:
    """Per step k: scored pairs, summed absolute errors of the model and of persistence."""
    K = y.shape[1]
    out = {"n": np.zeros(K), "model_ae": np.zeros(K), "persistence_ae": np.zeros(K)}
    for k in range(1, K + 1):
        pos = np.minimum(np.searchsorted(periods, periods + k), len(periods) - 1)
        later = truth[pos]
        ok = (periods[pos] == periods + k) & np.isfinite(later) & np.isfinite(truth) & np.isfinite(y[:, k - 1])
        out["n"][k - 1] = ok.sum()
        out["model_ae"][k - 1] = np.abs(later - y[:, k - 1])[ok].sum()
        out["persistence_ae"][k - 1] = np.abs(later - truth)[ok].sum()
    return out


def _summary(s: dict) -> dict:
    n = np.maximum(s["n"], 1)
    return {"scored": [int(v) for v in s["n"]], "mae": [float(v) for v in s["model_ae"] / n],
            "persistence_mae": [float(v) for v in s["persistence_ae"] / n]}


def score(path: str) -> dict:
    """{"nodes": {node: summary}, "all": summary}; a summary holds scored, mae and persistence_mae
    per horizon step (the keys of the service's stats["score"])."""
    if os.path.isdir(path):
        series = series_from_dataset(path)
    elif os.path.isfile(path):
        series = series_from_capture(path)
    else:
        raise ScoreError(f"{path}: no such file or folder; expected a capture.db or a dataset `flash collect` wrote")
    if not series:
        raise ScoreError(f"{path}: nothing captured yet")
    per = {n: score_series(*s) for n, s in sorted(series.items())}
    K = max(len(s["n"]) for s in per.values())
    total = {key: np.zeros(K) for key in ("n", "model_ae", "persistence_ae")}
    for s in per.values():
        for key in total:
            total[key][:len(s[key])] += s[key]
    return {"nodes": {n: _summary(s) for n, s in per.items()}, "all": _summary(total)}


def print_score(result: dict, as_json: bool = False) -> None:
    """One line per node (and one for all): scored pairs, MAE per step, persistence's, their ratio."""
    if as_json:
        print(json.dumps(result, indent=2))
        return
    K = len(result["all"]["mae"])
    steps = " ".join(f"{'+' + str(k):>8}" for k in range(1, K + 1))
    print(f"{'node':<24} {'scored':>8}  {'':<12}{steps}")
    for name, s in [*result["nodes"].items(), ("(all)", result["all"])]:
        label = name if len(name) <= 24 else name[:21] + "..."
        mae = " ".join(f"{v:>8.4g}" for v in s["mae"])
        pers = " ".join(f"{v:>8.4g}" for v in s["persistence_mae"])
        ratio = " ".join(f"{m / p if p else math.nan:>8.3f}" for m, p in zip(s["mae"], s["persistence_mae"]))
        print(f"{label:<24} {sum(s['scored']):>8}  {'MAE':<12}{mae}\n{'':<34}{'persistence':<12}{pers}\n"
              f"{'':<34}{'ratio':<12}{ratio}")
