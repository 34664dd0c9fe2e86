"""The quantize pipeline: calibrate, build int8/int16 artifacts, measure drift, add what is within budget.

Quantize is the second producer of the bundle format: it opens the bundle through the one
writer (export/writer.py), adds artifacts and the manifest's `drift` section, and the writer's
close does the rest (golden outputs, latency, checksums, id, REPORT.md, atomic swap). Its data
comes from `<bundle>.build.npz`, written by export: quantize never imports `train`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from export.buildfile import read_build_file
from export.writer import BundleWriter
from runtime.bundle import read_manifest
from runtime.engines import open_engine

from .drift import calibration_pairs, drift_for, plot_drift
from .methods import onnx_coverage, quantize_onnx, quantize_tflite

# Drift budgets, RMSE / std(y) against the float artifact over the continuous test stream. The
# issue started them at 1% (ONNX) and 3% (TFLite int8) with 0.5% as the goal. Measured on the
# demo: 0.16% and 0.29% (goal met); on the tiny hidden-8 test model ONNX int8 drifts 0.56% and
# TFLite int8 3.3%, so the defaults stay at 1% for both int8 paths.
BUDGETS = {"onnx-int8": 0.010, "tflite-int8": 0.010, "tflite-int16": 0.005}
MAE_BUDGET = 0.02     # task MAE may be at most 2% worse than float
SIZE_BUDGET = 0.50    # an int8 file at most half its float file (int16 activations are exempt)
FORMATS = ("onnx", "tflite")
ACTIVATIONS = ("int8", "int16")


@dataclass(frozen=True)
class QuantizeOptions:
    formats: tuple = FORMATS
    activations: tuple = ACTIVATIONS
    calibration: str | None = None        # a CSV of readings instead of the training/validation splits
    samples: int = 3000
    range_margin: float = 0.5
    allow_drift: bool = False
    strict: bool = False
    latency_budget_us: float | None = None
    sign_key: str | None = None


@dataclass
class Outcome:
    added: list
    left_out: list          # "file: reason" lines
    report: str


def check_budget(kind: str, d: dict) -> list[str]:
    """Why an artifact is over its budget (empty: within)."""
    over = []
    rmse = d["continuous"]["vs_float"]["rmse_over_std"]
    if rmse > BUDGETS[kind]:
        over.append(f"RMSE/std(y) {100 * rmse:.2f}% > budget {100 * BUDGETS[kind]:.1f}% "
                    f"(by {100 * (rmse - BUDGETS[kind]):.2f} points)")
    if d["task"]["mae_change"] > MAE_BUDGET:
        over.append(f"task MAE {100 * d['task']['mae_change']:+.2f}% vs float > {100 * MAE_BUDGET:.0f}%")
    if kind.endswith("int8") and d["size_ratio"] > SIZE_BUDGET:
        over.append(f"size {100 * d['size_ratio']:.0f}% of float > {100 * SIZE_BUDGET:.0f}%")
    return over


def calibration_readings(manifest: dict, data, csv_path: str | None) -> np.ndarray:
    """Normalized readings to calibrate on: training + validation splits, or the user's CSV."""
    if csv_path is None:
        return data.readings(("train", "val"))
    import pandas as pd
    from runtime.scaler import Scaler
    names = [f["name"] for f in manifest["features"]]
    try:
        df = pd.read_csv(csv_path)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the calibration file {csv_path}: {e}") from None
    missing = [n for n in names if n not in df.columns]
    if missing:
        raise ValueError(f"{csv_path}: missing feature column(s) {', '.join(missing)}; expected {', '.join(names)}")
    raw = df[names].apply(pd.to_numeric, errors="coerce").ffill().bfill().to_numpy(dtype=np.float32)
    return Scaler.from_manifest(manifest).normalize(raw)


