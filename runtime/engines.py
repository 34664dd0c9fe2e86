"""Inference engines behind one interface: `run(x, h) -> (y, h_next)`.

x float32 [B, I] (normalized), h float32 [L, B, H]  →  y float32 [B, O], h_next float32 [L, B, H].

Beneath `run`, every engine exposes its bound buffers, the way onnxruntime's io_binding and the
TFLite interpreter's tensors work: write `x` [B, I] and `h` [L, B, H], call `invoke()`, read the
graph's `y` [B, O] and `h_next` [L, B, H]. The buffers are fixed for the engine's life (B is its
batch) and `invoke` neither allocates nor touches its inputs, so `Forecaster.step` costs one
native call plus a handful of in-place numpy operations. Native engines are imported lazily,
inside the class that uses them.

Residual models: the graphs output the forecast's change from the target's current reading
(x[:, residual_input]); `run` adds that reading back in float (runtime/residual.add_level), so it
always returns the forecast (see export/step.py for why it is kept out of the graph). `invoke`
leaves `y` as the graph computed it.
"""
from __future__ import annotations

import functools
import warnings

import numpy as np

from .bundle import ENGINE_NAMES, head_weights, layer_weights, load_weights
from .residual import add_level


def _sigmoid(v):
    return 0.5 * (np.tanh(0.5 * v) + 1.0)  # overflow-free logistic


class _BoundEngine:
    """`run` on top of the bound buffers x, h → invoke() → y, h_next (set by each engine).

    `input_gain` [I] (None: 1): an int8 graph built for quantization-friendly inputs expects
    x * input_gain in its `x` buffer (the manifest artifact's `input_scale` is 1 / gain; the
    first layer's weights were multiplied by that scale, so the math is unchanged). `run` takes
    the normalized x and applies it; `Forecaster.step` folds it into its scaler multiply.
    """
    residual_input = None
    input_gain = None

    def run(self, x, h):
        """One step on copies of x [B, I] and h [L, B, H]; returns (forecast [B, O], h_next).

        The forecast is a fresh array; h_next is the engine's buffer, valid until the next call.
        """
        np.copyto(self.x, x)
        if self.input_gain is not None:
            self.x *= self.input_gain
        np.copyto(self.h, h)
        self.invoke()
        return add_level(self.y.copy(), np.asarray(x, np.float32).reshape(self.x.shape), self.residual_input), self.h_next


class NumpyEngine(_BoundEngine):
    """The reference: the GRU cell in plain numpy, from weights.npz. Can also return the gates."""
    name = "numpy"

    def __init__(self, weights, num_layers: int, residual_input=None, batch: int = 1):
        self.layers = []
        for layer in range(num_layers):
            # PyTorch gate order r, z, n; the reset gate multiplies (W_hn h + b_hn).
            w_ih, w_hh, b_ih, b_hh = layer_weights(weights, layer)     # names: runtime.bundle.WEIGHT_NAMES
            self.layers.append((np.ascontiguousarray(w_ih.T, np.float32), np.ascontiguousarray(w_hh.T, np.float32),
                                b_ih.astype(np.float32), b_hh.astype(np.float32)))
        head_w, head_b = head_weights(weights)
        self.head_w = np.ascontiguousarray(head_w.T, np.float32)
        self.head_b = head_b.astype(np.float32)
        self.residual_input = residual_input
        self.batch = batch
        hidden = self.layers[0][1].shape[0]
        self.x = np.zeros((batch, self.layers[0][0].shape[0]), np.float32)
        self.h = np.zeros((num_layers, batch, hidden), np.float32)
        self.y = np.zeros((batch, self.head_b.shape[0]), np.float32)
        self.h_next = np.zeros_like(self.h)

    def cell_step(self, x, h, gates=None):
        """The graph on any batch: (y [B, O] (the change, for residual models), h_next [L, B, H]).

        If `gates` is a dict, fills gates['r'], gates['z'] float32 [L, B, H].
        """
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
        if gates is not None:
            gates["r"], gates["z"] = np.stack(rs), np.stack(zs)
        return (inp @ self.head_w + self.head_b).astype(np.float32, copy=False), h_next   # [B, O]

    def run(self, x, h, gates=None):
        """Like every engine's `run`, on any batch, without touching the bound buffers."""
        y, h_next = self.cell_step(x, h, gates)
        return add_level(y, x, self.residual_input), h_next

    def invoke(self):
        y, h_next = self.cell_step(self.x, self.h)
        np.copyto(self.y, y)
        np.copyto(self.h_next, h_next)


