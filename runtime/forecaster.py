"""`Forecaster`: engine + scaler + state + input policy. Raw sensor units in, raw forecasts out."""
from __future__ import annotations

import math

import numpy as np

from .bundle import PRECISIONS, BundleError, check_artifact, read_manifest
from .derived import TIME_HELP, TimeError, derived_of, identity
from .engines import available_engines, open_engine
from .intervals import RETRAIN_WINDOW, IntervalTracker
from .lags import LagRing, padded
from .readings import SENTINELS
from .scaler import Scaler
from .state import StateFile
from .streams import StreamSeries

NAN_POLICIES = ("hold", "mean", "raise")
ENGINES = ("auto", "litert", "onnxruntime", "numpy")
# A reading beyond RANGE_SIGMAS training standard deviations from the training mean is counted
# as out of range and still used. One beyond REJECT_SIGMAS is no physical reading (a sensor's
# error sentinel such as -9999 or 65535, or float garbage such as 1e30): it is treated as
# missing under the nan_policy and counted, so every engine and precision gives the same
# forecast (a float graph would pass it through, an int8 graph would clip it, and LiteRT's float
# kernels overflow into NaN).
RANGE_SIGMAS = 6.0
REJECT_SIGMAS = 1000.0
# Bound once: each module attribute lookup costs about 20 ns, and a step is about 4 µs.
_asarray, _array, _subtract, _multiply, _abs, _f32 = np.asarray, np.array, np.subtract, np.multiply, np.abs, np.float32
_isfinite = math.isfinite
_CODES = np.asarray(SENTINELS, np.float32)


def choose_artifact(bundle: str, manifest: dict, engine: str, precision: str, streams: int) -> dict:
    """The artifact `load` opens: of this precision and stream count, among the wanted engines.

    `auto`: artifacts within their drift budget first (an artifact kept over budget with
    --allow-drift only as a last resort), then for one stream the fastest as measured when the
    bundle was built (manifest latency_us, B=1), then the installed order (litert, onnxruntime, numpy).
    """
    order = available_engines() if engine == "auto" else [engine]
    candidates = [a for a in manifest["artifacts"] if a["engine"] in order and a["precision"] == precision
                  and a.get("batch") in (None, streams)]
    measured = manifest.get("latency_us", {}) if streams == 1 else {}
    candidates.sort(key=lambda a: (bool(a.get("over_budget")), measured.get(a["file"], {}).get("p50", 0.0),
                                   order.index(a["engine"])))
    if not candidates:
        have = sorted({(a["engine"], a["precision"], a.get("batch")) for a in manifest["artifacts"]}, key=str)
        raise BundleError(f"{bundle}: no artifact for engine={engine} precision={precision} streams={streams} "
                          f"among {'the installed engines ' if engine == 'auto' else 'engine '}{order}; the bundle has "
                          f"(engine, precision, batch): {have}")
    return candidates[0]


