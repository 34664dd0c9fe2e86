"""The service's clock: irregular readings in, one row per stream per sample period out.

Time is event time when a message carries it, the wall clock (its arrival) when it does not.
A reading at time t belongs to period p = floor(t / period_s). Period p closes (one tick: one
batched forecaster call for every stream) as soon as

- every active stream (one with a reading in the last `active_ticks` periods) has sent a reading
  of a later period, so a recording replayed at full speed ticks as fast as it arrives; or
- `grace_s` after p's end on the wall clock (live sensors), or after p opened when the readings
  are older than the wall clock (a replay whose last period nobody follows); or
- p has no readings and a later period has some (a gap: stepped as missing, holds and all).

An empty period after the readings stop closes on the wall clock only when it ended after the
last arrival (real silence, not the end of a replay), so a replay never runs on into invented
periods. Late readings (before the open period) and readings from the future (beyond the wall
clock by `max_future_s`) are dropped and counted by the caller; a reading more than
`max_gap_ticks` ahead is a clock jump (the caller flushes, restarts the clock, zeroes states).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

AGGREGATES = ("mean", "last")


@dataclass
class Tick:
    """One closed period: x [B, I] (NaN where nothing arrived), which streams sent anything, and
    the wall time of each stream's last reading in it (for the reading → forecast lag)."""
    period: int
    start_s: float
    x: np.ndarray
    seen: np.ndarray
    arrived: np.ndarray


class _Period:
    """Sums, counts and last values [B, I] of one period's readings (allocated when one arrives)."""

    def __init__(self, streams: int, n: int):
        self.sum = np.zeros((streams, n))
        self.count = np.zeros((streams, n), np.int32)
        self.last = np.full((streams, n), np.nan)
        self.seen = np.zeros(streams, bool)
        self.arrived = np.zeros(streams)


class TickClock:
    def __init__(self, period_s: float, streams: int, n_features: int, aggregate: str = "mean",
                 grace_s: float | None = None, max_gap_ticks: int = 30, max_future_s: float | None = None,
                 active_ticks: int = 3):
        if not period_s or period_s <= 0:
            raise ValueError(f"the sample period must be > 0 s, got {period_s} (the bundle has no sample_period_s: "
                             "pass --period-s)")
        if aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
        self.period_s, self.streams, self.n, self.aggregate = float(period_s), streams, n_features, aggregate
        self.grace_s = min(5.0, 0.2 * self.period_s) if grace_s is None else float(grace_s)
        self.max_gap_ticks, self.active_ticks = int(max_gap_ticks), int(active_ticks)
        self.max_future_s = max(60.0, self.period_s) if max_future_s is None else float(max_future_s)
        self.open = None                 # the open period, None before the first reading
        self.opened_wall = 0.0
        self.last_arrival = -math.inf
        self.pending = {}                # period → _Period
        self.slot_latest = np.full(streams, np.iinfo(np.int64).min // 2, np.int64)

    def period_of(self, t: float) -> int:
        # A reading on the grid belongs to its own period even when t / period_s is a hair below
        # the integer (0.016 s periods at epoch 1.7e9 are 1e11 periods: 1e-5 of rounding).
        return int(math.floor(t / self.period_s + 1e-3))

    def classify(self, t: float, now: float) -> str:
        """'ok', 'late', 'future' or 'jump' for a reading at event time t arriving at wall time now."""
        if t > now + self.max_future_s:
            return "future"
        if self.open is None:
            return "ok"
        p = self.period_of(t)
        if p < self.open:
            return "late"
        return "jump" if p > self.open + self.max_gap_ticks else "ok"

    def restart(self, t: float, now: float) -> None:
        """Forget everything pending; the period of t is the open one."""
        self.open, self.opened_wall, self.pending = self.period_of(t), now, {}
        self.slot_latest[:] = np.iinfo(np.int64).min // 2

    def add(self, slot: int, t: float, row: np.ndarray, now: float) -> None:
        """Fold one stream's reading (row [I], NaN = not sent) into its period (classify first)."""
        if self.open is None:
            self.restart(t, now)
        p = self.period_of(t)
        acc = self.pending.get(p)
        if acc is None:
            acc = self.pending[p] = _Period(self.streams, self.n)
        sent = np.isfinite(row)
        acc.sum[slot, sent] += row[sent]
        acc.count[slot, sent] += 1
        acc.last[slot, sent] = row[sent]
        acc.seen[slot] = True
        acc.arrived[slot] = now
        self.slot_latest[slot] = max(self.slot_latest[slot], p)
        self.last_arrival = now

    def _closable(self, now: float) -> bool:
        p = self.open
        if any(q > p for q in self.pending):
            if p not in self.pending:
                return True                                    # a gap: nothing came for p, later ones did
            active = self.slot_latest >= p - self.active_ticks
            if active.any() and (self.slot_latest[active] > p).all():
                return True
        return now >= self._wall_deadline()

    def _wall_deadline(self) -> float:
        """Wall time at which the open period closes on the clock alone (inf: never, the end of a replay)."""
        end = (self.open + 1) * self.period_s
        if self.open in self.pending:
            return max(end, self.opened_wall) + self.grace_s
        return end + self.grace_s if end > self.last_arrival else math.inf

    def next_deadline(self, now: float) -> float:
        """Wall time to wait until if nothing else arrives (at most a period ahead)."""
        if self.open is None:
            return now + 1.0
        return min(self._wall_deadline(), now + self.period_s)

    def close_ready(self, now: float, flush: bool = False):
        """The ticks that can close now, in order (every pending one with flush=True)."""
        out = []           # (at most a gap's worth per call without flush: the loop can never spin)
        while self.open is not None and (self._closable(now) or (flush and self.pending)):
            out.append(self._close(now))
            if not flush and len(out) > self.max_gap_ticks and not self.pending:
                break
        return out

    def _close(self, now: float) -> Tick:
        p = self.open
        acc = self.pending.pop(p, None) or _Period(self.streams, self.n)
        if self.aggregate == "mean":
            with np.errstate(invalid="ignore", divide="ignore"):
                x = np.where(acc.count > 0, acc.sum / np.maximum(acc.count, 1), np.nan)
        else:
            x = acc.last
        self.open, self.opened_wall = p + 1, now
        return Tick(p, p * self.period_s, x.astype(np.float32), acc.seen, acc.arrived)
