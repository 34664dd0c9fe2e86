"""Which series each stream of a Forecaster forecasts (manifest `series`, format 6 and on), and the
per-stream tables of what a series may set apart from the pooled model: its scalers, its deadband
(format 8) and its AR base (format 10).

Each table has one row per stream, created on first need from the pooled row and updated one stream
at a time, so setting every stream's series costs time linear in the streams (a gateway restoring
thousands of nodes), not a rebuild of every stream's row per call.
"""
from __future__ import annotations

from typing import Callable

import numpy as np


class _Table:
    """One per-stream table: the pooled row, each series' own row (or None: the pooled one), the
    [B, ...] rows while some stream has its own, and which streams do."""

    def __init__(self, streams: int, pooled: np.ndarray, own: Callable):
        self.pooled, self.own, self.cache = pooled, own, {}
        self.rows, self.mine, self.count = None, np.zeros(streams, bool), 0

    def row_of(self, sid):
        if sid is None:
            return None
        if sid not in self.cache:
            self.cache[sid] = self.own(sid)
        return self.cache[sid]

    def set(self, stream: int, sid) -> None:
        row = self.row_of(sid)
        self.count += int(row is not None) - int(self.mine[stream])
        self.mine[stream] = row is not None
        if self.rows is None and row is not None:
            self.rows = np.repeat(self.pooled[None], len(self.mine), axis=0)
        if self.rows is not None:
            self.rows[stream] = self.pooled if row is None else row


class StreamSeries:
    """Each stream's series id (None: the pooled model), and tables added with `add`.

    `rows(name)` is the table's [B, ...] rows while some stream's series has its own row, else None
    (the pooled fast path). Ids are checked by the caller (Forecaster.set_series)."""

    def __init__(self, streams: int):
        self.ids, self._tables = [None] * streams, {}

    def add(self, name: str, pooled, own: Callable) -> None:
        """A table: `pooled` the row every stream starts from, `own(sid)` a series' row or None."""
        table = self._tables[name] = _Table(len(self.ids), np.asarray(pooled, np.float32), own)
        for stream, sid in enumerate(self.ids):
            if sid is not None:
                table.set(stream, sid)

    def set(self, stream: int, sid) -> None:
        self.ids[stream] = sid
        for table in self._tables.values():
            table.set(stream, sid)

    def rows(self, name: str):
        t = self._tables.get(name)
        return None if t is None or not t.count else t.rows


def series_for(known, node: str, device: str | None = None) -> tuple:
    """(the series node `node` belongs to or None, every series it could be): "device/node" where a
    model of several devices' collected data has it, else "node", else the one series ending in
    "/node"; several endings (a node name more than one device uses): None, and the candidates."""
    for sid in ((f"{device}/{node}",) if device else ()) + (node,):
        if sid in known:
            return sid, [sid]
    ends = sorted(s for s in known if s.endswith("/" + node))
    return (ends[0] if len(ends) == 1 else None), ends


def series_names(known) -> str:
    """A bundle's series for a message: the first eight, quoted, each at most 60 characters."""
    return ", ".join(repr(k[:60]) for k in sorted(known)[:8]) + (", ..." if len(known) > 8 else "")


def not_a_series(known, series: str) -> str | None:
    """Why `series`, asked for by name (`--series`), cannot be used: the end of a one-line error, the
    name (its first 60 characters) and the bundle's series; None when it is one of them."""
    if series in (known or {}):
        return None
    return (f"{series[:60]!r}{'...' if len(series) > 60 else ''} is not one of this bundle's series"
            + (f" ({series_names(known)})" if known else " (it was trained on one series)"))


def series_columns(manifest: dict) -> tuple:
    """The CSV columns that name each reading's series, in order: the one training read its series
    from (`source.data_spec.series_col`: `sensor`, `station`...), then `node` (what serve and collect write)."""
    col = ((manifest.get("source") or {}).get("data_spec") or {}).get("series_col")
    return tuple(dict.fromkeys(c for c in (col, "node") if isinstance(c, str) and c))


def pooled_note(known, what: str) -> str:
    """The one line said when a bundle of many series is used in the pooled scale (`what`: who uses it)."""
    return (f"note: this bundle forecasts {len(known)} series, each in its own scale; {what} the pooled scale: "
            f"pass --series ID (e.g. {sorted(known)[0]!r}) for a sensor of one of them")
