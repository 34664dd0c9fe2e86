"""The service's clock: irregular readings in, one row per stream per sample period out.

Time is event time when a message carries it, the wall clock (its arrival) when it does not.
A reading at time t belongs to period p = period_index(t) (floor(t / period_s), or centred on the bundle's phase). Period p closes (one tick: one
batched forecaster call for every stream) as soon as

- every active stream (one with a reading in the last `active_ticks` periods) has sent a reading
  of a later period, so a recording replayed at full speed ticks as fast as it arrives; a reading
  ahead of the wall clock counts as the wall clock's period here, so no node can hurry the clock; or
- `grace_s` after p's end on the wall clock (live sensors), or after p opened when the readings
  are older than the wall clock (a replay whose last period nobody follows, or a gap in one).

An empty period after the readings stop closes on the wall clock only when it ended after the
last arrival (real silence, not the end of a replay), so a replay never runs on into invented
periods. No single node moves the clock:

- `late`: before the open period (counted per node; the clock does not move back);
- `future`: beyond the wall clock by more than `max_future_s` (a node's clock skew): dropped;
- `ahead`: more than `max_gap_ticks` past the open period. The clock jumps there only when a
  quorum (more than half) of the active streams is ahead too, or when no active stream has sent
  an on-time reading for `stall_s` (an outage, a restart); until then such readings are held
  (the latest per stream, replayed after a jump) and counted.
- a duplicate: the same stream and time twice in one period (a QoS 1 redelivery) counts once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

AGGREGATES = ("mean", "last")
MAX_GAP_TICKS = 30         # the default: a reading further ahead than this many periods is `ahead`
_NEVER = np.iinfo(np.int64).min // 2
EARLY_S = 1e-3             # a reading this early still belongs to the next period (timestamps in whole ms)
CENTRE = 0.5 + 1e-3        # with a phase: a reading half a period (less a thousandth) before the next point is its


def period_index(t: float, period_s: float, phase_s: float | None = None) -> int:
    """The sample period a reading at epoch `t` belongs to (serve's clock, stream and training's grid
    alike). With the bundle's `phase_s` (where in its period training's readings fell), periods are
    centred on phase_s + p * period_s: a logger on the hour with a few seconds of jitter (10:59:58,
    12:00:03) has one reading in each, where periods that began on the hour put a fifth of them in
    the period before. Without it (a bundle before 0.11, a --resample grid), period p begins at
    p * period_s: one on the grid belongs to its own period even when t / period_s is a hair below the
    integer (0.016 s periods at epoch 1.7e9 are 1e11 periods: 1e-5 of rounding), and one a thousandth
    of a period early, or a millisecond in a sub-second period (stamped in whole ms), to the next."""
    return int(math.floor(_position(t, period_s, phase_s)))


def period_indices(t: np.ndarray, period_s: float, phase_s: float | None = None) -> np.ndarray:
    """period_index of each time in `t` (float64 epochs), vectorized: the same rule."""
    return np.floor(_position(t, period_s, phase_s)).astype(np.int64)


def _position(t, period_s: float, phase_s: float | None):
    """Where t lies on the lattice of periods: its period is the floor. (Without a phase, a reading up
    to 1 ms early counts as the next period's, never more than a quarter period: at 1 kHz that was
    every reading.)"""
    if phase_s is None:
        return (t + min(max(1e-3 * period_s, EARLY_S), 0.25 * period_s)) / period_s
    return (t - phase_s) / period_s + CENTRE


def period_time(p: int, period_s: float, phase_s: float | None = None) -> float:
    """The time that names period p: the centre of its readings with a phase, else its start."""
    return (phase_s or 0.0) + p * period_s


def period_end(p: int, period_s: float, phase_s: float | None = None) -> float:
    """When period p's readings end (the next period's first reading can come)."""
    return period_time(p, period_s, phase_s) + (period_s if phase_s is None else (1 - CENTRE) * period_s)


@dataclass
class Tick:
    """One closed period: x [B, I] (NaN where nothing arrived), which streams sent anything, and
    the wall time of each stream's last reading in it (for the reading → forecast lag). time_s: when
    its readings were taken (their mean time; in a period nothing reached, its time (period_time:
    its start, or its centre with a phase) plus the offset of the last readings): the calendar
    inputs' time, as training and `stream` take it."""
    period: int
    start_s: float
    x: np.ndarray
    seen: np.ndarray
    arrived: np.ndarray
    time_s: float


