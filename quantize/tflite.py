"""Full-integer TFLite through ai-edge-quantizer: one calibration, many recipes built from it.

The float graph is calibrated once (min/max of every activation tensor over the real (x, h)
pairs, the library's calibrator with `min_max_update` instead of its default moving average,
which clips the recurrent state). A sample of every tensor's values is kept as well, so other
ranges cost nothing more:
- `min/max`: the calibrated extremes;
- `percentile`: the 0.01% and 99.99% percentiles of the tensor's values (a rare outlier no
  longer stretches the grid every other value lives on);
- `MSE`: the clipping of the min/max range (one of CLIP_FRACTIONS) whose int8 grid gives the
  least squared error on the tensor's own values, clipping error included.
Both clip internal tensors only: the graph's inputs and outputs (x, h, y, h_next) keep their
min/max, which the calibration widened on purpose for readings past the training range (the
first version clipped them too: on the demo, whose test month is warmer than any calibration
data, the chosen percentile graph then drifted 0.60% with a 9.9% maximum on the test split).
A recipe is int8 (or int16) activations everywhere, with any named ops at int16 activations
(int8 weights, "a16w8"), selected by their output tensor. An input-scaled twin of the graph
(quantize/equalize.py) has the same tensors but x / s, so its ranges are derived, not recalibrated.
"""
from __future__ import annotations

import contextlib
import io
import re
import warnings

import numpy as np

from runtime.engines import LiteRTEngine

CALIBRATIONS = ("min/max", "percentile", "MSE")
PERCENTILE = 99.99
CLIP_FRACTIONS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4)
VALUE_SAMPLES = 1000            # calibration pairs whose every tensor value is kept for the ranges


