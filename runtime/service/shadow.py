"""A candidate bundle beside the live one (`serve --shadow BUNDLE`, `[shadow]`, `<root>/shadow`).

The candidate steps on the same ticks as the live model, in one more batched call, with its own
state per slot; its forecasts are never published as the node's. Both models are scored on the
same live truths (the target's reading as it arrives) by the interval tracker's scoring
(runtime/intervals.py: one definition of live MAE), per horizon step, beside persistence. The
comparison goes out at every stats interval: the `<base>/shadow` topic, a Home Assistant sensor,
and `shadow_score.json` in the state dir (atomic), which `flash promote` reads.

The candidate takes its features from the live reading by name (calendar inputs it computes from
the tick time); a feature the readings never carry, another target or another horizon is
refused at start with one line.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

from ..files import atomic_write, restore_state
from ..forecaster import load, target_index
from ..intervals import RETRAIN_WINDOW, IntervalTracker
from ..streams import series_for

SCORE_FILE = "shadow_score.json"
STATE_FILE = "shadow-state.npz"
SCORES_FILE = "shadow-scores.npz"        # both scorers, so a restart keeps the periods scored


class ShadowError(ValueError):
    """A candidate that cannot run beside the live model; the text says why, in one line."""


def scorer(manifest: dict, streams: int, j: int, with_intervals: bool, window: int = RETRAIN_WINDOW) -> IntervalTracker:
    """The interval tracker as a scorer: the bundle's intervals (coverage too) or point forecasts only."""
    k = manifest["model"]["horizon"]
    if not with_intervals:
        manifest = {"intervals": {"levels": [], "probs": [0.0, 1.0], "error_quantiles": [[0.0, 0.0]] * k}}
    return IntervalTracker(manifest, streams, j, adapt=False, retrain_window=window)


