"""Quantization-friendly inputs: a per-feature input scale folded into the first layer's weights.

A full-integer graph quantizes its input x [B, I] with ONE scale for all I features. A
heavy-tailed feature (rain: mostly 0, rare spikes 30 std out) sets that scale, and the target's
own history is left a few grid steps wide. SmoothQuant (Xiao et al., ICML 2023) moves the
outlier range into the weights instead:

    x' = x / s,   W'[:, j] = W[:, j] * s_j   (so W' x' = W x exactly in float)
    s_j = r_j^alpha / w_j^(1 - alpha)        r_j: feature j's calibrated |x| range, w_j: max |W[:, j]|

alpha = 1 gives every feature the same input range; smaller alpha leaves more of the range in the
activations to spare the (per-channel) weight grid. The artifact records s as `input_scale`; the
runtime folds 1/s into its scaler multiply (runtime/engines.py `input_gain`), so it costs
nothing per step. Every candidate is measured; quantize keeps the one that drifts least on the
validation split.
"""
from __future__ import annotations

import numpy as np

RANGE_PERCENTILE = 99.99      # a feature's range: this percentile of |x| over the calibration readings


def input_ranges(x: np.ndarray) -> np.ndarray:
    """Per-feature |x| range [I] over calibration readings x [N, I] (normalized units)."""
    r = np.percentile(np.abs(x[np.isfinite(x).all(axis=1)]), RANGE_PERCENTILE, axis=0)
    return np.maximum(r, 1e-3)


def smooth_scale(ranges: np.ndarray, w_ih: np.ndarray, alpha: float) -> np.ndarray:
    """s [I] for the first layer's input weights w_ih [3H, I]; normalized to a geometric mean of 1."""
    w = np.maximum(np.abs(w_ih).max(axis=0), 1e-6)
    s = ranges ** alpha / w ** (1.0 - alpha)
    return (s / np.exp(np.mean(np.log(s)))).astype(np.float32)


def _onnx_input_matmul(model):
    """(node, initializer) of the MatMul that multiplies the graph input x by its weight [I, 3H]."""
    inits = {i.name: i for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "MatMul" and n.input[0] == "x" and n.input[1] in inits:
            return n, inits[n.input[1]]
    raise RuntimeError("no MatMul(x, W) with a constant W in the ONNX step graph")


def equalize_onnx(src: str, dst: str, s: np.ndarray) -> None:
    """step.onnx with its input weights' rows multiplied by s (x' = x / s in front)."""
    import onnx
    from onnx import numpy_helper
    model = onnx.load(src)
    _, init = _onnx_input_matmul(model)
    w = numpy_helper.to_array(init) * s[:, None]                      # [I, 3H]
    init.CopyFrom(numpy_helper.from_array(w.astype(np.float32), init.name))
    onnx.save(model, dst)


def _tflite_input_fc(model):
    """(subgraph, weight tensor) of the FULLY_CONNECTED that takes the 2-D graph input x."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu
    sg = model.subgraphs[0]
    x_index = next(i for i in sg.inputs if len(sg.tensors[i].shape) == 2)
    for op in sg.operators:
        name = fu.TFL_OP_CODE_TO_NAME[model.operatorCodes[op.opcodeIndex].builtinCode]
        if str(name).endswith("FULLY_CONNECTED") and op.inputs[0] == x_index:
            return sg, sg.tensors[op.inputs[1]]
    raise RuntimeError("no FULLY_CONNECTED on the graph input x in the TFLite step graph")


def equalize_tflite(src: str, dst: str, s: np.ndarray) -> None:
    """step.tflite with its input weights' columns multiplied by s."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu
    with open(src, "rb") as f:
        model = fu.read_model(f.read())
    sg, wt = _tflite_input_fc(model)
    buf = model.buffers[wt.buffer]
    w = np.frombuffer(bytes(buf.data), np.float32).reshape(wt.shape) * s[None, :]   # [3H, I]
    buf.data = np.frombuffer(w.astype(np.float32).tobytes(), np.uint8)
    fu.write_model(model, dst)