class Forecaster(StateFile):
    """Streams readings through the GRU step, one call per time step for all streams.

    Example:
        >>> import runtime
        >>> fc = runtime.load("bundles/demo", engine="numpy")          # doctest: +SKIP
        >>> y = fc.step([20.0] * len(fc.features))                       # doctest: +SKIP
    """

    def __init__(self, bundle: str, manifest: dict, engine, artifact: dict, streams: int = 1,
                 nan_policy: str = "hold", range_sigmas: float = RANGE_SIGMAS, reject_sigmas: float = REJECT_SIGMAS,
                 intervals: bool = False, adapt_intervals: bool = True, retrain_window: int = RETRAIN_WINDOW,
                 deadband: bool = True):
        if nan_policy not in NAN_POLICIES:
            raise ValueError(f"unknown nan_policy '{nan_policy}'; expected one of {', '.join(NAN_POLICIES)}")
        if not 0 < range_sigmas <= reject_sigmas:
            raise ValueError(f"need 0 < range_sigmas <= reject_sigmas, got {range_sigmas} and {reject_sigmas}")
        md = manifest["model"]
        self.bundle, self.manifest, self.engine, self.artifact = bundle, manifest, engine, artifact
        self.target_index = target_index(manifest)
        self.streams, self.nan_policy, self.range_sigmas = streams, nan_policy, range_sigmas
        self.features = [f["name"] for f in manifest["features"]]     # the raw sensor columns of a reading
        self.derived = derived_of(manifest)                             # computed from each reading's time
        n_all = len(self.features) + (len(self.derived.names) if self.derived else 0)
        if engine.x.shape != (streams, n_all) or engine.h.shape != (md["num_layers"], streams, md["hidden_size"]):
            raise BundleError(f"{bundle}: engine buffers x{list(engine.x.shape)} h{list(engine.h.shape)} do not "
                              f"match {streams} stream(s) of {n_all} inputs and the manifest's state shape")
        # Many series (manifest `series`, format 6): each stream's series, None for the pooled scaler,
        # and per-stream tables of each series' own constants (runtime/streams.py).
        self._series, self._by_stream = manifest.get("series") or {}, StreamSeries(streams)
        self._add_scale_tables(len(self.features))
        self._engine, self._sigmas = engine, (range_sigmas, reject_sigmas)
        self._bind_inputs(engine, range_sigmas, reject_sigmas)
        # The deadband (runtime/residual.py): off for the self-test, which checks the graph itself.
        self._bind(engine, streams, md.get("residual_input"), md.get("deadband") if deadband else None)
        self._bind_base(engine, md.get("base"))
        self.reset()                  # the state lives in the engine's h buffer; hold starts at the mean
        self._steps = 0               # counted apart from the rest: one attribute add per step
        self._counts = {"imputed": 0, "rejected": 0, "out_of_range": 0, "state_resets": 0}
        self._tracker = self._interval_tracker(adapt_intervals, retrain_window) if intervals else None

    def _bind_inputs(self, engine, range_sigmas: float, reject_sigmas: float) -> None:
        """The input side's constants, folded ahead of time: x = (reading - offset) * inv_scale (times
        the engine's input gain), the range and reject bands, and the derived inputs' affine."""
        n_in = len(self.features)
        sc = Scaler.from_manifest(self.manifest)
        inv = (1.0 / sc.scale.astype(np.float64)).astype(np.float32)
        self._offset, self._inv_scale = sc.offset[:n_in], inv[:n_in]
        per = self._series_scales("inputs", n_in)
        # Derived inputs: normalized as (value - offset) * inv, times the engine's input gain (float64);
        # the cycles' from each reading's time, each stream's series identity (after them) when bound.
        gain_d = 1.0 if engine.input_gain is None else engine.input_gain[n_in:]
        affine = list(zip(sc.offset[n_in:].astype(np.float64).tolist(), (inv[n_in:] * gain_d).astype(np.float64).tolist()))
        c = len(self.derived.cycles) if self.derived else 0
        self._d_affine, self._id_affine = tuple(affine[:c]), np.asarray(affine[c:], np.float64).reshape(-1, 2)
        mean, std = training_statistics(self.manifest)
        if per is not None:                 # [I] (one stream) or [B, I]: each stream's series or pooled
            (mean, std), self._offset = per, per[0]
            self._inv_scale = (1.0 / per[1].astype(np.float64)).astype(np.float32)
        # In normalized input units: the band mean ± range_sigmas * std outside which a reading
        # counts as out of range, and the wider one beyond which it is rejected as missing.
        self._lo, self._hi = self._band(mean, std, range_sigmas)
        self._rej_lo, self._rej_hi = self._band(mean, std, reject_sigmas)
        self._norm_inv_scale = self._inv_scale          # normalized units, whatever the engine wants
        if engine.input_gain is not None:               # the engine's x is normalized * gain (> 0)
            g = engine.input_gain[:n_in]
            self._inv_scale, self._lo, self._hi, self._rej_lo, self._rej_hi = (
                v * g for v in (self._inv_scale, self._lo, self._hi, self._rej_lo, self._rej_hi))
        # Half-width of the largest box centred at 0 inside every feature's band (normalized units).
        self._safe_abs = float(np.min((self._hi - self._lo) / 2 - np.abs((self._hi + self._lo) / 2)))
        self._dev_mean = mean - self._offset

    def _add_scale_tables(self, n_in: int) -> None:
        """The per-stream scale tables: each row [2, n] the (offset, scale) of the raw inputs
        ('inputs', n = the raw features) or of the target ('targets', n = 1)."""
        for part, n in (("inputs", n_in), ("targets", 1)):
            self._by_stream.add(part, _scale_row(Scaler.from_manifest(self.manifest, part), n),
                                lambda sid, part=part, n=n: _scale_row(Scaler.from_dict(self._series[sid][part]), n))

    def _series_scales(self, part: str, n: int):
        """Per-stream (offset, scale) of `part` ('inputs': the raw features, 'targets'), float32 [n] for
        one stream or [B, n]; None while every stream uses the pooled scaler (the usual fast path)."""
        rows = self._by_stream.rows(part)
        if rows is None:
            return None
        off, scale = rows[:, 0, :n], rows[:, 1, :n]
        return (off[0], scale[0]) if self.streams == 1 else (off, scale)

    def series_of(self, stream: int):
        """The series `stream` forecasts as (set_series), or None: the pooled model."""
        return self._by_stream.ids[stream]

    def set_series(self, stream: int, series_id) -> bool:
        """Normalize `stream`'s readings and forecasts with series `series_id`'s own scaler (manifest
        `series`), or with the pooled one for None or a series the bundle does not know (returns
        False then). The stream's state is kept; its held reading restarts at the series' mean.

        Raises:
            ValueError: a stream index outside 0..streams-1.
        """
        if not isinstance(stream, int) or not 0 <= stream < self.streams:
            raise ValueError(f"stream {stream!r} is not one of 0..{self.streams - 1}")
        known = series_id is not None and str(series_id) in self._series
        new = str(series_id) if known else None
        if self._by_stream.ids[stream] != new:
            self._by_stream.set(stream, new)
            self._bind_inputs(self._engine, *self._sigmas)
            self._bind_output(self._engine)
            self._bind_tau()
            self._bind_identity((stream,))
            if self._lags is not None:
                self._lags.bind()
            n = len(self.features)
            self._dev_prev.reshape(self.streams, -1)[stream] = np.broadcast_to(self._dev_mean, (self.streams, n))[stream]
        return known

    @property
    def series(self) -> list:
        """Each stream's series (manifest `series`), None where it uses the pooled scaler."""
        return list(self._by_stream.ids)

    def _interval_tracker(self, adapt: bool, window: int) -> IntervalTracker:
        m = self.manifest
        if not m.get("intervals"):
            raise BundleError(f"{self.bundle}: the bundle has no forecast intervals (exported before they existed); "
                              "export it again, or load it with intervals=False")
        tracker = IntervalTracker(m, self.streams, self.target_index, adapt=adapt, retrain_window=window)
        tracker.scale[:] = self.interval_scale
        return tracker

    @property
    def interval_scale(self) -> np.ndarray:
        """[streams]: each stream's target scale over the pooled one (its series', 1 for the pooled
        scaler), what a many-series bundle's interval offsets are multiplied by (runtime/intervals.py)."""
        pooled = float(Scaler.from_manifest(self.manifest, "targets").scale[0])
        return np.broadcast_to(np.reshape(np.asarray(self._s, np.float64), -1) / pooled, (self.streams,)).copy()

    @property
    def stats(self) -> dict:
        """Counters (steps, imputed, rejected, out_of_range, state_resets); with intervals on, also
        `score`: the running MAE of the model and of persistence per horizon step, realized
        coverage per level, the adapted miscoverage, and `retrain` (worse than persistence)."""
        out = {"steps": self._steps, **self._counts}
        if self._tracker is not None:
            out["score"] = self._tracker.score()
        return out

    @property
    def tracker(self) -> IntervalTracker | None:
        """The interval tracker (runtime/intervals.py) with intervals on, else None: read it, do not step it."""
        return self._tracker

    @property
    def bounds(self) -> dict:
        """{level: (lower, upper)} for the last forecast, each shaped like it ({} with intervals off)."""
        return self._tracker.bounds if self._tracker is not None else {}

    def _band(self, mean, std, sigmas):
        return ((mean - sigmas * std - self._offset) * self._inv_scale,
                (mean + sigmas * std - self._offset) * self._inv_scale)

    def _bind(self, engine, streams: int, j, tau) -> None:
        """Views of the engine's bound buffers, and the output side's constants `step` uses on them."""
        n_in = len(self.features)
        # The step works in the engine's bound buffers, viewed without the stream axis for one stream.
        single = self._single = streams == 1
        self._shape = (n_in,) if single else (streams, n_in)
        self._x = engine.x[0, :n_in] if single else engine.x[:, :n_in]
        c = n_in + len(self._d_affine)
        self._x_derived = engine.x[0, n_in:c] if single else engine.x[:, n_in:c]   # [C] or [B, C]: one time for all
        self._x_identity = engine.x[:, c:]                                      # [B, N]: each stream's series
        self._needs_time = self.derived is not None and self.derived.needs_time
        self._bind_identity()
        self._y = engine.y[0] if single else engine.y
        self._invoke, self._h, self._h_next = engine.invoke, engine.h, engine.h_next
        self._h_next_flat = engine.h_next.reshape(-1)
        self._level_input = j
        self._bind_output(engine)
        self._x_level = engine.x[:, self._j:self._j + 1]                 # [B, 1], several streams
        self._pooled_tau = tau if j is not None and tau else None
        if self._pooled_tau is not None:            # (the self-test runs without any deadband)
            self._by_stream.add("deadband", self._pooled_tau, lambda sid: self._series[sid].get("deadband") or None)
        self._bind_tau()
        # reading - offset, before scaling: this step's and the last good one (for nan_policy='hold').
        self._dev, self._dev_prev = np.zeros(self._shape, np.float32), np.zeros(self._shape, np.float32)

    def _bind_identity(self, streams=None) -> None:
        """Each stream's series identity inputs (runtime/derived.identity, format 9), normalized: its
        own series' one-hot, or the average of the known series for a pooled stream; of `streams` only."""
        if not len(self._id_affine):
            return
        off, inv = self._id_affine[:, 0], self._id_affine[:, 1]
        for b in range(self.streams) if streams is None else streams:
            self._x_identity[b] = (np.asarray(identity(self.derived.ids, self._by_stream.ids[b])) - off) * inv

    def _bind_tau(self) -> None:
        """The deadband's thresholds: the model's (`_tau` [O]), or [B, O] once a stream's series has its
        own (manifest `series.<id>.deadband`, format 8; the rest keep the model's); `_taus` for one stream."""
        k, pooled, rows = self._y.shape[-1], self._pooled_tau, self._by_stream.rows("deadband")
        if rows is not None:
            self._tau = rows[0] if self._single else rows
        else:
            self._tau = np.asarray(pooled, np.float32) if pooled else None
        self._taus = tuple(self._tau.reshape(-1, k)[0].tolist()) if self._tau is not None else (0.0,) * k

    def _bind_output(self, engine) -> None:
        """The output side's constants: floats, or [B, 1] per stream once a stream has its series.

        runtime.residual.forecast, denormalized: (level + deadband(y)) * scale + offset
        = deadband(y) * scale + (x[j] * k + offset), k = scale / (x[j]'s input gain); no level: k = 0."""
        j, out_sc = self._level_input, Scaler.from_manifest(self.manifest, "targets")
        scale, offset = float(out_sc.scale[0]), float(out_sc.offset[0])
        per = self._series_scales("targets", 1)
        if per is not None:
            offset, scale = (float(per[0][0]), float(per[1][0])) if self.streams == 1 else per
        gain_j = 1.0 if j is None or engine.input_gain is None else float(engine.input_gain[j])
        self._j, self._k, self._out_offset = (0, 0.0 * scale, offset) if j is None else (j, scale / gain_j, offset)
        self._s = scale
        self._out_scale = np.ones(self._y.shape[-1], np.float32) * np.asarray(scale, np.float32)
        if getattr(self, "_tracker", None) is not None:        # (none yet while __init__ runs)
            self._tracker.scale[:] = self.interval_scale

    def _bind_base(self, engine, base) -> None:
        """An AR base (manifest `model.base`, runtime/lags.py): `_lags`, each stream's ring of its last p
        normalized levels, p the longest of the model's and its series' own bases (`series.<id>.base`,
        format 10); None for a level model."""
        self._lags = None
        if not base:
            return
        own = {sid: s["base"] for sid, s in self._series.items() if s.get("base")}
        p = max(len(b) - 1 for b in (base, *own.values()))
        self._by_stream.add("base", padded(base, p), lambda sid: padded(own[sid], p) if sid in own else None)
        self._lags = LagRing(self.streams, padded(base, p), lambda: self._by_stream.rows("base"))
        gain = 1.0 if engine.input_gain is None else float(engine.input_gain[self._j])
        self._level_inv_gain = np.float32(1.0 / gain)
        self._level = np.zeros((self.streams, 1), np.float32)

    # -- the step -----------------------------------------------------------------------------
    def step(self, reading, time=None) -> np.ndarray:
        """One reading per stream (raw units) → the forecast in raw units, [O] or [streams, O].

        time: when the reading was taken (a datetime, an ISO 8601 string or epoch seconds; one
        for all streams). Needed by bundles with calendar inputs (`fc.derived.needs_time`), ignored by others.

        Raises:
            ValueError: a reading of the wrong shape, a missing or unparsable `time` where the
                bundle needs one, or a bad reading under nan_policy='raise'.
        """
        r = _asarray(reading, dtype=_f32)
        if r.shape != self._shape:
            return self._step_reshaped(r, time)
        if self._needs_time:
            self._set_derived(time)
        x, dev, safe = self._x, self._dev, self._safe_abs
        _subtract(r, self._offset, out=dev)
        _multiply(dev, self._inv_scale, out=x)           # straight into the engine's input
        # The usual path is in the box [-safe, safe] that fits inside every feature's band; NaN
        # fails the test too (argmax finds the first NaN). Otherwise the exact per-feature check.
        bad = None
        if not (x.item(x.argmax()) <= safe and x.item(x.argmin()) >= -safe):
            bad = self._check_inputs(x, dev, r)
        lags = self._lags
        if lags is not None:
            _multiply(self._x_level, self._level_inv_gain, out=self._level)       # [B, 1] normalized
            base = lags.push(self._level)
        self._invoke()
        if lags is not None:
            out = self._forecast_base(base)
        else:
            out = self._forecast_one() if self._single else self._forecast_many()
        hn = self._h_next_flat
        if not _isfinite(hn.dot(hn)):           # h is in [-1, 1]: the square sum cannot overflow
            self._reset_bad_streams(out)
        self._h[...] = self._h_next             # (a slice assignment: about half of np.copyto's cost)
        self._dev, self._dev_prev = self._dev_prev, dev     # the last good reading, for 'hold'
        self._steps += 1
        if self._tracker is not None:
            self._track(r, bad, out)
        return out

    def _forecast_one(self) -> np.ndarray:
        """One stream: runtime.residual.forecast, denormalized, on Python floats (O is small,
        and each numpy call costs more than the loop): level + deadband(change), times scale + offset."""
        c = self._x.item(self._j) * self._k + self._out_offset      # level * scale + offset (k = 0: no level)
        s = self._s
        return _array([(0.0 if -t < v < t else v) * s + c for v, t in zip(self._y.tolist(), self._taus)], _f32)

    def _forecast_many(self) -> np.ndarray:
        """Several streams: runtime.residual.forecast, denormalized, in numpy on [B, O]."""
        y = self._y
        if self._tau is not None:               # the graph's change, normalized: small ones become 0
            y[_abs(y) < self._tau] = 0.0
        out = y * self._out_scale
        out += self._x_level * self._k + self._out_offset
        return out

    def _forecast_base(self, fc: np.ndarray) -> np.ndarray:
        """runtime.residual.forecast with an AR base [B, O] (added to in place), denormalized: base + the
        graph's change, and the level where that forecast's change from the level is below the deadband."""
        fc += self._y.reshape(fc.shape)
        if self._tau is not None:
            np.copyto(fc, self._level, where=_abs(fc - self._level) < self._tau)
        out = fc * self._out_scale
        out += self._out_offset
        return out[0] if self._single else out

    def _track(self, r: np.ndarray, bad, out: np.ndarray) -> None:
        """Score and bound: the target's reading is the truth, unless the input policy imputed it
        (missing, or a sentinel such as -9999 beyond the reject band): that truth is no truth."""
        col = self.target_index
        truth = np.nan if col is None else r[..., col]
        if bad is not None and col is not None:
            truth = np.where(bad[..., col], np.nan, truth)
        self._tracker.update(truth, out)

    def _set_derived(self, time) -> None:
        if time is None:
            raise TimeError(f"this bundle's model also takes {', '.join(d['name'] for d in self.derived.cycles)}, computed from each "
                             f"reading's time: call step(reading, time=t) with {TIME_HELP}")
        # (value - offset) * inv on Python floats (float64, as before): cheaper than two numpy calls for D ~ 4
        self._x_derived[...] = [(v - o) * i for v, (o, i) in zip(self.derived.time_values(time).tolist(), self._d_affine)]

    def _step_reshaped(self, r: np.ndarray, time) -> np.ndarray:
        if self.streams == 1 and r.shape == (1,) + self._shape:
            return self.step(r[0], time)[None]
        raise ValueError(f"reading has shape {r.shape}; expected {len(self.features)} values "
                         f"(or [{self.streams}, {len(self.features)}]) in this order: {', '.join(self.features)}")

    def _check_inputs(self, x: np.ndarray, dev: np.ndarray, r: np.ndarray) -> np.ndarray:
        """The rare path: missing (non-finite, beyond the reject band, or a logger's no-reading code
        outside the range band: readings.SENTINELS) cells go through the NaN policy; cells outside the
        range band are counted. Returns the imputed cells' mask."""
        finite = np.isfinite(x)
        outside = (x < self._lo) | (x > self._hi)
        absurd = finite & ((x < self._rej_lo) | (x > self._rej_hi) | (outside & np.isin(r, _CODES)))
        bad = ~finite | absurd
        if bad.any():
            if self.nan_policy == "raise":
                cols = sorted({self.features[j] for j in np.nonzero(bad)[-1]})
                raise ValueError(f"non-finite or absurd reading for {', '.join(cols)} (nan_policy='raise')")
            fill = self._dev_prev if self.nan_policy == "hold" else np.broadcast_to(self._dev_mean, dev.shape)
            dev[bad] = fill[bad]
            np.multiply(dev, self._inv_scale, out=x)
            self._counts["imputed"] += int(bad.sum())
            self._counts["rejected"] += int(absurd.sum())
        self._counts["out_of_range"] += int(np.count_nonzero((x < self._lo) | (x > self._hi)))
        return bad

    def _reset_bad_streams(self, out: np.ndarray) -> None:
        """Never carry a non-finite state: zero those streams' state and forecast NaN; count them."""
        h_next = self._h_next
        bad = ~np.isfinite(h_next).all(axis=(0, 2))                          # [B]
        h_next[:, bad] = 0.0
        out.reshape(self.streams, -1)[bad] = np.nan
        if self._lags is not None:
            self._lags.restart(bad)
        self._counts["state_resets"] += int(bad.sum())

    def reset(self, stream=None) -> None:
        """Zero the state (and the held readings, and the interval tracker's pending forecasts) of
        every stream, or of one."""
        sel = slice(None) if stream is None else stream
        self._h[:, sel] = 0.0
        if self._lags is not None:
            self._lags.restart(sel)
        self._dev_prev.reshape(self.streams, -1)[sel] = np.broadcast_to(
            self._dev_mean, (self.streams, len(self.features)))[sel]
        if getattr(self, "_tracker", None) is not None:      # (none yet while __init__ runs)
            self._tracker.reset_stream(sel)

    @property
    def state(self) -> np.ndarray:
        return self._h.copy()

    @state.setter
    def state(self, value) -> None:
        v = np.asarray(value, np.float32)
        if v.shape != self._h.shape:
            raise ValueError(f"state must be float32 {list(self._h.shape)} (layers, streams, hidden); "
                             f"got shape {list(v.shape)}")
        if not np.isfinite(v).all():
            raise ValueError(f"state has {int(np.count_nonzero(~np.isfinite(v)))} non-finite value(s)")
        if np.abs(v).max(initial=0.0) > 1.0:
            raise ValueError(f"state has |h| up to {float(np.abs(v).max()):.3g}; a GRU state lies in [-1, 1]")
        np.copyto(self._h, v)

    def adopt_state(self, other: "Forecaster") -> None:
        """Continue from `other`'s streams (the same model on the same ticks, e.g. a promoted shadow):
        its GRU state, and its AR base's lags when this model keeps as many (else they start fresh)."""
        self.state = other.state
        if self._lags is not None and other._lags is not None:
            self._lags.adopt(other._lags)


