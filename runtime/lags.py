"""An AR base on the device (manifest `model.base`, format 7; a series' own, `series.<id>.base`, format 10):
each stream's last p normalized levels in a ring, and the base they give (runtime/residual.base_of),
one reading at a time, for every stream in one call."""
from __future__ import annotations

import numpy as np


class LagRing:
    """Each stream's last p levels (`lags[:, ring]` the newest), p the longest of the model's and its
    series' own bases; `fresh`: the streams not started yet (their missing levels are the first).

    `coef_rows()` gives each stream's [p + 1, O] coefficients while some stream's series has its own,
    else None (the pooled fast path); call `bind()` after a stream's series changes."""

    def __init__(self, streams: int, pooled: np.ndarray, coef_rows):
        p = pooled.shape[0] - 1
        self.pooled, self._coef_rows = pooled, coef_rows
        self._order = [(i + np.arange(p)) % p for i in range(p)]           # ring position -> newest first
        self.lags, self.ring = np.zeros((streams, p), np.float32), 0
        self.fresh, self.any_fresh = np.ones(streams, bool), True
        self.base = np.zeros((streams, pooled.shape[1]), np.float32)       # [B, O]: the last `push`'s
        self.bind()

    def bind(self) -> None:
        """The coefficients, zero past each base's own p: the pooled [p, O] rolled to match each ring
        position and its constant [O] while every stream forecasts from it; else each stream's [B, p, O] and [B, O]."""
        p, rows = self.lags.shape[1], self._coef_rows()
        if rows is not None:
            self._coef_b, self._const = rows[:, :p], rows[:, p]
            return
        self._coef_b, self._const = None, self.pooled[p]
        self._coef_at = [np.ascontiguousarray(np.roll(self.pooled[:p], i, axis=0)) for i in range(p)]

    def push(self, level: np.ndarray) -> np.ndarray:
        """Put each stream's level [B, 1] (normalized) into its ring (a fresh stream's fills it) and
        return the base [B, O]: runtime.residual.base_of, one reading at a time."""
        i = self.ring = (self.ring - 1) % self.lags.shape[1]
        lags = self.lags
        lags[:, i] = level[:, 0]
        if self.any_fresh:
            lags[self.fresh] = level[self.fresh]
            self.fresh[:], self.any_fresh = False, False
        if self._coef_b is None:
            np.matmul(lags, self._coef_at[i], out=self.base)
        else:                   # each stream its series' coefficients: its lags newest first
            self.base[...] = np.einsum("bp,bpo->bo", lags[:, self._order[i]], self._coef_b)
        self.base += self._const
        return self.base

    def restart(self, streams=slice(None)) -> None:
        """These streams' bases start again from their next level (a reset, a non-finite state);
        all of them: the ring's position too, so every stream sums as a new forecaster's, bit for bit."""
        self.fresh[streams] = True
        self.any_fresh = bool(self.fresh.any())
        if isinstance(streams, slice) and streams == slice(None):
            self.ring = 0

    def adopt(self, other: "LagRing") -> bool:
        """Continue from `other`'s levels when it keeps as many; False (nothing changed) when not."""
        if other.lags.shape != self.lags.shape:
            return False
        self.restore(other.lags, other.fresh, other.ring)
        return True

    def arrays(self) -> dict:
        """What a state file keeps (runtime/state.py, version 3)."""
        return {"lags": self.lags, "lags_ring": np.int64(self.ring), "lags_fresh": self.fresh}

    def checked(self, arrays: dict):
        """(lags, fresh, ring) from a state file's `arrays`, checked. A file without them (older, or
        from a level model) leaves every stream fresh: its base restarts from the next reading."""
        if not arrays:
            return np.zeros_like(self.lags), np.ones_like(self.fresh), 0
        lags, fresh = np.asarray(arrays.get("lags"), np.float32), np.asarray(arrays.get("lags_fresh"), bool)
        ring = arrays.get("lags_ring", np.int64(0))
        if (lags.shape != self.lags.shape or fresh.shape != self.fresh.shape or not np.isfinite(lags[~fresh]).all()
                or ring.shape != () or not 0 <= int(ring) < lags.shape[1]):
            raise ValueError(f"lags must be finite float32 {list(self.lags.shape)} with lags_fresh "
                             f"{list(self.fresh.shape)} and a lags_ring position; got {list(lags.shape)} and {list(fresh.shape)}")
        return lags, fresh, int(ring)

    def restore(self, lags, fresh, ring: int) -> None:
        np.copyto(self.lags, lags), np.copyto(self.fresh, fresh)
        self.ring, self.any_fresh = int(ring), bool(self.fresh.any())


def padded(base, p: int) -> np.ndarray:
    """An AR base's [q + 1, O] coefficients (runtime/residual.base_of) as [p + 1, O] float32 for a ring
    of p >= q lags: rows q..p-1 zero, the constant last."""
    coef = np.zeros((p + 1, len(base[0])), np.float32)
    coef[:len(base) - 1], coef[p] = np.asarray(base[:-1], np.float32), base[-1]
    return coef
