"""Forecast intervals on the device, and a running score against the truths as they arrive.

The bundle carries, per horizon step, quantiles of the float model's signed validation errors
(truth - forecast, streamed; export/conformal.py). A split-conformal interval at level 1 - a is
[forecast + Q(a/2), forecast + Q(1 - a/2)]. Because the target is one of the inputs, the truth for
the step-k forecast made at t - k arrives at t: the tracker scores every forecast then (MAE of the
model and of persistence per horizon step, realized coverage per level) and adapts each level's
miscoverage rate with adaptive conformal inference (Gibbs & Candès, NeurIPS 2021):

    a_{t+1} = clip(a_t + gamma * (a - miss_t), 0, 1)          miss_t = 1 if the truth fell outside

so the intervals widen after misses (a level shift, a sensor drifting) and narrow back after. The
clip is how ACI is usually run: unclipped, a noisy stretch drove a below -3, and the interval
stayed at its widest for thousands of steps after the noise had ended (a = 0 already is the
widest interval the quantile grid gives). The whole tracker travels with the forecaster's state
(`state_arrays` / `restore`), so a restart neither forgets a nor the score.

A bundle of many series (manifest `series`, format 6) stores the quantiles in the pooled target's
scale: export/conformal.py divides each series' errors by its own target scale and multiplies them
by the pooled one, and a stream of that series multiplies the offsets back (`scale`, [S]: the
stream's target scale over the pooled one, 1 for the pooled scaler). So a car park of 2,000
spaces gets intervals ten times as wide as one of 200 from the same model.
"""
from __future__ import annotations

import math

import numpy as np

ACI_GAMMA = 0.005          # the step size; Gibbs & Candès use 0.005 for their stock/election data
RETRAIN_WINDOW = 1000      # scored steps over which a model worse than persistence raises `retrain`


def quantile_grid(manifest: dict):
    """(probabilities [P], signed-error quantiles [K, P]) from the manifest's intervals section."""
    iv = manifest["intervals"]
    return np.asarray(iv["probs"], np.float64), np.asarray(iv["error_quantiles"], np.float64)