def _quiet():
    """The library's progress prints and its warning that keeping every tensor is for debugging
    (keeping every tensor is what calibration is)."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    return stack


def _samples(xs, hs) -> list[dict]:
    return [{"args_0": xs[i:i + 1], "args_1": hs[i]} for i in range(len(xs))]


def graph_ops(path: str) -> list[dict]:
    """The step graph's operators as ai-edge-quantizer scopes them: name ('#16 SUB'), op, and scope
    (its output tensors' names, each followed by ';'). The graph's inputs (x, h) and outputs
    (y, h_next) are two more, virtual, ops: their precision is the precision the state is carried at
    between steps."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu
    with open(path, "rb") as f:
        model = fu.read_model(f.read())
    sg = model.subgraphs[0]
    scope = lambda idx: "".join(fu.get_tensor_name(sg.tensors[i]) + ";" for i in idx)   # noqa: E731
    out = [{"name": "graph inputs (x, h)", "op": "INPUT", "scope": scope(sg.inputs)}]
    for i, op in enumerate(sg.operators):
        name = str(fu.TFL_OP_CODE_TO_NAME[model.operatorCodes[op.opcodeIndex].builtinCode]).split(".")[-1]
        out.append({"name": f"#{i} {name}", "op": name, "scope": scope(op.outputs)})
    return out + [{"name": "graph outputs (y, h_next)", "op": "OUTPUT", "scope": scope(sg.outputs)}]


class TFLiteCalibration:
    """The float graph's activation ranges, calibrated once; recipes are built from them."""

    def __init__(self, float_path: str, xs: np.ndarray, hs: np.ndarray):
        from ai_edge_quantizer import calibrator, quantizer, recipe
        from ai_edge_quantizer.utils import qsv_utils
        self.xs = xs
        qt = quantizer.Quantizer(float_path, recipe.static_wi8_ai8())
        with open(float_path, "rb") as f, _quiet():
            cal = calibrator.Calibrator(f.read(), num_threads=2, qsv_update_func=qsv_utils.min_max_update)
            cal.calibrate({"serving_default": _samples(xs, hs)}, qt._recipe_manager)
        self.minmax = cal.get_model_qsvs()
        with _quiet():
            eng = LiteRTEngine(float_path, keep_tensors=True)     # the float graph, opened once here
        ins, outs = eng.interp.get_input_details(), eng.interp.get_output_details()
        self.x_name = next(d["name"] for d in ins if len(d["shape"]) == 2)     # x is 2-D, h 3-D
        self.io = {d["name"] for d in ins + outs}
        idx = np.linspace(0, len(xs) - 1, min(VALUE_SAMPLES, len(xs))).astype(int)
        self.values = tensor_values(eng, xs[idx], hs[idx], set(self.minmax) - self.io)   # internal tensors
        self.ops = graph_ops(float_path)

    def ranges(self, method: str, input_scale=None) -> dict:
        """QSVs {tensor: {'min', 'max'}} by `method`, for the graph whose input is x / input_scale."""
        if method not in CALIBRATIONS:
            raise ValueError(f"unknown calibration {method!r}; expected one of {', '.join(CALIBRATIONS)}")
        qsvs = {k: dict(v) for k, v in self.minmax.items()}
        if input_scale is not None:              # the same graph but x / s: only x's range moves
            xv = (self.xs / input_scale).astype(np.float32)
            qsvs[self.x_name] = {"min": np.array([xv.min()], np.float32), "max": np.array([xv.max()], np.float32)}
        if method != "min/max":                  # internal tensors only (see the module docstring)
            clip = _percentile_range if method == "percentile" else _mse_range
            for name, v in self.values.items():
                lo, hi = clip(v, qsvs[name])
                qsvs[name] = {"min": np.array([lo], np.float32), "max": np.array([hi], np.float32)}
        return qsvs

    def build(self, graph_path: str, out_path: str, qsvs: dict, activations: str = "int8", int16_ops=()) -> None:
        """Quantize `graph_path` (this graph or its input-scaled twin): every op at `activations`,
        the ops whose scopes (graph_ops) are in `int16_ops` at int16 activations."""
        from ai_edge_quantizer import quantizer, recipe
        rec = {"int8": recipe.static_wi8_ai8, "int16": recipe.static_wi8_ai16}[activations]()
        a16 = recipe.static_wi8_ai16()[0]
        rec += [{**a16, "regex": f"^{re.escape(scope)}$"} for scope in int16_ops]
        qt = quantizer.Quantizer(graph_path, rec)
        with _quiet():
            result = qt.quantize(qsvs, enable_progress_bar=False, enable_progress_report=False)
        result.export_model(out_path, overwrite=True)
        general_int16_scales(out_path)


def weight_only(graph_path: str, out_path: str) -> None:
    """int8 weights, float activations: what the weights alone cost, the floor under every recipe
    that keeps int8 weights (int16 activations included)."""
    from ai_edge_quantizer import quantizer, recipe
    qt = quantizer.Quantizer(graph_path, recipe.weight_only_wi8_afp32())
    with _quiet():
        result = qt.quantize(enable_progress_bar=False, enable_progress_report=False)
    result.export_model(out_path, overwrite=True)


def tensor_values(engine, xs: np.ndarray, hs: np.ndarray, names: set) -> dict:
    """Every named tensor's values over the (x, h) samples, flattened: {name: float32 [n]}.

    `engine`: a LiteRTEngine opened with keep_tensors. Each sample is one `engine.run` from its
    own state (hs[i], met while streaming in drift.calibration_pairs): nothing is fed back, so
    this is a loop over independent samples, not a stream for runtime.engines.run_stream.
    """
    details = [d for d in engine.interp.get_tensor_details() if d["name"] in names]
    out = {d["name"]: [] for d in details}
    for x, h in zip(xs, hs):
        engine.run(x[None], h)
        for d in details:
            out[d["name"]].append(engine.interp.get_tensor(d["index"]).ravel())
    return {k: np.concatenate(v) for k, v in out.items()}


def _percentile_range(v: np.ndarray, qsv: dict) -> tuple[float, float]:
    lo, hi = np.percentile(v, [100.0 - PERCENTILE, PERCENTILE])
    return float(min(lo, 0.0)), float(max(hi, 0.0))      # the grid always holds 0


def _mse_range(v: np.ndarray, qsv: dict, levels: int = 255) -> tuple[float, float]:
    """The clipped min/max range whose uniform int8 grid reproduces v with the least squared error."""
    lo0, hi0 = float(min(qsv["min"].min(), 0.0)), float(max(qsv["max"].max(), 0.0))
    best = (np.inf, lo0, hi0)
    for f in CLIP_FRACTIONS:
        lo, hi = lo0 * f, hi0 * f
        step = max(hi - lo, 1e-12) / levels
        err = float(np.mean((np.clip(np.round((v - lo) / step), 0, levels) * step + lo - v) ** 2))
        if err < best[0]:
            best = (err, lo, hi)
    return best[1], best[2]


def general_int16_scales(path: str) -> None:
    """Let LiteRT's int16 ADD/SUB take any scales (pot_scale_int16 false). The converter leaves
    the schema default, true, under which the int16 SUB kernel refuses inputs whose scales are
    not powers of two apart (sub.cc `input1_shift == 0 || input2_shift == 0`); int8 kernels
    ignore the flag."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu
    with open(path, "rb") as f:
        model = fu.read_model(f.read())
    changed = False
    for op in model.subgraphs[0].operators:
        opts = op.builtinOptions
        if opts is not None and getattr(opts, "potScaleInt16", False):
            opts.potScaleInt16, changed = False, True
    if changed:
        fu.write_model(model, path)
