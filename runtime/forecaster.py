"""`Forecaster`: engine + scaler + state + input policy. Raw sensor units in, raw forecasts out."""
from __future__ import annotations

import math
import os
import tempfile

import numpy as np

from .bundle import BundleError, check_artifact, load_weights, read_manifest
from .engines import LiteRTEngine, NumpyEngine, OnnxEngine, available_engines

NAN_POLICIES = ("hold", "mean", "raise")
ENGINES = ("auto", "litert", "onnxruntime", "numpy")
# Bound once: each module attribute lookup costs about 20 ns, and a step is about 4 µs.
_asarray, _subtract, _multiply, _abs, _copyto, _f32 = np.asarray, np.subtract, np.multiply, np.abs, np.copyto, np.float32
_isfinite = math.isfinite


def _make_engine(bundle, manifest, engine, precision, streams, threads):
    """The engine for the best artifact of this precision and batch (see the ordering below)."""
    md = manifest["model"]
    order = available_engines() if engine == "auto" else [engine]
    candidates = [a for a in manifest["artifacts"] if a["engine"] in order and a["precision"] == precision
                  and a.get("batch") in (None, streams)]
    # `auto`: for one stream the fastest as measured when the bundle was built (manifest latency_us,
    # B=1), else the installed order (litert, onnxruntime, numpy); artifacts kept over their drift
    # budget (--allow-drift) only as a last resort.
    measured = manifest.get("latency_us", {}) if streams == 1 else {}
    candidates.sort(key=lambda a: (bool(a.get("over_budget")), measured.get(a["file"], {}).get("p50", 0.0),
                                   order.index(a["engine"])))
    if not candidates:
        have = sorted({(a["engine"], a["precision"], a.get("batch")) for a in manifest["artifacts"]}, key=str)
        raise BundleError(f"{bundle}: no artifact for engine={engine} precision={precision} streams={streams} "
                          f"among {'the installed engines ' if engine == 'auto' else 'engine '}{order}; the bundle has "
                          f"(engine, precision, batch): {have}")
    art = candidates[0]
    return open_engine(check_artifact(bundle, art), art, md, streams, threads), art


def open_engine(path: str, art: dict, md: dict, batch: int, threads: int = 1):
    """The engine for one artifact file, given the manifest's model section and the batch size."""
    if art["engine"] == "numpy":
        return NumpyEngine(load_weights(path, md), md["num_layers"], md.get("residual_input"), batch)
    if art["engine"] == "onnxruntime":
        return OnnxEngine(path, batch, (md["num_layers"], batch, md["hidden_size"]), md["output_size"], threads,
                          md.get("residual_input"))
    return LiteRTEngine(path, threads, art["precision"], md.get("residual_input"))


