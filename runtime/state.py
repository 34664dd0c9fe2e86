"""A forecaster's state on disk: what `runtime serve` checkpoints so a restart, a power cut or a
promoted model goes on from where the streams were (Forecaster.save_state / load_state)."""
from __future__ import annotations

import json

import numpy as np

from .files import atomic_write

# The state file's format: 1 (no `state_version` key) held the GRU state, the last readings, the
# bundle id and meta; 2 adds the interval tracker (`iv_*`, runtime/intervals.py) when intervals are on;
# 3 adds an AR base's last levels per stream (`lags`, a ring whose newest is at `lags_ring`, and
# `lags_fresh` for streams not started).
STATE_VERSION = 3


class StateFile:
    """Forecaster's save_state and load_state (a mixin: it reads and writes the forecaster's own
    buffers: the GRU state, the held readings, the interval tracker and an AR base's lags)."""

    def save_state(self, path: str, meta: dict | None = None) -> None:
        """Write the state atomically (runtime/files.atomic_write), tagged with this bundle's id and
        STATE_VERSION; with intervals on, the tracker's adapted miscoverage, its last forecasts and
        the running score too. `meta` (JSON-able, e.g. the service's node → stream map) is stored beside it."""
        with atomic_write(path) as f:
            last = (self._dev_prev * self._norm_inv_scale).reshape(self.streams, -1)   # normalized
            tracker = self._tracker.state_arrays() if self._tracker is not None else {}
            lags = {} if self._lags is None else self._lags.arrays()
            np.savez(f, state=self._h, last=last, bundle_id=np.str_(self.manifest["bundle_id"]),
                     meta=np.str_(json.dumps(meta or {})), state_version=np.int64(STATE_VERSION), **tracker, **lags)

    def load_state(self, path: str) -> dict:
        """Restore a state saved by `save_state` for this same bundle and stream count; returns its meta.

        The interval tracker comes back with it when both the file (version 2) and this forecaster
        have intervals; it starts fresh when only this forecaster has them (a version 1 file, or
        one saved without intervals); a file's tracker is ignored by a forecaster without intervals.

        Raises:
            ValueError: for every file that is not such a state (unreadable, truncated, foreign,
                of another shape, non-finite or outside [-1, 1], of a newer format); the message names the file.
        """
        try:
            with np.load(path, allow_pickle=False) as z:
                state, last, bid = z["state"], z["last"], str(z["bundle_id"])
                meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
                version = int(z["state_version"]) if "state_version" in z.files else 1
                iv = {k: z[k] for k in z.files if k.startswith("iv_")}
                lags = {k: z[k] for k in ("lags", "lags_ring", "lags_fresh") if k in z.files}
        except Exception as e:   # BadZipFile, EOFError, KeyError, OSError, ValueError, zlib.error, ...
            raise ValueError(f"{path} is not a saved forecaster state ({type(e).__name__}: {e})") from None
        if bid != self.manifest["bundle_id"]:
            raise ValueError(f"{path} belongs to bundle {bid[:40]}, not to {self.manifest['bundle_id']} ({self.bundle})")
        if not 1 <= version <= STATE_VERSION:
            raise ValueError(f"{path} has state_version {version}; this runtime reads versions 1 to {STATE_VERSION}")
        try:
            last = np.asarray(last, np.float32).reshape(self.streams, len(self.features))
            tracker = self._restored_tracker(iv)          # checked in full before anything changes
            lags = None if self._lags is None else self._lags.checked(lags)
            self.state = state
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None
        if np.isfinite(last).all():
            np.copyto(self._dev_prev, (last / self._norm_inv_scale).reshape(self._shape))
        self._tracker = tracker
        if lags is not None:
            self._lags.restore(*lags)
        return meta if isinstance(meta, dict) else {}

    def _restored_tracker(self, arrays: dict):
        """A tracker like this forecaster's (None without intervals), holding `arrays` if there are any."""
        if self._tracker is None:
            return None
        tracker = self._interval_tracker(self._tracker.adapt, self._tracker.window)
        if arrays:
            tracker.restore(arrays)
        return tracker
