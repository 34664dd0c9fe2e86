"""The candidate search: for each engine, build int8 graphs and keep the smallest within the target.

1. Quantization-friendly inputs: as trained, or a SmoothQuant-style per-feature scale folded into
   the first layer's weights (quantize/equalize.py).
2. Calibration: min/max, percentile or MSE-optimal ranges per tensor (TFLite, quantize/tflite.py);
   ONNX dynamic (ranges per call) and static QDQ (min/max).
3. Accuracy-aware mixed precision, in the spirit of NNCF's quantize_with_accuracy_control: when no
   full-int8 candidate meets the target, every op is ranked by the drift it adds when it alone is
   reverted to int8 from a graph where all are precise (TFLite: int16 activations; ONNX, on the
   better of dynamic and static: left float via nodes_to_exclude), and reverted in that order
   while the target holds; the few that stay precise are named in the report.
Each candidate is measured through its runtime engine against the float artifact over the
streamed VALIDATION split; the choice never looks at the test split, on which the drift table is
then reported. Chosen: among the candidates within the target, the fewest precise ops, then the
least drift; if none is, the least drift (the budget then decides whether it is added).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from runtime.bundle import layer_weights
from runtime.engines import open_engine

from .drift import output_drift, streamed
from .equalize import equalize_onnx, equalize_tflite, input_ranges, smooth_scale
from .methods import onnx_nodes, quantize_onnx
from .tflite import CALIBRATIONS, TFLiteCalibration, weight_only

# (label, alpha): alpha None keeps the trained inputs; see quantize/equalize.py.
INPUT_OPTIONS = (("as trained", None), ("smoothed (alpha 0.5)", 0.5), ("equalized (alpha 1)", 1.0))
TARGET = {"rmse_over_std": 0.005, "max_abs_over_std": 0.03}   # the search's goal on validation
# The nodes each ONNX method quantizes, which the mixed-precision stage may leave in float.
ONNX_RANKED = {"dynamic": ("MatMul", "Gemm"), "static": ("MatMul", "Gemm", "Add", "Sub", "Mul", "Sigmoid", "Tanh")}
TIMED_CALLS = 300
VAL_ROWS = 20_000       # the most validation readings each candidate streams (many series: every k-th series)


@dataclass
class Candidate:
    label: str
    file: str                      # built in the writer's folder
    engine: str
    precision: str
    input_scale: np.ndarray | None = None
    recipe: dict = field(default_factory=dict)     # how to rebuild it: graph, calibration, precise ops
    val: dict = field(default_factory=dict)
    bytes: int = 0
    invoke_us: float = 0.0

    @property
    def precise(self) -> list:
        return self.recipe.get("precise", [])

    def artifact(self) -> dict:
        extra = {} if self.input_scale is None else {"input_scale": [float(v) for v in self.input_scale]}
        return {"engine": self.engine, "precision": self.precision, **extra}

    def within(self) -> bool:
        return all(self.val[k] <= v for k, v in TARGET.items())

    def row(self, chosen: bool) -> dict:
        return {"candidate": self.label, "val_rmse_over_std": self.val["rmse_over_std"],
                "val_max_abs_over_std": self.val["max_abs_over_std"], "bytes": self.bytes,
                "invoke_us": round(self.invoke_us, 2), "precise_ops": [p["name"] for p in self.precise],
                "chosen": chosen}


class Search:
    """Builds and measures candidates in the bundle writer's temporary folder."""

    def __init__(self, w, data, calib: np.ndarray, xs: np.ndarray, hs: np.ndarray):
        self.w, self.data, self.xs, self.hs = w, data, xs, hs
        self.md = w.manifest["model"]
        self.val = data.streams("val", longest=True, rows=VAL_ROWS)     # each series' longest validation range
        with np.load(w.path("weights.npz")) as z:
            self.w_ih = layer_weights(z, 0)[0]            # the first layer's w_ih [3H, I]
        self.ranges = input_ranges(calib)
        self.rankings = {}                                # file -> the per-op sensitivity table
        self.weight_floor = None                          # validation drift of int8 weights alone
        self._float_out = {}
        self._count = 0
        self._cal = None                                  # the float TFLite graph's calibration, made once

    def scales(self):
        """(label, s or None) for every input option."""
        for label, alpha in INPUT_OPTIONS:
            yield label, None if alpha is None else smooth_scale(self.ranges, self.w_ih, alpha)

    def _name(self, suffix: str) -> str:
        self._count += 1
        return f".cand{self._count}.{suffix}"

    def measure(self, c: Candidate, float_file: str) -> Candidate:
        """Validation drift vs the float artifact, file size and the native call's median time."""
        q = open_engine(self.w.path(c.file), c.artifact(), self.md)
        if float_file not in self._float_out:
            f = open_engine(self.w.path(float_file), {"engine": c.engine, "precision": "fp32"}, self.md)
            self._float_out[float_file] = streamed(f, self.data, self.val, self.md)
        yf, bf, _ = self._float_out[float_file]
        c.val = output_drift(yf, streamed(q, self.data, self.val, self.md)[0], float(np.std(bf)))
        c.bytes = os.path.getsize(self.w.path(c.file))
        ts = []
        for _ in range(TIMED_CALLS):
            t0 = time.perf_counter_ns()
            q.invoke()
            ts.append(time.perf_counter_ns() - t0)
        c.invoke_us = float(np.median(ts)) / 1e3
        return c

    def _float_graph(self, kind: str, i: int, s) -> str:
        """The float graph a candidate quantizes: the bundle's, or an input-scaled copy of it."""
        src = "step.onnx" if kind == "onnx" else "step.tflite"
        if s is None:
            return src
        name = f".eq{i}.{src}"
        if not os.path.exists(self.w.path(name)):
            (equalize_onnx if kind == "onnx" else equalize_tflite)(self.w.path(src), self.w.path(name), s)
        return name

    # -- ONNX ---------------------------------------------------------------------------------
    def _onnx(self, label: str, recipe: dict, s) -> Candidate:
        c = Candidate(label, self._name("int8.onnx"), "onnxruntime", "int8", s, recipe)
        xs = self.xs if s is None else (self.xs / s).astype(np.float32)
        quantize_onnx(self.w.path(recipe["graph"]), self.w.path(c.file), xs, self.hs, recipe["method"],
                      exclude=[p["name"] for p in recipe.get("precise", [])])
        return self.measure(c, "step.onnx")

    def onnx_int8(self) -> list[Candidate]:
        out = []
        for i, (label, s) in enumerate(self.scales()):
            graph = self._float_graph("onnx", i, s)
            # Static QDQ drifted 5-25x more than dynamic on every data set measured (demo,
            # Yosemite, Daphnet): it is tried with the inputs as trained only, as the comparison.
            for method in ("dynamic", "static") if s is None else ("dynamic",):
                out.append(self._onnx(f"{method}, inputs {label}", {"graph": graph, "method": method}, s))
        if not any(c.within() for c in out):
            base = min(out, key=lambda c: c.val["rmse_over_std"])
            kinds = ONNX_RANKED[base.recipe["method"]]
            ops = [{"name": n["name"], "op": n["op"]} for n in onnx_nodes(self.w.path("step.onnx")) if n["op"] in kinds]
            out += self.keep_precise("step.int8.onnx", base, ops, "float",
                                     lambda label, rec: self._onnx(label, rec, base.input_scale))
        return out

    # -- TFLite -------------------------------------------------------------------------------
    def tflite(self, act: str) -> list[Candidate]:
        """int8: every input option x every calibration, then mixed precision if none meets the
        target; int16 activations: as trained, min/max (the int16 grid is fine enough)."""
        if self._cal is None:                            # int8 and int16 share it
            self._cal = TFLiteCalibration(self.w.path("step.tflite"), self.xs, self.hs)
        cal = self._cal
        options = list(self.scales()) if act == "int8" else [("as trained", None)]
        methods = CALIBRATIONS if act == "int8" else ("min/max",)
        out = []
        for i, (label, s) in enumerate(options):
            graph = self._float_graph("tflite", i, s)
            for method in methods:
                out.append(self._tflite(cal, f"full integer ({act}), inputs {label}, {method} ranges", act, s,
                                        {"graph": graph, "calibration": method}))
        if act == "int8":
            self.weight_floor = self._weight_floor()
        if act == "int8" and not any(c.within() for c in out):
            base = min(out, key=lambda c: c.val["rmse_over_std"])
            out += self.keep_precise("step.int8.tflite", base, cal.ops, "int16 activations",
                                     lambda label, rec: self._tflite(cal, label, act, base.input_scale, rec))
        return out

    def _weight_floor(self) -> dict:
        """Validation drift of int8 weights with float activations (not a candidate: not integer)."""
        c = Candidate("int8 weights, float activations", self._name("w8.tflite"), "litert", "int8")
        weight_only(self.w.path("step.tflite"), self.w.path(c.file))
        return {k: v for k, v in self.measure(c, "step.tflite").val.items() if k in TARGET}

    def _tflite(self, cal: TFLiteCalibration, label: str, act: str, s, recipe: dict) -> Candidate:
        c = Candidate(label, self._name(f"{act}.tflite"), "litert", act, s, recipe)
        cal.build(self.w.path(recipe["graph"]), self.w.path(c.file), cal.ranges(recipe["calibration"], s), act,
                  [p["scope"] for p in recipe.get("precise", [])])
        return self.measure(c, "step.tflite")

    # -- mixed precision ----------------------------------------------------------------------
    def keep_precise(self, file: str, base: Candidate, ops: list, how: str, build) -> list[Candidate]:
        """The fewest `ops` at higher precision (`how`) that keep the target, from the precise end:
        with every op precise, each is reverted alone and ranked by the drift that adds (a chain of
        ops shows up link by link, where adding ops one at a time sees nothing until the chain is
        whole); then they are reverted in that order, each for good if the target still holds."""
        def name(kept):
            rest = [o["name"] for o in ops if o not in kept]
            what = ("every op" if not rest else ", ".join(o["name"] for o in kept) if len(kept) <= 8 else
                    f"every op but {', '.join(rest)}" if len(rest) <= 3 else f"{len(kept)} of {len(ops)} ops")
            return f"{base.label} + {what or 'no op'} at {how}"
        full = build(name(ops), {**base.recipe, "precise": list(ops)})
        out = [full]
        if not full.within():
            self.rankings[file] = {"base": base.label, "how": how, "reached": False, "ops": []}
            return out
        singles = [build(name([o for o in ops if o is not op]), {**base.recipe, "precise": [o for o in ops if o is not op]})
                   for op in ops]
        order = sorted(range(len(ops)), key=lambda i: singles[i].val["rmse_over_std"])
        kept = list(ops)
        for i in order:
            trial = [o for o in kept if o is not ops[i]]
            c = singles[i] if len(trial) == len(ops) - 1 else build(name(trial), {**base.recipe, "precise": trial})
            if c is not singles[i]:
                out.append(c)
            if c.within():
                kept = trial
        self.rankings[file] = {"base": base.label, "how": how, "reached": True, "kept": [o["name"] for o in kept],
                               "ops": [{"op": ops[i]["name"], "val_rmse_over_std_reverted": singles[i].val["rmse_over_std"],
                                        "val_max_abs_over_std_reverted": singles[i].val["max_abs_over_std"]}
                                       for i in reversed(order)]}
        return out + singles

    def keep(self, cands: list[Candidate], file: str) -> tuple[Candidate, list[dict]]:
        """Rename the chosen candidate to `file` (see the module docstring); drop the rest."""
        within = [c for c in cands if c.within()]
        if within:
            best = min(within, key=lambda c: (len(c.precise), round(c.val["rmse_over_std"], 4), c.bytes))
        else:
            best = min(cands, key=lambda c: (round(c.val["rmse_over_std"], 4), c.bytes))
        os.replace(self.w.path(best.file), self.w.path(file))
        rows = [c.row(c is best) for c in cands]
        for c in cands:
            if c is not best and os.path.exists(self.w.path(c.file)):
                os.remove(self.w.path(c.file))
        best.file = file
        return best, rows

    def cleanup(self) -> None:
        for name in os.listdir(self.w.tmp):
            if name.startswith((".eq", ".cand")):
                os.remove(self.w.path(name))


def input_grid(manifest: dict, tflite_path: str, input_scale) -> list[dict]:
    """Each feature's int8 input grid step in its own units, for a full-integer TFLite artifact."""
    from runtime.engines import load_interpreter
    interp = load_interpreter(tflite_path)
    x = next(d for d in interp.get_input_details() if len(d["shape"]) == 2)
    q = float(x["quantization"][0]) if x["quantization"][0] else float("nan")
    s = np.ones(len(manifest["features"])) if input_scale is None else np.asarray(input_scale)
    std = manifest["scaler"]["inputs"]["scale"]
    return [{"feature": f["name"], "unit": f["unit"], "grid_step": q * float(si) * float(sd)}
            for f, si, sd in zip(manifest["features"], s, std)]
