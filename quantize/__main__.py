"""`python -m quantize bundles/NAME`: add int8 (and int16-activation) artifacts, with a drift report.

A quantized artifact must earn its place: over its drift budget (RMSE/std(y) vs float over the
streamed test split, task MAE change, file size) it is not added, and the command exits 1.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

import numpy as np

from export.bundle import (artifact_entry, finalize_manifest, golden_outputs, make_engine, measure_latency,
                           replace_dir_atomically)
from runtime.bundle import BundleError, read_manifest
from runtime.engines import NumpyEngine
from train.data import DataError
from train.run import DataSpec, load_prepared

from .drift import calibration_pairs, drift_for, plot_drift
from .methods import onnx_coverage, quantize_onnx, quantize_tflite

# Drift budgets, RMSE / std(y) against the float artifact over the continuous test stream. The
# issue started them at 1% (ONNX) and 3% (TFLite int8) with 0.5% as the goal. Measured on the
# demo: 0.16% and 0.29% (goal met); on the tiny hidden-8 test model ONNX int8 drifts 0.56% and
# TFLite int8 3.3%, so the defaults stay at 1% for both int8 paths.
BUDGETS = {"onnx-int8": 0.010, "tflite-int8": 0.010, "tflite-int16": 0.005}
MAE_BUDGET = 0.02     # task MAE may be at most 2% worse than float
SIZE_BUDGET = 0.50    # a quantized file at most half its float file


def load_data(manifest: dict, calibration: str | None):
    """The bundle's own data and splits (checked against its hash), optionally a user CSV for calibration."""
    spec = manifest["source"]["data_spec"]
    data = load_prepared(DataSpec(**{**spec, "features": tuple(spec["features"]), "exclude": tuple(spec["exclude"])}))
    if data.series.data_hash() != manifest["source"]["data_hash"]:
        raise DataError(f"the data at {spec['data']} has changed since training (hash mismatch)")
    if calibration is None:   # every reading known before the test split: training and validation
        return data, np.concatenate([data.x[lo:hi] for lo, hi in data.splits["train"] + data.splits["val"]])
    from train.data import read_table
    df = read_table(calibration)
    names = [f["name"] for f in manifest["features"]]
    missing = [n for n in names if n not in df.columns]
    if missing:
        raise DataError(f"{calibration}: missing feature column(s) {', '.join(missing)}; expected {', '.join(names)}")
    sc = manifest["scaler"]["inputs"]
    raw = df[names].astype(float).ffill().bfill().to_numpy()
    return data, ((raw - sc["offset"]) / np.asarray(sc["scale"])).astype(np.float32)


def check_budget(kind: str, d: dict, size_ratio: float) -> list[str]:
    over = []
    rmse = d["continuous"]["vs_float"]["rmse_over_std"]
    if rmse > BUDGETS[kind]:
        over.append(f"RMSE/std(y) {100 * rmse:.2f}% > budget {100 * BUDGETS[kind]:.1f}% "
                    f"(by {100 * (rmse - BUDGETS[kind]):.2f} points)")
    if d["task"]["mae_change"] > MAE_BUDGET:
        over.append(f"task MAE {100 * d['task']['mae_change']:+.2f}% vs float > {100 * MAE_BUDGET:.0f}%")
    if size_ratio > SIZE_BUDGET:
        over.append(f"size {100 * size_ratio:.0f}% of float > {100 * SIZE_BUDGET:.0f}%")
    return over