class _Session:
    """One quantize run on a bundle writer: the float reference and each measured candidate."""

    def __init__(self, w: BundleWriter, data, opts: QuantizeOptions):
        self.w, self.data, self.opts = w, data, opts
        self.md = w.manifest["model"]
        self.ref = open_engine(w.path("weights.npz"), {"engine": "numpy"}, self.md)

    def engine(self, file: str, engine: str, precision: str):
        return open_engine(self.w.path(file), {"engine": engine, "precision": precision}, self.md)

    def measure(self, file, engine, precision, float_file) -> dict:
        d = drift_for(self.engine(file, engine, precision), self.engine(float_file, engine, "fp32"), self.ref,
                      self.data, self.md)
        d["size_ratio"] = os.path.getsize(self.w.path(file)) / os.path.getsize(self.w.path(float_file))
        return d

    def onnx_int8(self, xs, hs):
        """Dynamic and static int8 ONNX, both measured; the one that drifts less is kept as step.int8.onnx."""
        trial = {}
        for method in ("dynamic", "static"):
            name = f"step.int8.{method}.onnx"
            quantize_onnx(self.w.path("step.onnx"), self.w.path(name), xs, hs, method)
            trial[method] = self.measure(name, "onnxruntime", "int8", "step.onnx")
        best = min(trial, key=lambda k: trial[k]["continuous"]["vs_float"]["rmse_over_std"])
        os.replace(self.w.path(f"step.int8.{best}.onnx"), self.w.path("step.int8.onnx"))
        for method in trial:
            if method != best:
                os.remove(self.w.path(f"step.int8.{method}.onnx"))
        rmse = {k: v["continuous"]["vs_float"]["rmse_over_std"] for k, v in trial.items()}
        choice = {"method": best, "rmse_over_std": rmse,
                  "reason": f"{best} quantization drifted least over the test stream: "
                            + ", ".join(f"{k} {100 * v:.2f}%" for k, v in rmse.items())}
        return trial[best], choice, onnx_coverage(self.w.path("step.onnx"), self.w.path("step.int8.onnx"))

    def tflite(self, act: str, xs, hs):
        """step.<act>.tflite and its drift, or (None, why) when LiteRT cannot run it."""
        file = f"step.{act}.tflite"
        quantize_tflite(self.w.path("step.tflite"), self.w.path(file), xs, hs, act)
        try:
            return self.measure(file, "litert", act, "step.tflite"), None
        except RuntimeError as e:   # e.g. a LiteRT int16 kernel that refuses this graph's scales
            os.remove(self.w.path(file))
            return None, f"{file}: does not run in litert: {str(e).strip().splitlines()[-1][:300]}"


def _candidates(s: _Session, opts: QuantizeOptions, xs, hs, drift: dict, left_out: list):
    """(budget kind, file, engine, precision, drift) for each artifact built and measured."""
    measured = []
    for a in s.w.manifest["artifacts"]:
        if a["precision"] != "fp32":
            s.w.remove_artifact(a["file"])          # re-quantizing replaces the earlier results
    if "onnx" in opts.formats:
        d, drift["onnx_choice"], drift["onnx_coverage"] = s.onnx_int8(xs, hs)
        measured.append(("onnx-int8", "step.int8.onnx", "onnxruntime", "int8", d))
    if "tflite" in opts.formats:
        for act in opts.activations:
            d, why = s.tflite(act, xs, hs)
            if why:
                left_out.append(why)
            else:
                measured.append((f"tflite-{act}", f"step.{act}.tflite", "litert", act, d))
    return measured


def quantize_bundle(bundle: str, opts: QuantizeOptions) -> Outcome:
    """Quantize `bundle` in place (atomically); returns what was added and what was left out, and why."""
    manifest = read_manifest(bundle)
    data = read_build_file(bundle, manifest)
    calib = calibration_readings(manifest, data, opts.calibration)
    with BundleWriter(bundle, base=bundle) as w:
        s = _Session(w, data, opts)
        xs, hs = calibration_pairs(s.ref, calib, opts.samples, opts.range_margin)
        drift = {"artifacts": {}, "budgets": {**BUDGETS, "mae_change": MAE_BUDGET, "size_ratio_int8": SIZE_BUDGET},
                 "calibration": {"source": opts.calibration or "training and validation splits", "pairs": int(len(xs)),
                                 "range_margin": opts.range_margin}}
        added, left_out = [], []
        for kind, file, engine, precision, d in _candidates(s, opts, xs, hs, drift, left_out):
            d["over_budget"] = check_budget(kind, d)
            drift["artifacts"][file] = d
            if d["over_budget"] and not opts.allow_drift:
                left_out.append(f"{file}: " + "; ".join(d["over_budget"]))
                os.remove(w.path(file))
                continue
            w.add_artifact(file, engine, precision, 1 if engine == "litert" else None, over_budget=bool(d["over_budget"]))
            added.append(file)
        drift["left_out"] = left_out
        plot_drift(drift["artifacts"], w.path("drift.png"))
        w.manifest["drift"] = drift
        w.latency_budget_us, w.sign_key = opts.latency_budget_us, opts.sign_key
    from export.report import drift_section
    return Outcome(added, left_out, "\n".join(drift_section(drift)).split("![drift]")[0])
