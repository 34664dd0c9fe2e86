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
                          f"among installed engines {order}; the bundle has (engine, precision, batch): {have}")
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
        sc = manifest["scaler"]
        self._offset = np.asarray(sc["inputs"]["offset"], np.float32)
        self._inv_scale = (1.0 / np.asarray(sc["inputs"]["scale"], np.float64)).astype(np.float32)
        self._out_offset = np.float32(sc["targets"]["offset"][0])
        self._out_scale = np.float32(sc["targets"]["scale"][0])
        mean = np.asarray([f["train_mean"] for f in manifest["features"]], np.float32)
        std = np.asarray([f["train_std"] for f in manifest["features"]], np.float32)
        self._h = np.zeros((md["num_layers"], streams, md["hidden_size"]), np.float32)
        self._shape = (streams, len(self.features))
        # Everything below is in normalized input units: the training mean, and the band
        # mean ± range_sigmas * std outside which a reading counts as out of range.
        self._mean_n = ((mean - self._offset) * self._inv_scale).astype(np.float32)
        self._lo = ((mean - range_sigmas * std - self._offset) * self._inv_scale).astype(np.float32)
        self._hi = ((mean + range_sigmas * std - self._offset) * self._inv_scale).astype(np.float32)
        self._x = np.zeros(self._shape, np.float32)
        self._x_prev = np.tile(self._mean_n, (streams, 1))
        self._tmp = np.zeros(self._shape, np.float32)
        # Half-width of the largest box centred at 0 inside every feature's band (normalized units).
        self._safe_abs = float(np.min((self._hi - self._lo) / 2 - np.abs((self._hi + self._lo) / 2)))
        self.stats = {"steps": 0, "imputed": 0, "out_of_range": 0, "state_resets": 0}

    # -- the step -----------------------------------------------------------------------------
    def step(self, reading) -> np.ndarray:
        """One reading per stream (raw units) → the forecast in raw units, [O] or [streams, O]."""
        r = np.asarray(reading, dtype=np.float32)
        single = r.ndim == 1
        if r.shape != self._shape:
            r = r[None] if single and r.shape == self._shape[1:] and self.streams == 1 else self._bad_shape(r)
        x, t = self._x, self._tmp
        np.subtract(r, self._offset, out=x)
        np.multiply(x, self._inv_scale, out=x)
        # Rare cases (non-finite or out-of-band readings) cost two numpy calls on the usual path:
        # max |x| within the largest box centred at 0 that fits in every feature's band means
        # nothing to do; NaN fails the comparison too. Otherwise the exact per-feature check.
        if not np.abs(x, out=t).max() <= self._safe_abs:
            self._check_inputs(x)
        y, h_next = self.engine.run(x, self._h)
        hf = h_next.ravel()
        bad = None
        if not math.isfinite(hf.dot(hf)):           # h is in [-1, 1]: the square sum cannot overflow
            bad = self._reset_bad_streams(h_next)
        np.copyto(self._h, h_next)
        out = y * self._out_scale
        out += self._out_offset
        if bad is not None:
            out[bad] = np.nan
        self._x, self._x_prev = self._x_prev, x      # the last good inputs, for nan_policy='hold'
        self.stats["steps"] += 1
        return out[0] if single else out

    def _bad_shape(self, r: np.ndarray):
        raise ValueError(f"reading has shape {r.shape}; expected {len(self.features)} values "
                         f"(or [{self.streams}, {len(self.features)}]) in this order: {', '.join(self.features)}")

    def _check_inputs(self, x: np.ndarray) -> None:
        """Apply the NaN policy to non-finite cells and count out-of-band ones (the rare path)."""
        bad = ~np.isfinite(x)
        if bad.any():                              # NaN/inf cells: the nan_policy
            if self.nan_policy == "raise":
                cols = sorted({self.features[j] for j in np.nonzero(bad)[1]})
                raise ValueError(f"non-finite reading for {', '.join(cols)} (nan_policy='raise')")
            fill = self._x_prev if self.nan_policy == "hold" else np.broadcast_to(self._mean_n, x.shape)
            x[bad] = fill[bad]
            self.stats["imputed"] += int(bad.sum())
        self.stats["out_of_range"] += int(np.count_nonzero((x < self._lo) | (x > self._hi)))

    def _reset_bad_streams(self, h_next) -> np.ndarray:
        """Never carry a non-finite state: zero those streams' state, count them; returns the mask."""
        bad = ~np.isfinite(h_next).all(axis=(0, 2))
        h_next[:, bad] = 0.0
        self.stats["state_resets"] += int(bad.sum())
        return bad

    def reset(self, stream=None) -> None:
        """Zero the state (and the held readings) of every stream, or of one."""
        sel = slice(None) if stream is None else stream
        self._h[:, sel] = 0.0
        self._x_prev[sel] = self._mean_n

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
                np.savez(f, state=self._h, last=self._x_prev, bundle_id=np.str_(self.manifest["bundle_id"]))
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
        if last.shape == self._x_prev.shape:
            np.copyto(self._x_prev, last)


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