class OnnxEngine(_BoundEngine):
    """onnxruntime, one intra-op thread by default, with its buffers bound once (io_binding)."""
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
        self.x = np.zeros((batch, in_size), np.float32)
        self.h = np.zeros((n_layers, batch, hidden), np.float32)
        self.y = np.zeros((batch, output_size), np.float32)
        self.h_next = np.zeros((n_layers, batch, hidden), np.float32)
        self._binding = self.session.io_binding()
        for name, arr in (("x", self.x), ("h", self.h)):
            self._binding.bind_input(name, "cpu", 0, np.float32, list(arr.shape), arr.ctypes.data)
        for name, arr in (("y", self.y), ("h_next", self.h_next)):
            self._binding.bind_output(name, "cpu", 0, np.float32, list(arr.shape), arr.ctypes.data)
        self.invoke = functools.partial(self.session.run_with_iobinding, self._binding)
        self.batch, self.residual_input = batch, residual_input


def load_interpreter(path: str, threads: int = 1, precision: str = "fp32", keep_tensors: bool = False):
    """A TFLite interpreter: ai_edge_litert (maintained), else the legacy tflite_runtime.

    keep_tensors: every intermediate tensor stays readable (`get_tensor`) after a call: more
    memory, for calibration (quantize/tflite.py), never on the device's step.
    """
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
    if keep_tensors:
        return Interpreter(model_path=path, num_threads=threads, experimental_preserve_all_tensors=True)
    return Interpreter(model_path=path, num_threads=threads)


class LiteRTEngine(_BoundEngine):
    """A .tflite step (fixed batch) through the LiteRT interpreter; quantized I/O hidden.

    Float I/O: x, h, y, h_next are numpy views of the interpreter's own tensors and `invoke`
    is the native call alone (measured 1.2 µs at H=64 vs 4 µs through set_tensor/get_tensor).
    The views live as long as the engine, so the interpreter is driven through its native
    wrapper: the public `invoke()` refuses to run while a view exists, a guard against tensors
    that move when a graph is resized; a step graph has fixed shapes, and the constructor checks
    that the buffers stay put. Quantized I/O: float buffers, (de)quantized around the call.
    keep_tensors (see load_interpreter): `interp.get_tensor` also reads intermediate tensors.
    """
    name = "litert"

    def __init__(self, path: str, threads: int = 1, precision: str = "fp32", residual_input=None,
                 keep_tensors: bool = False):
        self.interp = load_interpreter(path, threads, precision, keep_tensors)
        self.residual_input = residual_input
        self.interp.allocate_tensors()
        self.interp.invoke()                      # lets lazily applied delegates settle the tensors
        ins = sorted(self.interp.get_input_details(), key=lambda d: len(d["shape"]))   # x [B,I], h [L,B,H]
        outs = sorted(self.interp.get_output_details(), key=lambda d: len(d["shape"]))  # y, h_next
        self._in = [(d["index"], d["dtype"], d["quantization"]) for d in ins]
        self._out = [(d["index"], d["dtype"], d["quantization"]) for d in outs]
        self.batch = int(ins[0]["shape"][0])
        views = self._native_views() if all(d["dtype"] == np.float32 for d in ins + outs) else None
        if views:
            self.x, self.h, self.y, self.h_next = views
            self.invoke = self.interp._interpreter.Invoke
            for v in views:
                v.fill(0.0)                       # the arena starts with whatever was there
        else:
            self.x, self.h, self.y, self.h_next = (np.zeros(tuple(d["shape"]), np.float32) for d in ins + outs)
            self.invoke = self._invoke_copying

    def _native_views(self):
        """Views of the four I/O tensors, if the interpreter has them and they do not move."""
        raw = getattr(self.interp, "_interpreter", None)
        if raw is None or not hasattr(raw, "tensor"):
            return None
        index = [d[0] for d in self._in + self._out]
        views = [raw.tensor(raw, i) for i in index]
        raw.Invoke()
        if any(v.ctypes.data != raw.tensor(raw, i).ctypes.data for v, i in zip(views, index)):
            return None
        return views

    def _invoke_copying(self):
        for (idx, dtype, (scale, zero)), arr in zip(self._in, (self.x, self.h)):
            if dtype != np.float32:
                info = np.iinfo(dtype)
                arr = np.clip(np.rint(arr / scale) + zero, info.min, info.max).astype(dtype)
            self.interp.set_tensor(idx, arr)
        self.interp.invoke()
        for (idx, dtype, (scale, zero)), buf in zip(self._out, (self.y, self.h_next)):
            v = self.interp.get_tensor(idx)
            if dtype == np.float32:
                np.copyto(buf, v)
            else:
                np.subtract(v, zero, out=buf, dtype=np.float32)
                buf *= scale