class _Period:
    """Sums, counts and last values [B, I] of one period's readings (allocated when one arrives),
    and the event times each stream sent in it (for deduplication)."""

    def __init__(self, streams: int, n: int):
        self.sum = np.zeros((streams, n))
        self.count = np.zeros((streams, n), np.int32)
        self.last = np.full((streams, n), np.nan)
        self.seen = np.zeros(streams, bool)
        self.arrived = np.zeros(streams)
        self.times = {}                      # slot → {event time}
        self.offset_sum = np.zeros(streams)  # the readings' seconds past the period's time (may be < 0), summed
        self.offset_count = np.zeros(streams, np.int64)

    def offset(self):
        """The mean time past the period's start of the readings in it; None where none arrived."""
        n = int(self.offset_count.sum())
        return float(self.offset_sum.sum()) / n if n else None

    def to_json(self) -> dict:
        """The seen streams' partial sums, for a checkpoint at stop (readings acknowledged, not yet ticked)."""
        return {int(s): {"sum": self.sum[s].tolist(), "count": self.count[s].tolist(),
                         "last": [None if np.isnan(v) else v for v in self.last[s].tolist()],
                         "times": sorted(self.times.get(int(s), ())),
                         "offset": [float(self.offset_sum[s]), int(self.offset_count[s])]}
                for s in np.flatnonzero(self.seen)}

    def load_json(self, doc: dict, now: float) -> None:
        for s, d in doc.items():
            s = int(s)
            self.sum[s], self.count[s] = d["sum"], d["count"]
            self.last[s] = [np.nan if v is None else v for v in d["last"]]
            self.seen[s], self.arrived[s] = True, now
            self.times[s] = set(d["times"])
            self.offset_sum[s], self.offset_count[s] = d.get("offset", (0.0, 0))   # (a checkpoint before 0.10: none)