def drift_markdown(drift: dict) -> str:
    lines = ["## Quantization drift", "",
             "Through the runtime engines over the test split (continuous stream, state carried; and with the "
             "state reset every 144 steps). RMSE and max are in % of std(y).", "",
             "| artifact | RMSE vs float | max vs float | cosine | RMSE reset/window | MAE float → quant | size vs float | budget |",
             "|---|---|---|---|---|---|---|---|"]
    for name, d in drift["artifacts"].items():
        c, r, t = d["continuous"]["vs_float"], d["reset_per_window"]["vs_float"], d["task"]
        lines.append(f"| {name} | {100 * c['rmse_over_std']:.2f}% | {100 * c['max_abs_over_std']:.2f}% | "
                     f"{c['cosine']:.5f} | {100 * r['rmse_over_std']:.2f}% | {t['float']['mae']:.4g} → "
                     f"{t['quantized']['mae']:.4g} ({100 * t['mae_change']:+.2f}%) | {100 * d['size_ratio']:.0f}% | "
                     f"{'within' if not d['over_budget'] else 'OVER: ' + '; '.join(d['over_budget'])} |")
    lines += ["", f"ONNX method: {drift.get('onnx_choice', {}).get('reason', 'n/a')}", "", "![drift](drift.png)"]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m quantize", description=__doc__)
    p.add_argument("bundle")
    p.add_argument("--formats", default="onnx,tflite")
    p.add_argument("--activations", default="int8,int16", help="TFLite activation precisions")
    p.add_argument("--calibration", help="CSV of readings to calibrate on instead of the training split")
    p.add_argument("--samples", type=int, default=3000, help="calibration (x, h) pairs")
    p.add_argument("--range-margin", type=float, default=0.5, help="calibration range headroom (0 = none)")
    p.add_argument("--allow-drift", action="store_true", help="keep over-budget artifacts, marked")
    p.add_argument("--latency-budget-us", type=float,
                   help="p99 budget per step for every artifact (default: 3x the p99 measured here)")
    a = p.parse_args(argv)
    try:
        return run(a)
    except (BundleError, DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def float_twin(art: dict, float_file: str) -> dict:
    return {**art, "file": float_file, "precision": "fp32"}


def measure(tmp, art, float_file, ref, data, md) -> dict:
    """Drift of one quantized artifact (through the runtime engines) plus its size ratio."""
    d = drift_for(make_engine(art, tmp, md, 1), make_engine(float_twin(art, float_file), tmp, md, 1), ref, data, md)
    d["size_ratio"] = os.path.getsize(os.path.join(tmp, art["file"])) / os.path.getsize(os.path.join(tmp, float_file))
    return d


def best_onnx_int8(tmp, xs, hs, ref, data, md):
    """Build dynamic and static int8 ONNX, keep the one that drifts less as step.int8.onnx.

    Returns (its drift, the choice with its reason, the coverage report).
    """
    trial = {}
    for method in ("dynamic", "static"):
        path = os.path.join(tmp, f"step.int8.{method}.onnx")
        quantize_onnx(os.path.join(tmp, "step.onnx"), path, xs, hs, method)
        art = {"file": os.path.basename(path), "engine": "onnxruntime", "precision": "int8"}
        trial[method] = measure(tmp, art, "step.onnx", ref, data, md)
    best = min(trial, key=lambda k: trial[k]["continuous"]["vs_float"]["rmse_over_std"])
    os.replace(os.path.join(tmp, f"step.int8.{best}.onnx"), os.path.join(tmp, "step.int8.onnx"))
    for method in trial:
        if method != best:
            os.remove(os.path.join(tmp, f"step.int8.{method}.onnx"))
    rmse = {k: v["continuous"]["vs_float"]["rmse_over_std"] for k, v in trial.items()}
    choice = {"method": best, "rmse_over_std": rmse,
              "reason": f"{best} quantization drifted least over the test stream: "
                        + ", ".join(f"{k} {100 * v:.2f}%" for k, v in rmse.items())}
    return trial[best], choice, onnx_coverage(os.path.join(tmp, "step.onnx"), os.path.join(tmp, "step.int8.onnx"))


def rewrite_golden_and_report(tmp: str, m: dict) -> None:
    """Golden outputs for every artifact now in the bundle; the drift section of REPORT.md."""
    sc = m["scaler"]["inputs"]
    with np.load(os.path.join(tmp, "golden.npz")) as g:
        golden = {k: g[k] for k in g.files if not k.startswith("y/")}
    xg = ((golden["inputs"] - np.asarray(sc["offset"])) / np.asarray(sc["scale"])).astype(np.float32)
    np.savez(os.path.join(tmp, "golden.npz"), **golden, **golden_outputs(tmp, m, xg))
    report = os.path.join(tmp, "REPORT.md")
    with open(report) as f:
        text = f.read().split("## Quantization drift")[0].rstrip()
    with open(report, "w") as f:
        f.write(text + "\n\n" + m["drift"]["report_md"] + "\n")


def run(a) -> int:
    m = read_manifest(a.bundle)
    md = m["model"]
    formats = {f.strip() for f in a.formats.split(",")}
    data, calib_x = load_data(m, a.calibration)
    with np.load(os.path.join(a.bundle, "weights.npz")) as z:
        ref = NumpyEngine({k: z[k] for k in z.files}, md["num_layers"], md.get("residual_input"))
    xs, hs = calibration_pairs(ref, calib_x, md, a.samples, a.range_margin)
    drift = {"artifacts": {}, "budgets": {**BUDGETS, "mae_change": MAE_BUDGET, "size_ratio": SIZE_BUDGET},
             "calibration": {"source": a.calibration or "training and validation splits", "pairs": int(len(xs)),
                             "range_margin": a.range_margin}}
    tmp = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(a.bundle)), prefix=f".{os.path.basename(a.bundle)}.tmp-")
    failed = []
    try:
        shutil.copytree(a.bundle, tmp, dirs_exist_ok=True)
        m["artifacts"] = [x for x in m["artifacts"] if x["precision"] == "fp32"]
        measured = []   # (budget kind, artifact, float file, drift)
        if "onnx" in formats:
            d, drift["onnx_choice"], drift["onnx_coverage"] = best_onnx_int8(tmp, xs, hs, ref, data, md)
            art = {"file": "step.int8.onnx", "engine": "onnxruntime", "precision": "int8"}
            measured.append(("onnx-int8", art, "step.onnx", d))
        if "tflite" in formats:
            for act in (s.strip() for s in a.activations.split(",")):
                art = {"file": f"step.{act}.tflite", "engine": "litert", "precision": act}
                quantize_tflite(os.path.join(tmp, "step.tflite"), os.path.join(tmp, art["file"]), xs, hs, act)
                try:
                    measured.append((f"tflite-{act}", art, "step.tflite", measure(tmp, art, "step.tflite", ref, data, md)))
                except RuntimeError as e:   # e.g. a LiteRT int16 kernel that refuses this graph's scales
                    failed.append(f"{art['file']}: does not run in litert: {str(e).strip().splitlines()[-1][:300]}")
                    os.remove(os.path.join(tmp, art["file"]))
        for kind, art, float_file, d in measured:
            d["over_budget"] = check_budget(kind, d, d["size_ratio"])
            drift["artifacts"][art["file"]] = d
            if d["over_budget"] and not a.allow_drift:
                failed.append(f"{art['file']}: " + "; ".join(d["over_budget"]))
                os.remove(os.path.join(tmp, art["file"]))
                continue
            batch = 1 if art["engine"] == "litert" else None
            m["artifacts"].append({**artifact_entry(tmp, art["file"], art["engine"], art["precision"], batch),
                                   "over_budget": bool(d["over_budget"])})
        plot_drift(drift["artifacts"], os.path.join(tmp, "drift.png"))
        drift["report_md"] = drift_markdown(drift)
        m["drift"] = drift
        rewrite_golden_and_report(tmp, m)
        finalize_manifest(tmp, m)
        measure_latency(tmp, m, a.latency_budget_us)
        finalize_manifest(tmp, m)
        replace_dir_atomically(tmp, a.bundle)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(drift["report_md"].split("![drift]")[0])
    if failed:
        print("not added (--allow-drift keeps artifacts over budget):\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