class Shadow:
    """The candidate forecaster, its scores and the live model's, over the service's B slots."""

    def __init__(self, bundle: str, live, m: dict, state_dir: str | None):
        self.fc = load(bundle, m["engine"], m["precision"], streams=live.streams, nan_policy=m["nan_policy"])
        self.bundle, self.B = os.path.realpath(bundle), live.streams
        self.cols = self._columns(live)
        self.j = target_index(live.manifest)
        both = bool(live.manifest.get("intervals") and self.fc.manifest.get("intervals"))
        self.live = scorer(live.manifest, self.B, self.j, both)
        self.cand = scorer(self.fc.manifest, self.B, self.j, both)
        self.live_id, self.cand_id = live.manifest["bundle_id"], self.fc.manifest["bundle_id"]
        self.missing = 0                  # forecasts the candidate did not give where the live model did
        self.state_dir = state_dir
        if state_dir:
            restore_state(self.fc, os.path.join(state_dir, STATE_FILE))
            self._restore_scores()

    def _columns(self, live) -> np.ndarray:
        lm, cm = live.manifest, self.fc.manifest
        missing = [f for f in self.fc.features if f not in live.features]
        if missing:
            raise ShadowError(f"shadow {self.bundle}: the candidate needs {', '.join(missing)}, which the readings "
                              f"never carry (the live bundle reads {', '.join(live.features)})")
        if lm["targets"][0]["name"] != cm["targets"][0]["name"] or target_index(lm) is None:
            raise ShadowError(f"shadow {self.bundle}: the candidate forecasts {cm['targets'][0]['name']}, the live "
                              f"model {lm['targets'][0]['name']}; expected the same target, read as an input")
        if lm["model"]["horizon"] != cm["model"]["horizon"]:
            raise ShadowError(f"shadow {self.bundle}: horizon {cm['model']['horizon']} beside the live model's "
                              f"{lm['model']['horizon']}; expected the same horizon to compare step by step")
        return np.asarray([live.features.index(f) for f in self.fc.features])

    def step(self, x: np.ndarray, y_live: np.ndarray, time_s: float) -> None:
        """One tick: x [B, I_live] raw readings (NaN: none), y_live [B, K] the live forecasts; time_s: when the readings were taken (the calendar inputs' time)."""
        xc = x[:, self.cols]
        y = np.asarray(self.fc.step(xc[0] if self.B == 1 else xc, time=time_s)).reshape(self.B, -1)
        truth = x[:, self.j]
        # Scored where both forecast: a candidate whose state blew up drops no hard period alone.
        live_ok, cand_ok = np.isfinite(y_live), np.isfinite(y)
        self.missing += int(np.count_nonzero(live_ok & ~cand_ok))
        both = live_ok & cand_ok
        self.live.update(truth, np.where(both, y_live, np.nan))
        self.cand.update(truth, np.where(both, y, np.nan))

    def set_series(self, slot: int, node, live, device=None) -> None:
        """A many-series candidate forecasts the slot's node in its series' scale (else the pooled one),
        found as the live model finds it (runtime/streams.series_for, `device`: [model] device_name);
        both scorers' intervals follow each model's scale for that slot (`live`: the live Forecaster)."""
        known = self.fc.manifest.get("series")
        if known:
            self.fc.set_series(slot, series_for(known, node, device)[0])
        self.cand.scale[slot], self.live.scale[slot] = self.fc.interval_scale[slot], live.interval_scale[slot]

    def reset(self, stream=None) -> None:
        """A slot handed to a new node (or every slot after a clock jump): the candidate's state too."""
        self.fc.reset(stream=stream)
        sel = slice(None) if stream is None else stream
        self.live.reset_stream(sel), self.cand.reset_stream(sel)

    def report(self) -> dict:
        """The comparison: per horizon step, periods scored, live, candidate and persistence MAE."""
        lv, cd = self.live.score(), self.cand.score()
        n = [min(a, b) for a, b in zip(lv["scored"], cd["scored"])]
        doc = {"live_bundle": self.live_id, "candidate_bundle": self.cand_id, "candidate_path": self.bundle,
               "scored": n, "live_mae": lv["mae"], "candidate_mae": cd["mae"],
               "persistence_mae": lv["persistence_mae"],
               "live_mae_mean": _mean(lv["mae"], n), "candidate_mae_mean": _mean(cd["mae"], n),
               "candidate_missing": self.missing}
        if lv["coverage"]:
            doc["live_coverage"], doc["candidate_coverage"] = lv["coverage"], cd["coverage"]
        return doc

    def save_state(self, meta: dict) -> None:
        """The candidate's state per slot, beside the live one (at every checkpoint)."""
        if self.state_dir:
            self.fc.save_state(os.path.join(self.state_dir, STATE_FILE), meta)

    def write_scores(self) -> None:
        """Both scores (kept over a restart) and the comparison as shadow_score.json, each atomic."""
        if not self.state_dir:
            return
        with atomic_write(os.path.join(self.state_dir, SCORES_FILE)) as f:
            np.savez(f, live_bundle=np.str_(self.live_id), candidate_bundle=np.str_(self.cand_id),
                     missing=np.int64(self.missing), **self._scorer_arrays())
        with atomic_write(os.path.join(self.state_dir, SCORE_FILE), "w") as f:
            json.dump(self.report(), f)

    def _scorer_arrays(self) -> dict:
        return {f"{who}_{k}": v for who, t in (("live", self.live), ("cand", self.cand))
                for k, v in t.state_arrays().items()}

    def _restore_scores(self) -> None:
        """Both scores back when the saved ones compare these two bundles; else they start afresh (a
        file that is no saved score, said)."""
        path = os.path.join(self.state_dir, SCORES_FILE)
        if not os.path.lexists(path):
            return
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as e:   # noqa: BLE001 — BadZipFile, EOFError, zlib.error, OSError, ...: any file at all
            print(f"warning: shadow: {path} is no saved score ({type(e).__name__}); the scores start afresh",
                  file=sys.stderr)
            return
        try:
            if (str(arrays.pop("live_bundle")), str(arrays.pop("candidate_bundle"))) != (self.live_id, self.cand_id):
                return
            self.missing = int(arrays.pop("missing", 0))
            for who, t in (("live", self.live), ("cand", self.cand)):
                t.restore({k[len(who) + 1:]: v for k, v in arrays.items() if k.startswith(who + "_")})
        except (OSError, ValueError, KeyError, TypeError, EOFError):
            return


def _mean(mae: list, n: list):
    """The MAE over every scored forecast, all steps weighted by their counts."""
    total = sum(n)
    return sum(m * c for m, c in zip(mae, n)) / total if total else None
