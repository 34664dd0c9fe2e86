"""Inference engines behind one interface: `run(x, h) -> (y, h_next)`.

x float32 [B, I] (normalized), h float32 [L, B, H]  →  y float32 [B, O], h_next float32 [L, B, H].
The returned arrays are the engine's own output buffers, valid until its next `run`: copy
them to keep them. Native engines are imported lazily, inside the class that uses them.

Residual models: the graphs output the forecast's change from the target's current reading
(x[:, residual_input]); every engine adds that reading back in float, so `run` always returns
the forecast (see export/step.py for why it is kept out of the graph).
"""
from __future__ import annotations

import warnings

import numpy as np


def _sigmoid(v):
    return 0.5 * (np.tanh(0.5 * v) + 1.0)  # overflow-free logistic


def _add_residual(y, x, j):
    """The forecast = the graph's change + the target's current reading, in float, in place."""
    if j is not None:
        y += x[:, j:j + 1]


class NumpyEngine:
    """The reference: the GRU cell in plain numpy, from weights.npz. Can also return the gates."""
    name = "numpy"

    def __init__(self, weights, num_layers: int, residual_input=None, batch=None):
        self.layers = []
        for layer in range(num_layers):
            # PyTorch gate order r, z, n; the reset gate multiplies (W_hn h + b_hn).
            self.layers.append((np.ascontiguousarray(weights[f"l{layer}.w_ih"].T, np.float32),
                                np.ascontiguousarray(weights[f"l{layer}.w_hh"].T, np.float32),
                                weights[f"l{layer}.b_ih"].astype(np.float32),
                                weights[f"l{layer}.b_hh"].astype(np.float32)))
        self.head_w = np.ascontiguousarray(weights["head.w"].T, np.float32)
        self.head_b = weights["head.b"].astype(np.float32)
        self.residual_input = residual_input
        self.batch = batch

    def run(self, x, h, gates=None):
        """One step. If `gates` is a dict, fills gates['r'], gates['z'] float32 [L, B, H]."""
        h_next = np.empty_like(h)
        inp = x
        rs, zs = [], []
        for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(self.layers):
            gi = inp @ w_ih + b_ih                       # [B, 3H]
            gh = h[layer] @ w_hh + b_hh                  # [B, 3H]
            i_r, i_z, i_n = np.split(gi, 3, axis=1)      # each [B, H], order r, z, n
            h_r, h_z, h_n = np.split(gh, 3, axis=1)
            r = _sigmoid(i_r + h_r)
            z = _sigmoid(i_z + h_z)
            n = np.tanh(i_n + r * h_n)
            h_next[layer] = n + z * (h[layer] - n)
            inp = h_next[layer]
            rs.append(r), zs.append(z)
        y = inp @ self.head_w + self.head_b             # [B, O]
        _add_residual(y, x, self.residual_input)
        if gates is not None:
            gates["r"], gates["z"] = np.stack(rs), np.stack(zs)
        return y.astype(np.float32, copy=False), h_next


class OnnxEngine:
    """onnxruntime, one intra-op thread by default, with bound buffers reused across calls."""
    name = "onnxruntime"

    def __init__(self, path: str, batch: int, state_shape, output_size: int, threads: int = 1,
                 residual_input=None):
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        n_layers, _, hidden = state_shape
        in_size = self.session.get_inputs()[0].shape[1]
        # onnxruntime keeps no reference to bound numpy buffers: these attributes do.
        self._x = np.zeros((batch, in_size), np.float32)
        self._h = np.zeros((n_layers, batch, hidden), np.float32)
        self._y = np.zeros((batch, output_size), np.float32)
        self._hn = np.zeros((n_layers, batch, hidden), np.float32)
        self._binding = self.session.io_binding()
        for name, arr in (("x", self._x), ("h", self._h)):
            self._binding.bind_input(name, "cpu", 0, np.float32, list(arr.shape), arr.ctypes.data)
        for name, arr in (("y", self._y), ("h_next", self._hn)):
            self._binding.bind_output(name, "cpu", 0, np.float32, list(arr.shape), arr.ctypes.data)
        self.batch, self.residual_input = batch, residual_input

    def run(self, x, h):
        np.copyto(self._x, x)
        np.copyto(self._h, h)
        self.session.run_with_iobinding(self._binding)
        _add_residual(self._y, self._x, self.residual_input)
        return self._y, self._hn


def load_interpreter(path: str, threads: int = 1, precision: str = "fp32"):
    """A TFLite interpreter: ai_edge_litert (maintained), else the legacy tflite_runtime."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise ImportError("no TFLite interpreter: install 'ai-edge-litert' (or the legacy "
                              "'tflite-runtime')") from None
        if precision != "fp32":
            warnings.warn("tflite_runtime (legacy, 2.14) runs int8 kernels about 14x slower than "
                          "ai_edge_litert: install ai-edge-litert for quantized models", stacklevel=3)
    return Interpreter(model_path=path, num_threads=threads)


class LiteRTEngine:
    """A .tflite step (fixed batch) through the LiteRT interpreter; quantized I/O hidden."""
    name = "litert"

    def __init__(self, path: str, threads: int = 1, precision: str = "fp32", residual_input=None):
        self.interp = load_interpreter(path, threads, precision)
        self.residual_input = residual_input
        self.interp.allocate_tensors()
        ins = sorted(self.interp.get_input_details(), key=lambda d: len(d["shape"]))   # x [B,I], h [L,B,H]
        outs = sorted(self.interp.get_output_details(), key=lambda d: len(d["shape"]))  # y, h_next
        self._in = [(d["index"], d["dtype"], d["quantization"]) for d in ins]
        self._out = [(d["index"], d["dtype"], d["quantization"]) for d in outs]
        self.batch = int(ins[0]["shape"][0])
        self._y = np.zeros(tuple(outs[0]["shape"]), np.float32)
        self._hn = np.zeros(tuple(outs[1]["shape"]), np.float32)

    def run(self, x, h):
        for (idx, dtype, (scale, zero)), arr in zip(self._in, (x, h)):
            if dtype == np.float32:
                self.interp.set_tensor(idx, arr)
            else:
                info = np.iinfo(dtype)
                self.interp.set_tensor(idx, np.clip(np.rint(arr / scale) + zero, info.min, info.max).astype(dtype))
        self.interp.invoke()
        outs = []
        for (idx, dtype, (scale, zero)), buf in zip(self._out, (self._y, self._hn)):
            v = self.interp.get_tensor(idx)        # already a copy: hand it out as it is
            if dtype != np.float32:
                v = np.subtract(v, zero, out=buf, dtype=np.float32)
                v *= scale
            outs.append(v)
        _add_residual(outs[0], x, self.residual_input)
        return outs[0], outs[1]


def available_engines() -> list[str]:
    """Engines importable here, fastest first (the order `engine='auto'` tries)."""
    import importlib.util
    found = []
    if importlib.util.find_spec("ai_edge_litert") or importlib.util.find_spec("tflite_runtime"):
        found.append("litert")
    if importlib.util.find_spec("onnxruntime"):
        found.append("onnxruntime")
    return found + ["numpy"]