def open_engine(path: str, art: dict, md: dict, batch: int = 1, threads: int = 1):
    """The engine for one artifact file, given the manifest's model section and the batch size.

    The one engine factory: Forecaster, verify, export's parity check, quantize's drift report and
    the benchmarks all open artifacts here.
    """
    j = md.get("residual_input")
    if art["engine"] == "numpy":
        return NumpyEngine(load_weights(path, md), md["num_layers"], j, batch)
    if art["engine"] == "onnxruntime":
        eng = OnnxEngine(path, batch, (md["num_layers"], batch, md["hidden_size"]), md["output_size"], threads, j)
    elif art["engine"] == "litert":
        eng = LiteRTEngine(path, threads, art.get("precision", "fp32"), j)
    else:
        raise ValueError(f"unknown engine {art['engine']!r}; expected one of {', '.join(ENGINE_NAMES)}")
    if art.get("input_scale") is not None:
        eng.input_gain = (1.0 / np.asarray(art["input_scale"], np.float64)).astype(np.float32)
    return eng


def run_stream(engine, x: np.ndarray, h0=None, reset_every=None, states: bool = False):
    """Step `engine` over a stream, feeding h_next back: the one stepping loop.

    Mirrors kws_streaming's run_stream_inference: an engine, the inputs and an optional start
    state. x is normalized, [T, I] for one stream or [T, B, I] for B streams (B = the engine's
    batch); returns the forecasts, normalized, [T, O] or [T, B, O]. reset_every: zero the state
    every that many steps (None: carry it through the whole stream). states: also return the
    state each reading met, [T, L, B, H] (quantize calibrates on these (x, h) pairs).
    """
    single = x.ndim == 2
    xs = x[:, None] if single else x
    h = np.zeros(engine.h.shape, np.float32) if h0 is None else np.array(h0, np.float32)
    out = np.empty((len(xs),) + engine.y.shape, np.float32)
    met = np.empty((len(xs),) + h.shape, np.float32) if states else None
    for t in range(len(xs)):
        if reset_every and t % reset_every == 0:
            h[:] = 0.0
        if states:
            met[t] = h
        y, h_next = engine.run(xs[t], h)
        out[t] = y
        h[...] = h_next
    ys = out[:, 0] if single else out
    return (ys, met) if states else ys


def available_engines() -> list[str]:
    """Engines importable here, fastest first (the order `engine='auto'` tries)."""
    import importlib.util
    found = []
    if importlib.util.find_spec("ai_edge_litert") or importlib.util.find_spec("tflite_runtime"):
        found.append("litert")
    if importlib.util.find_spec("onnxruntime"):
        found.append("onnxruntime")
    return found + ["numpy"]