class IntervalTracker:
    """Bounds for each new forecast, scored and adapted as the truths arrive. Arrays [S, K]."""

    def __init__(self, manifest: dict, streams: int, target_index, gamma: float = ACI_GAMMA,
                 adapt: bool = True, retrain_window: int = RETRAIN_WINDOW):
        self.probs, self.quantiles = quantile_grid(manifest)
        self.levels = [float(v) for v in manifest["intervals"]["levels"]]
        k = self.quantiles.shape[0]
        self.streams, self.horizon, self.j = streams, k, target_index
        self.gamma, self.adapt, self.window = gamma, adapt, retrain_window
        self.scale = np.ones(streams)          # each stream's target scale over the pooled one (many series)
        self.reset()

    def reset_stream(self, s) -> None:
        """A stream (an index, or a slice of them) starts afresh: handed to a new sensor, or after a
        clock jump. Its pending forecasts and adapted rates go; the running scores are totals over
        every stream and stay."""
        for lv in self.levels:
            self.alpha[lv][s] = 1.0 - lv
            self._lo[lv][:, s], self._hi[lv][:, s] = np.nan, np.nan
        self._fc[:, s], self._origin[:, s] = np.nan, np.nan

    def reset(self) -> None:
        """Forget every forecast, score and adaptation: the tracker as a fresh forecaster starts it."""
        k, streams = self.horizon, self.streams
        self.alpha = {lv: np.full((streams, k), 1.0 - lv) for lv in self.levels}     # adapted miscoverage
        # Ring buffers of the last K forecasts, their bounds, and the target's value at each origin.
        self._fc = np.full((k, streams, k), np.nan)
        self._lo = {lv: np.full((k, streams, k), np.nan) for lv in self.levels}
        self._hi = {lv: np.full((k, streams, k), np.nan) for lv in self.levels}
        self._origin = np.full((k, streams), np.nan)
        self._t = 0
        self.bounds = {}
        self._sum = {"n": np.zeros(k), "model_ae": np.zeros(k), "persistence_ae": np.zeros(k),
                     **{f"hit{lv}": np.zeros(k) for lv in self.levels}}
        self._recent = []        # (model AE, persistence AE) means of the last scored steps

    @property
    def pending(self) -> np.ndarray:
        """The last K forecasts, not all scored yet, [K (ring slot), S, K]; NaN where a slot holds none."""
        return self._fc

    def _offsets(self, a: np.ndarray):
        """Lower/upper error offsets [S, K] for miscoverage rates a [S, K] (clipped to the grid)."""
        lo = np.empty_like(a)
        hi = np.empty_like(a)
        for k in range(self.horizon):
            lo[:, k] = np.interp(np.clip(a[:, k] / 2, 0, 1), self.probs, self.quantiles[k])
            hi[:, k] = np.interp(np.clip(1 - a[:, k] / 2, 0, 1), self.probs, self.quantiles[k])
        return lo * self.scale[:, None], hi * self.scale[:, None]

    def update(self, target_now, forecast: np.ndarray) -> None:
        """Score the forecasts whose truth is `target_now` [S] (NaN: unknown), then bound `forecast` [S, K]."""
        truth = np.asarray(target_now, np.float64).reshape(self.streams)
        if self.j is not None and np.isfinite(truth).any():
            self._score(truth)
        slot = self._t % self.horizon
        f = np.asarray(forecast, np.float64).reshape(self.streams, self.horizon)
        self._fc[slot], self._origin[slot] = f, truth
        self.bounds = {}
        for lv in self.levels:
            lo, hi = self._offsets(self.alpha[lv])
            self._lo[lv][slot], self._hi[lv][slot] = f + lo, f + hi
            self.bounds[lv] = self._shaped(f + lo), self._shaped(f + hi)
        self._t += 1

    def _shaped(self, v: np.ndarray) -> np.ndarray:
        return v[0].astype(np.float32) if self.streams == 1 else v.astype(np.float32)

    def _score(self, truth: np.ndarray) -> None:
        """The step-k forecast made k steps ago meets its truth now, for k = 1..K."""
        ok = np.isfinite(truth)
        model_ae, pers_ae = [], []
        for k in range(1, min(self.horizon, self._t) + 1):
            slot = (self._t - k) % self.horizon
            f, origin = self._fc[slot][:, k - 1], self._origin[slot]
            valid = ok & np.isfinite(f) & np.isfinite(origin)
            if not valid.any():
                continue
            s = self._sum
            s["n"][k - 1] += valid.sum()
            s["model_ae"][k - 1] += np.abs(truth - f)[valid].sum()
            s["persistence_ae"][k - 1] += np.abs(truth - origin)[valid].sum()
            model_ae.append(np.abs(truth - f)[valid].mean()), pers_ae.append(np.abs(truth - origin)[valid].mean())
            for lv in self.levels:
                inside = (self._lo[lv][slot][:, k - 1] <= truth) & (truth <= self._hi[lv][slot][:, k - 1])
                s[f"hit{lv}"][k - 1] += inside[valid].sum()
                if self.adapt:
                    miss = (~inside).astype(np.float64)
                    a = self.alpha[lv][:, k - 1]
                    a[valid] += self.gamma * ((1.0 - lv) - miss[valid])
                    np.clip(a, 0.0, 1.0, out=a)
        if model_ae:
            self._recent.append((float(np.mean(model_ae)), float(np.mean(pers_ae))))
            if len(self._recent) > self.window:
                del self._recent[0]

    def score(self) -> dict:
        """Per horizon step: scored count, model and persistence MAE, coverage per level; `retrain`."""
        s, n = self._sum, np.maximum(self._sum["n"], 1)
        recent = np.asarray(self._recent) if self._recent else np.zeros((0, 2))
        worse = bool(len(recent) >= self.window and recent[:, 0].mean() > recent[:, 1].mean())
        return {"scored": [int(v) for v in s["n"]],
                "mae": [float(v) for v in s["model_ae"] / n],
                "persistence_mae": [float(v) for v in s["persistence_ae"] / n],
                "coverage": {str(lv): [float(v) for v in s[f"hit{lv}"] / n] for lv in self.levels},
                "alpha": {str(lv): [float(v) for v in self.alpha[lv].mean(axis=0)] for lv in self.levels},
                "retrain": worse, "retrain_window": self.window,
                "recent_mae": float(recent[:, 0].mean()) if len(recent) else math.nan,
                "recent_persistence_mae": float(recent[:, 1].mean()) if len(recent) else math.nan}

    # -- the tracker in the forecaster's state file ---------------------------------------------
    def _sum_keys(self) -> list:
        return ["n", "model_ae", "persistence_ae"] + [f"hit{lv}" for lv in self.levels]

    def state_arrays(self) -> dict:
        """Everything the tracker has learned, as arrays named `iv_*` (stored by `Forecaster.save_state`).

        Shapes: levels [L], t [], alpha [L, S, K], fc [K, S, K], lo/hi [L, K, S, K], origin [K, S],
        sum [3 + L, K] (n, model_ae, persistence_ae, hit per level), recent [R, 2].
        """
        lv = self.levels
        return {"iv_levels": np.asarray(lv, np.float64), "iv_t": np.asarray(self._t, np.int64),
                "iv_alpha": np.stack([self.alpha[v] for v in lv]), "iv_fc": self._fc.copy(),
                "iv_lo": np.stack([self._lo[v] for v in lv]), "iv_hi": np.stack([self._hi[v] for v in lv]),
                "iv_origin": self._origin.copy(), "iv_sum": np.stack([self._sum[k] for k in self._sum_keys()]),
                "iv_recent": np.asarray(self._recent, np.float64).reshape(-1, 2)}

    def restore(self, arrays: dict) -> None:
        """Take back what `state_arrays` gave, all or nothing. With adapt off, a stays nominal.

        Raises:
            ValueError: a missing field, another shape or level set, or values no tracker holds.
        """
        want = self.state_arrays()
        got = {}
        for name, ref in want.items():
            if name not in arrays:
                raise ValueError(f"the interval state lacks {name}")
            v = np.asarray(arrays[name])
            if (v.shape != ref.shape and name != "iv_recent") or (name == "iv_recent" and v.shape[1:] != (2,)):
                raise ValueError(f"the interval state's {name} has shape {list(v.shape)}; expected {list(ref.shape)}")
            got[name] = v.astype(ref.dtype)
        if not np.array_equal(got["iv_levels"], want["iv_levels"]):
            raise ValueError(f"the interval state has levels {got['iv_levels'].tolist()}; this bundle {self.levels}")
        for name in ("iv_t", "iv_alpha", "iv_sum", "iv_recent"):
            if not np.isfinite(got[name]).all() or (name in ("iv_t", "iv_sum") and (got[name] < 0).any()):
                raise ValueError(f"the interval state's {name} holds values no tracker holds (non-finite or negative)")
        self._assign(got)

    def _assign(self, got: dict) -> None:
        self._t = int(got["iv_t"])
        self._fc, self._origin = got["iv_fc"], got["iv_origin"]
        for i, lv in enumerate(self.levels):
            if self.adapt:
                self.alpha[lv] = np.clip(got["iv_alpha"][i], 0.0, 1.0)
            self._lo[lv], self._hi[lv] = got["iv_lo"][i], got["iv_hi"][i]
        self._sum = dict(zip(self._sum_keys(), got["iv_sum"].copy()))
        self._recent = [(float(m), float(p)) for m, p in got["iv_recent"][-self.window:]]
        last = (self._t - 1) % self.horizon                # the bounds of the last forecast made
        self.bounds = {} if self._t == 0 else {lv: (self._shaped(self._lo[lv][last]), self._shaped(self._hi[lv][last]))
                                               for lv in self.levels}
