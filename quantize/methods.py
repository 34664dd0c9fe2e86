"""Post-training quantization of the step graph: onnxruntime (int8) and ai-edge-quantizer (int8/int16).

Calibration samples are real (x, h) pairs collected by streaming the float model with its
state carried, so the ranges cover the hidden states the device will actually see.
"""
from __future__ import annotations

import contextlib
import io
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


def quantize_onnx(float_path: str, out_path: str, xs, hs, method: str) -> None:
    """`dynamic`: per-channel int8 weights, reduce_range; `static`: QDQ, min/max calibrated."""
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process
    with tempfile.TemporaryDirectory() as tmp:
        pre = os.path.join(tmp, "pre.onnx")
        quant_pre_process(float_path, pre, skip_symbolic_shape=True)
        if method == "dynamic":
            quantize_dynamic(pre, out_path, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)
        elif method == "static":
            quantize_static(pre, out_path, _Reader(xs, hs), quant_format=QuantFormat.QDQ, per_channel=True,
                            reduce_range=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        else:
            raise ValueError(f"unknown ONNX quantization method '{method}'; expected dynamic or static")


def onnx_coverage(float_path: str, quant_path: str) -> dict:
    """Which ops run in int8 and the share of multiply-accumulates that are int8.

    Raises:
        RuntimeError: a MatMul/Gemm with a constant weight was left in float.
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
            elif src in q_inits:
                left.append(n.name or src)
    if left:
        raise RuntimeError(f"{quant_path}: MatMul/Gemm left in float: {', '.join(left)}")
    ops = sorted({n.op_type for n in qm.graph.node})
    int_ops = [o for o in ops if o in INT8_MATMULS or "Quantize" in o or o.startswith("QLinear")]
    return {"int8_ops": int_ops, "ops": ops, "int8_mac_share": int8_macs / total if total else 0.0,
            "macs": total}


def quantize_tflite(float_path: str, out_path: str, xs, hs, activations: str) -> None:
    """Full-integer TFLite (int8 weights; int8 or int16 activations), min/max calibration.

    The library's default calibration averages ranges across samples, which clips the
    recurrent state; `qsv_utils.min_max_update` keeps the true extremes.
    """
    from ai_edge_quantizer import calibrator, quantizer, recipe
    from ai_edge_quantizer.utils import qsv_utils
    rec = {"int8": recipe.static_wi8_ai8, "int16": recipe.static_wi8_ai16}[activations]()
    qt = quantizer.Quantizer(float_path, rec)
    with open(float_path, "rb") as f:
        buf = f.read()
    cal = calibrator.Calibrator(buf, num_threads=2, qsv_update_func=qsv_utils.min_max_update)
    samples = [{"args_0": xs[i:i + 1], "args_1": hs[i]} for i in range(len(xs))]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        cal.calibrate({"serving_default": samples}, qt._recipe_manager)
        result = qt.quantize(cal.get_model_qsvs(), enable_progress_bar=False, enable_progress_report=False)
    result.export_model(out_path, overwrite=True)