def _scale_row(sc: Scaler, n: int) -> np.ndarray:
    """A scaler's first n (offset, scale) as one [2, n] float32 row of a per-stream table."""
    return np.stack([sc.offset[:n], sc.scale[:n]])


def step_rows(fc: Forecaster, readings, times=None, bounds: bool = False):
    """The Forecaster's stepping loop: readings [T, I_raw] (or [T, streams, I_raw]) stepped in order
    through `fc.step`, state carried; returns the forecasts [T, O] (or [T, streams, O]).

    engines.run_stream's counterpart for raw readings: the input policy, calendar inputs (times [T]
    where the bundle needs them), deadband and intervals included. Every caller that steps a
    Forecaster over a sequence uses it. bounds: also return {level: (lower, upper)}, each shaped
    like the forecasts (the forecaster needs intervals on).
    """
    times = [None] * len(readings) if times is None else np.asarray(times, np.float64).tolist()
    out, lows, highs = [], {}, {}
    for r, t in zip(readings, times):
        out.append(fc.step(r, t))
        if bounds:
            for lv, (lo, hi) in fc.bounds.items():
                lows.setdefault(lv, []).append(lo), highs.setdefault(lv, []).append(hi)
    ys = np.stack(out) if out else np.zeros((0,) + fc.engine.y.shape[fc.streams == 1:], np.float32)
    return (ys, {lv: (np.stack(lows[lv]), np.stack(highs[lv])) for lv in lows}) if bounds else ys


