"""Post-training quantization of the ONNX step graph with onnxruntime (int8); TFLite: quantize/tflite.py.

Calibration samples are real (x, h) pairs collected by streaming the float model with its
state carried, so the ranges cover the hidden states the device will actually see.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np

# MatMul-like ops and their integer forms, for the coverage report.
FLOAT_MATMULS = {"MatMul", "Gemm"}
INT8_MATMULS = {"MatMulInteger", "QLinearMatMul", "QGemm", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}


class _Reader:
    """onnxruntime CalibrationDataReader over the collected (x, h) pairs."""

    def __init__(self, xs, hs):
        self._it = iter([{"x": xs[i:i + 1], "h": hs[i]} for i in range(len(xs))])

    def get_next(self):
        return next(self._it, None)


def _pre_processed(float_path: str, tmp: str) -> str:
    from onnxruntime.quantization.shape_inference import quant_pre_process
    pre = os.path.join(tmp, "pre.onnx")
    quant_pre_process(float_path, pre, skip_symbolic_shape=True)
    return pre


def onnx_nodes(float_path: str) -> list[dict]:
    """The nodes quantize_onnx sees (after quant_pre_process): name and op type, in graph order."""
    import onnx
    with tempfile.TemporaryDirectory() as tmp:
        model = onnx.load(_pre_processed(float_path, tmp))
    return [{"name": n.name, "op": n.op_type} for n in model.graph.node]


def quantize_onnx(float_path: str, out_path: str, xs, hs, method: str, exclude=()) -> None:
    """`dynamic`: per-channel int8 weights, reduce_range; `static`: QDQ, min/max calibrated, the
    nodes named in `exclude` left in float (onnxruntime's nodes_to_exclude)."""
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)
    with tempfile.TemporaryDirectory() as tmp:
        pre = _pre_processed(float_path, tmp)
        if method == "dynamic":
            # quantize_dynamic first splits each Gemm into <name>_MatMul + <name>_Add and matches
            # nodes_to_exclude against the new names.
            import onnx
            gemms = {n.name for n in onnx.load(pre).graph.node if n.op_type == "Gemm"}
            quantize_dynamic(pre, out_path, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                             nodes_to_exclude=[f"{e}_MatMul" if e in gemms else e for e in exclude])
        elif method == "static":
            quantize_static(pre, out_path, _Reader(xs, hs), quant_format=QuantFormat.QDQ, per_channel=True,
                            reduce_range=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=list(exclude),
                            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        else:
            raise ValueError(f"unknown ONNX quantization method '{method}'; expected dynamic or static")


def onnx_coverage(float_path: str, quant_path: str, kept_float=()) -> dict:
    """Which ops run in int8 and the share of multiply-accumulates that are int8.

    Raises:
        RuntimeError: a MatMul/Gemm with a constant weight was left in float, other than the
            nodes the accuracy search kept in float on purpose (`kept_float`).
    """
    import onnx
    from onnx import numpy_helper
    fm, qm = onnx.load(float_path), onnx.load(quant_path)
    w = {i.name: numpy_helper.to_array(i).shape for i in fm.graph.initializer}
    total = sum(int(np.prod(w[n.input[1]])) for n in fm.graph.node if n.op_type in FLOAT_MATMULS and n.input[1] in w)
    q_inits = {i.name for i in qm.graph.initializer}
    dq_out = {n.output[0]: n.input[0] for n in qm.graph.node if n.op_type == "DequantizeLinear"}
    qw = {i.name: numpy_helper.to_array(i).shape for i in qm.graph.initializer}
    int8_macs, left = 0, []
    for n in qm.graph.node:
        if n.op_type in INT8_MATMULS:
            int8_macs += int(np.prod(qw.get(n.input[1] if n.op_type != "QLinearMatMul" else n.input[3], (0,))))
        elif n.op_type in FLOAT_MATMULS:
            src = n.input[1]
            if src in dq_out:       # QDQ: the weight comes through DequantizeLinear from int8
                int8_macs += int(np.prod(qw.get(dq_out[src], (0,))))
            elif src in q_inits and n.name not in kept_float and n.name.removesuffix("_MatMul") not in kept_float:
                left.append(n.name or src)
    if left:
        raise RuntimeError(f"{quant_path}: MatMul/Gemm left in float: {', '.join(left)}")
    ops = sorted({n.op_type for n in qm.graph.node})
    int_ops = [o for o in ops if o in INT8_MATMULS or "Quantize" in o or o.startswith("QLinear")]
    return {"int8_ops": int_ops, "ops": ops, "int8_mac_share": int8_macs / total if total else 0.0,
            "macs": total, "kept_float": list(kept_float)}