class TickClock:
    def __init__(self, period_s: float, streams: int, n_features: int, aggregate: str = "mean",
                 grace_s: float | None = None, max_gap_ticks: int = MAX_GAP_TICKS, max_future_s: float | None = None,
                 active_ticks: int = 3, stall_s: float | None = None, phase_s: float | None = None):
        if not period_s or period_s <= 0:
            raise ValueError(f"the sample period must be > 0 s, got {period_s} (the bundle has no sample_period_s: "
                             "pass --period-s)")
        if aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
        self.period_s, self.streams, self.n, self.aggregate = float(period_s), streams, n_features, aggregate
        self.phase_s = None if phase_s is None else float(phase_s)     # the bundle's sample_phase_s (period_index)
        self.grace_s = min(5.0, 0.2 * self.period_s) if grace_s is None else float(grace_s)
        self.max_gap_ticks, self.active_ticks = int(max_gap_ticks), int(active_ticks)
        self.max_future_s = max(60.0, self.period_s) if max_future_s is None else float(max_future_s)
        # No on-time reading for this long (while some are ahead): the clock follows them.
        self.stall_s = max(10 * self.grace_s, 2 * self.period_s, 5.0) if stall_s is None else float(stall_s)
        self.open = None                 # the open period, None before the first reading
        self.opened_wall = 0.0
        self.last_arrival = -math.inf
        self.last_ok = -math.inf         # wall time of the last on-time reading
        self.pending = {}                # period → _Period
        self.slot_latest = np.full(streams, _NEVER, np.int64)
        self.ahead = {}                  # slot → period of its latest reading past the gap
        self.offset_s = 0.0              # the last readings' mean time past their period's time

    def period_of(self, t: float) -> int:
        return period_index(t, self.period_s, self.phase_s)

    def time_of(self, p: int) -> float:
        """The time that names period p (period_time)."""
        return period_time(p, self.period_s, self.phase_s)

    def classify(self, slot: int, t: float, now: float) -> str:
        """'ok', 'late', 'future', 'ahead' or 'jump' for stream `slot`'s reading at event time t,
        arriving at wall time now. A 'jump' is for the caller to do (flush, restart, zero states)."""
        if t > now + self.max_future_s:
            return "future"
        if self.open is None:
            return "ok"
        p = self.period_of(t)
        if p < self.open:
            return "late"
        if p <= self.open + self.max_gap_ticks:
            self.ahead.pop(slot, None)
            return "ok"
        self.ahead[slot] = p
        active = np.flatnonzero(self.active())
        quorum = sum(1 for s in active if s in self.ahead) > len(active) / 2
        return "jump" if quorum or now - self.last_ok > self.stall_s else "ahead"

    def jump_target(self, now: float) -> float:
        """Where a jump restarts: the earliest held period ahead (no held reading is late there)."""
        return self.time_of(min(self.ahead.values()))

    def restart(self, t: float, now: float) -> None:
        """Forget everything pending; the period of t (not past the wall clock's) is the open one."""
        self.open = min(self.period_of(t), self.period_of(now))
        self.opened_wall, self.pending, self.ahead = now, {}, {}
        self.slot_latest[:] = _NEVER

    def add(self, slot: int, t: float, row: np.ndarray, now: float, timed: bool = True) -> bool:
        """Fold one stream's reading (row [I], NaN = not sent) into its period (classify first);
        False for a duplicate (the same stream and event time again in this period)."""
        if self.open is None:
            self.restart(t, now)
        p = self.period_of(t)
        acc = self.pending.get(p)
        if acc is None:
            acc = self.pending[p] = _Period(self.streams, self.n)
        if timed:
            seen = acc.times.setdefault(slot, set())
            if t in seen:
                return False
            seen.add(t)
        sent = np.isfinite(row)
        acc.sum[slot, sent] += row[sent]
        acc.count[slot, sent] += 1
        acc.last[slot, sent] = row[sent]
        acc.seen[slot] = True
        acc.arrived[slot] = now
        acc.offset_sum[slot] += t - self.time_of(p)
        acc.offset_count[slot] += 1
        # A reading ahead of the wall clock counts as the wall clock's period: it cannot close periods early.
        self.slot_latest[slot] = max(self.slot_latest[slot], min(p, self.period_of(now)))
        self.last_arrival = self.last_ok = now
        return True

    def has_pending(self, slot: int) -> bool:
        """A reading of this stream is in a period not yet closed (one held `ahead` was counted as
        dropped: it does not keep a silent node's slot)."""
        return any(acc.seen[slot] for acc in self.pending.values())

    def forget(self, slot: int) -> None:
        """A stream's slot was freed: nothing of it stays pending or active."""
        self.slot_latest[slot] = _NEVER
        self.ahead.pop(slot, None)
        for acc in self.pending.values():
            acc.sum[slot], acc.count[slot], acc.last[slot], acc.seen[slot] = 0.0, 0, np.nan, False
            acc.offset_sum[slot], acc.offset_count[slot] = 0.0, 0
            acc.times.pop(slot, None)

    def to_json(self) -> dict:
        """The open period and what is pending, for a checkpoint at stop."""
        return {"open": self.open, "offset_s": self.offset_s,
                "pending": {str(p): acc.to_json() for p, acc in self.pending.items()}}

    def load_json(self, doc: dict, now: float) -> None:
        """Restore `to_json`'s document; the caller checked the open period against the wall clock."""
        self.open, self.opened_wall, self.last_arrival, self.last_ok = int(doc["open"]), now, now, now
        offset = doc.get("offset_s", 0.0)
        self.offset_s = float(offset) if isinstance(offset, (int, float)) and abs(offset) < self.period_s else 0.0
        for p, streams in (doc.get("pending") or {}).items():
            acc = self.pending[int(p)] = _Period(self.streams, self.n)
            acc.load_json(streams, now)
            for s in streams:
                self.slot_latest[int(s)] = max(self.slot_latest[int(s)], int(p))

    def _closable(self, now: float) -> bool:
        p = self.open
        active = self.active()
        if active.any() and (self.slot_latest[active] > p).all():
            return True                                        # every active stream moved on
        return now >= self._wall_deadline()

    def active(self) -> np.ndarray:
        """The streams a period waits for: those that sent within active_ticks periods of the open one,
        or of the newest reading where that is later (a file replayed at full speed: a sensor that fell
        silent held every period open until the others' readings ran past max_gap_ticks and were lost)."""
        return self.slot_latest >= max(self.open, int(self.slot_latest.max())) - self.active_ticks

    def _wall_deadline(self) -> float:
        """Wall time at which the open period closes on the clock alone (inf: never, the end of a replay)."""
        end = period_end(self.open, self.period_s, self.phase_s)
        if self.open in self.pending:
            return max(end, self.opened_wall) + self.grace_s
        if end > self.last_arrival:
            return end + self.grace_s                          # live: real silence
        if any(q > self.open for q in self.pending):
            return self.opened_wall + self.grace_s             # a replay's gap: laggards get the grace
        return math.inf

    def next_deadline(self, now: float) -> float:
        """Wall time to wait until if nothing else arrives (at most a period ahead)."""
        if self.open is None:
            return now + 1.0
        return min(self._wall_deadline(), now + self.period_s)

    def close_ready(self, now: float, flush: bool = False):
        """The ticks that can close now, in order; with flush=True, every pending one and none after
        (the empty periods up to a wall clock stepped months ahead were a tick each, all built at once)."""
        out = []           # (at most a gap's worth per call without flush: the loop can never spin)
        while self.open is not None and (self.pending if flush else self._closable(now)):
            out.append(self._close(now))
            if not flush and len(out) > self.max_gap_ticks:
                break
        return out

    def skip_to(self, now: float, beyond: int) -> int:
        """With the readings live (not a replay of older ones, whose periods never close on the wall
        clock), move the open period to now's, or to the first pending one before it, when it lags more
        than `beyond` periods behind (the wall clock stepped forward, the loop was held up); the periods
        skipped, or 0. Those empty periods were a tick each, built at once."""
        if self.open is None or period_end(self.open, self.period_s, self.phase_s) <= self.last_arrival:
            return 0
        skipped = min([self.period_of(now), *self.pending]) - self.open
        if skipped <= beyond:
            return 0
        self.open, self.opened_wall = self.open + skipped, now
        return skipped

    def _close(self, now: float) -> Tick:
        p = self.open
        acc = self.pending.pop(p, None) or _Period(self.streams, self.n)
        if self.aggregate == "mean":
            with np.errstate(invalid="ignore", divide="ignore"):
                x = np.where(acc.count > 0, acc.sum / np.maximum(acc.count, 1), np.nan)
        else:
            x = acc.last
        self.open, self.opened_wall = p + 1, now
        offset = acc.offset()
        if offset is not None:
            self.offset_s = offset
        start = self.time_of(p)
        return Tick(p, start, x.astype(np.float32), acc.seen, acc.arrived, start + self.offset_s)