def target_index(manifest: dict):
    """The target's column among the raw inputs (its reading is the truth the intervals score, and the
    level of a residual model), or None when the target is not an input."""
    j = manifest["model"].get("residual_input")
    if j is not None:
        return j
    names = [f["name"] for f in manifest["features"]]
    target = manifest["targets"][0]["name"]
    return names.index(target) if target in names else None


def training_statistics(manifest: dict):
    """Per-feature training mean and std, float32 [I] each: the standard scaler's offset and scale.

    (Version 1 manifests also listed them per feature; they are read from there when present.)
    """
    feats = manifest["features"]
    if all("train_mean" in f and "train_std" in f for f in feats):
        return (np.asarray([f["train_mean"] for f in feats], np.float32),
                np.asarray([f["train_std"] for f in feats], np.float32))
    sc = Scaler.from_manifest(manifest)
    return sc.offset[:len(feats)], sc.scale[:len(feats)]


def load(bundle: str, engine: str = "auto", precision: str = "fp32", streams: int = 1,
         nan_policy: str = "hold", range_sigmas: float = RANGE_SIGMAS, threads: int = 1,
         reject_sigmas: float = REJECT_SIGMAS, intervals: bool = False, adapt_intervals: bool = True,
         retrain_window: int = RETRAIN_WINDOW, deadband: bool = True, series=None) -> Forecaster:
    """Open a bundle and return a ready `Forecaster`.

    series: for a bundle trained on many series (manifest `series`), each stream's series id
    (Forecaster.set_series; None or an unknown id: the pooled scaler).

    intervals: also give lower and upper bounds (`fc.bounds`, after each step) and keep a
    running score against the truths as they arrive (`fc.stats["score"]`); adapt_intervals:
    adaptive conformal inference on top of the bundle's split-conformal intervals. deadband:
    forecast no change where the model's change is below the bundle's per-step threshold
    (manifest `model.deadband`, format 4; `verify` turns it off to test the graph itself).

        >>> fc = runtime.load("bundles/demo", intervals=True)            # doctest: +SKIP
        >>> y = fc.step(reading); lo, hi = fc.bounds[0.8]                 # doctest: +SKIP

    Raises:
        BundleError: unknown format, checksum mismatch, missing artifact, shapes that disagree.
        ValueError: an unknown engine, precision or policy.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine '{engine}'; expected one of {', '.join(ENGINES)}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision '{precision}'; expected one of {', '.join(PRECISIONS)}")
    if streams < 1:
        raise ValueError(f"streams must be >= 1, got {streams}")
    manifest = read_manifest(bundle)
    art = choose_artifact(bundle, manifest, engine, precision, streams)
    eng = open_engine(check_artifact(bundle, art), art, manifest["model"], streams, threads)
    if series is not None and len(series) != streams:
        raise ValueError(f"series lists {len(series)} series for {streams} stream(s); expected one per stream")
    fc = Forecaster(bundle, manifest, eng, art, streams, nan_policy, range_sigmas, reject_sigmas,
                    intervals, adapt_intervals, retrain_window, deadband)
    for stream, sid in enumerate(series or ()):
        fc.set_series(stream, sid)
    return fc