class Forecaster:
    """Streams readings through the GRU step, one call per time step for all streams.

    Example:
        >>> import runtime
        >>> fc = runtime.load("bundles/demo", engine="numpy")          # doctest: +SKIP
        >>> y = fc.step([20.0] * len(fc.features))                       # doctest: +SKIP
    """

    def __init__(self, bundle: str, manifest: dict, engine, artifact: dict, streams: int = 1,
                 nan_policy: str = "hold", range_sigmas: float = 6.0):
        if nan_policy not in NAN_POLICIES:
            raise ValueError(f"unknown nan_policy '{nan_policy}'; expected one of {', '.join(NAN_POLICIES)}")
        md = manifest["model"]
        self.bundle, self.manifest, self.engine, self.artifact = bundle, manifest, engine, artifact
        self.streams, self.nan_policy, self.range_sigmas = streams, nan_policy, range_sigmas
        self.features = [f["name"] for f in manifest["features"]]
        n_in = len(self.features)
        if engine.x.shape != (streams, n_in) or engine.h.shape != (md["num_layers"], streams, md["hidden_size"]):
            raise BundleError(f"{bundle}: engine buffers x{list(engine.x.shape)} h{list(engine.h.shape)} do not "
                              f"match {streams} stream(s) of {n_in} features and the manifest's state shape")
        sc = manifest["scaler"]
        self._offset = np.asarray(sc["inputs"]["offset"], np.float32)
        self._inv_scale = (1.0 / np.asarray(sc["inputs"]["scale"], np.float64)).astype(np.float32)
        mean = np.asarray([f["train_mean"] for f in manifest["features"]], np.float32)
        std = np.asarray([f["train_std"] for f in manifest["features"]], np.float32)
        # In normalized input units: the band mean ± range_sigmas * std outside which a reading
        # counts as out of range.
        self._lo = ((mean - range_sigmas * std - self._offset) * self._inv_scale).astype(np.float32)
        self._hi = ((mean + range_sigmas * std - self._offset) * self._inv_scale).astype(np.float32)
        # Half-width of the largest box centred at 0 inside every feature's band (normalized units).
        self._safe_abs = float(np.min((self._hi - self._lo) / 2 - np.abs((self._hi + self._lo) / 2)))
        # The step works in the engine's bound buffers, viewed without the stream axis for one stream.
        single = streams == 1
        self._shape = (n_in,) if single else (streams, n_in)
        self._x = engine.x[0] if single else engine.x
        self._y = engine.y[0] if single else engine.y
        self._invoke, self._h, self._h_next = engine.invoke, engine.h, engine.h_next
        self._h_next_flat = engine.h_next.reshape(-1)
        # forecast = (y + x[target]) * scale + offset for residual models, y * scale + offset else:
        # out = y * scale, then += x[j] * k + offset with k = scale (residual) or 0 (one scalar
        # add for one stream, where a Python float costs less than another array operation).
        j = md.get("residual_input")
        scale, offset = float(sc["targets"]["scale"][0]), float(sc["targets"]["offset"][0])
        self._j, self._k, self._out_offset = (0, 0.0, offset) if j is None else (j, scale, offset)
        self._x_level = engine.x[:, self._j:self._j + 1]                 # [B, 1], several streams
        self._out_scale = np.full(self._y.shape[-1], scale, np.float32)
        # reading - offset, before scaling: this step's and the last good one (for nan_policy='hold').
        self._dev, self._dev_prev = np.zeros(self._shape, np.float32), np.zeros(self._shape, np.float32)
        self._dev_mean = mean - self._offset
        self._abs = np.zeros(self._shape, np.float32)
        self.reset()                  # the state lives in the engine's h buffer; hold starts at the mean
        self.stats = {"steps": 0, "imputed": 0, "out_of_range": 0, "state_resets": 0}

    # -- the step -----------------------------------------------------------------------------
    def step(self, reading) -> np.ndarray:
        """One reading per stream (raw units) → the forecast in raw units, [O] or [streams, O]."""
        r = _asarray(reading, dtype=_f32)
        if r.shape != self._shape:
            return self._step_reshaped(r)
        x, dev, a = self._x, self._dev, self._abs
        _subtract(r, self._offset, out=dev)
        _multiply(dev, self._inv_scale, out=x)           # straight into the engine's input
        # The usual path is in the box centred at 0 that fits inside every feature's band; NaN
        # fails the test too (argmax finds the first NaN). Otherwise the exact per-feature check.
        _abs(x, out=a)
        if not a.item(a.argmax()) <= self._safe_abs:
            self._check_inputs(x, dev)
        self._invoke()
        out = self._y * self._out_scale
        if self.streams == 1:
            out += x.item(self._j) * self._k + self._out_offset
        else:
            out += self._x_level * self._k + self._out_offset
        hn = self._h_next_flat
        if not _isfinite(hn.dot(hn)):           # h is in [-1, 1]: the square sum cannot overflow
            self._reset_bad_streams(out)
        _copyto(self._h, self._h_next)
        self._dev, self._dev_prev = self._dev_prev, dev     # the last good reading, for 'hold'
        self.stats["steps"] += 1
        return out

    def _step_reshaped(self, r: np.ndarray) -> np.ndarray:
        if self.streams == 1 and r.shape == (1,) + self._shape:
            return self.step(r[0])[None]
        raise ValueError(f"reading has shape {r.shape}; expected {len(self.features)} values "
                         f"(or [{self.streams}, {len(self.features)}]) in this order: {', '.join(self.features)}")

    def _check_inputs(self, x: np.ndarray, dev: np.ndarray) -> None:
        """Apply the NaN policy to non-finite cells and count out-of-band ones (the rare path)."""
        bad = ~np.isfinite(x)
        if bad.any():                              # NaN/inf cells: the nan_policy
            if self.nan_policy == "raise":
                cols = sorted({self.features[j] for j in np.nonzero(bad)[-1]})
                raise ValueError(f"non-finite reading for {', '.join(cols)} (nan_policy='raise')")
            fill = self._dev_prev if self.nan_policy == "hold" else np.broadcast_to(self._dev_mean, dev.shape)
            dev[bad] = fill[bad]
            np.multiply(dev, self._inv_scale, out=x)
            self.stats["imputed"] += int(bad.sum())
        self.stats["out_of_range"] += int(np.count_nonzero((x < self._lo) | (x > self._hi)))

    def _reset_bad_streams(self, out: np.ndarray) -> None:
        """Never carry a non-finite state: zero those streams' state and forecast NaN; count them."""
        h_next = self._h_next
        bad = ~np.isfinite(h_next).all(axis=(0, 2))                          # [B]
        h_next[:, bad] = 0.0
        out.reshape(self.streams, -1)[bad] = np.nan
        self.stats["state_resets"] += int(bad.sum())

    def reset(self, stream=None) -> None:
        """Zero the state (and the held readings) of every stream, or of one."""
        sel = slice(None) if stream is None else stream
        self._h[:, sel] = 0.0
        self._dev_prev.reshape(self.streams, -1)[sel] = self._dev_mean

    @property
    def state(self) -> np.ndarray:
        return self._h.copy()

    @state.setter
    def state(self, value) -> None:
        v = np.asarray(value, np.float32)
        if v.shape != self._h.shape or not np.isfinite(v).all():
            raise ValueError(f"state must be finite float32 {list(self._h.shape)} (layers, streams, hidden); "
                             f"got shape {list(v.shape)}")
        np.copyto(self._h, v)

    def save_state(self, path: str) -> None:
        """Write the state atomically (temp file, fsync, rename), tagged with this bundle's id."""
        folder = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".state-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                last = (self._dev_prev * self._inv_scale).reshape(self.streams, -1)   # normalized
                np.savez(f, state=self._h, last=last, bundle_id=np.str_(self.manifest["bundle_id"]))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def load_state(self, path: str) -> None:
        """Restore a state saved by `save_state` for this same bundle and stream count."""
        try:
            with np.load(path) as z:
                state, last, bid = z["state"], z["last"], str(z["bundle_id"])
        except (OSError, KeyError, ValueError) as e:
            raise ValueError(f"{path} is not a saved forecaster state: {e}") from None
        if bid != self.manifest["bundle_id"]:
            raise ValueError(f"{path} belongs to bundle {bid}, not to {self.manifest['bundle_id']} ({self.bundle})")
        self.state = state
        if last.shape == (self.streams, len(self.features)):
            np.copyto(self._dev_prev, (last / self._inv_scale).reshape(self._shape))


def load(bundle: str, engine: str = "auto", precision: str = "fp32", streams: int = 1,
         nan_policy: str = "hold", range_sigmas: float = 6.0, threads: int = 1) -> Forecaster:
    """Open a bundle and return a ready `Forecaster`.

    Raises:
        BundleError: unknown format, checksum mismatch, missing artifact, shapes that disagree.
        ValueError: an unknown engine, precision or policy.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine '{engine}'; expected one of {', '.join(ENGINES)}")
    if precision not in ("fp32", "int8", "int16"):
        raise ValueError(f"unknown precision '{precision}'; expected fp32, int8 or int16")
    if streams < 1:
        raise ValueError(f"streams must be >= 1, got {streams}")
    manifest = read_manifest(bundle)
    eng, art = _make_engine(bundle, manifest, engine, precision, streams, threads)
    return Forecaster(bundle, manifest, eng, art, streams, nan_policy, range_sigmas)
