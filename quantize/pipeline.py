"""The quantize pipeline: calibrate, build int8/int16 artifacts, measure drift, add what is within budget.

Quantize is the second producer of the bundle format: it opens the bundle through the one
writer (export/writer.py), adds artifacts and the manifest's `drift` section, and the writer's
close does the rest (golden outputs, latency, checksums, id, REPORT.md, atomic swap). Its data
comes from `<bundle>.build.npz`, written by export: quantize never imports `train`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from export.buildfile import read_build_file
from export.tflm import TFLMError, over_tier, parity_readings, recorded_section
from export.writer import FORMATS, BundleWriter
from runtime.engines import open_engine
from runtime.forecaster import REJECT_SIGMAS

from .drift import calibration_pairs, drift_for, plot_drift
from .methods import onnx_coverage
from .search import TARGET, Search, input_grid

# Drift budgets, RMSE / std(y) against the float artifact over the continuous test stream. The
# issue started them at 1% (ONNX) and 3% (TFLite int8) with 0.5% as the goal. Measured on the
# demo: 0.16% and 0.29% (goal met); on the tiny hidden-8 test model ONNX int8 drifts 0.56% and
# TFLite int8 3.3%, so the defaults stay at 1% for both int8 paths.
BUDGETS = {"onnx-int8": 0.010, "tflite-int8": 0.010, "tflite-int16": 0.005}
MAE_BUDGET = 0.02     # task MAE may be at most 2% worse than float
SIZE_BUDGET = 0.50    # an int8 file at most half its float file (int16 activations are exempt)
ACTIVATIONS = ("int8", "int16")
TFLM_STEPS = 1000     # closed-loop readings each TFLite artifact steps through TFLite Micro (export/tflm.py)


@dataclass(frozen=True)
class QuantizeOptions:
    formats: tuple = FORMATS
    activations: tuple = ACTIVATIONS
    calibration: str | None = None        # a CSV of readings instead of the training/validation splits
    samples: int = 3000
    range_margin: float = 0.5
    allow_drift: bool = False
    latency_budget_us: float | None = None
    sign_key: str | None = None


@dataclass
class Outcome:
    added: list
    left_out: list          # "file: reason" lines
    report: str
    warnings: list = field(default_factory=list)     # e.g. an artifact TFLite Micro cannot run


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


MIN_CALIBRATION_ROWS = 100     # readings in a --calibration CSV: fewer cannot show an int8 graph its ranges


def calibration_readings(manifest: dict, data, csv_path: str | None) -> np.ndarray:
    """Normalized readings to calibrate on: training + validation splits, or the user's CSV (a bundle
    of many series: a `series` column names each row's series, normalized by its own scaler)."""
    if csv_path is None:
        return data.readings(("train", "val"))
    import pandas as pd
    names = [f["name"] for f in manifest["features"]]
    try:            # series ids as the text they are (1 and 01 are two; NA is one), as training reads them
        df = pd.read_csv(csv_path, dtype={"series": str}, keep_default_na=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the calibration file {csv_path}: {e}") from None
    missing = [n for n in names if n not in df.columns]
    if missing:
        raise ValueError(f"{csv_path}: missing feature column(s) {', '.join(missing)}; expected {', '.join(names)}")
    values = df[names].apply(pd.to_numeric, errors="coerce")
    ids = df["series"] if "series" in df.columns else None
    if ids is not None:                         # a gap is filled from its own series' readings only
        values = values.groupby(ids, sort=False).transform(lambda c: c.ffill().bfill())
    else:
        values = values.ffill().bfill()
    x = _normalized_by_series(manifest, values.to_numpy(dtype=np.float64), ids, csv_path)
    usable = np.isfinite(x).all(axis=1) & (np.abs(x) <= REJECT_SIGMAS).all(axis=1)
    if usable.sum() < MIN_CALIBRATION_ROWS:
        raise ValueError(f"{csv_path}: {int(usable.sum())} usable reading(s) (every feature a number within "
                         f"{REJECT_SIGMAS:g} training spreads); expected at least {MIN_CALIBRATION_ROWS}")
    return x[usable].astype(np.float32)


def _normalized_by_series(manifest: dict, raw: np.ndarray, ids, csv_path: str) -> np.ndarray:
    """raw [N, I] normalized by the pooled scaler, or (many series) each row by its series' own."""
    from runtime.scaler import Scaler
    series = manifest.get("series") or {}
    if not series:
        return Scaler.from_manifest(manifest).normalize(raw, np.float64)
    known = ", ".join(sorted(series)[:5]) + (", ..." if len(series) > 5 else "")
    if ids is None:
        raise ValueError(f"{csv_path}: no 'series' column; this bundle forecasts {len(series)} series, each in its "
                         f"own scale: name each row's series ({known})")
    ids = ids.to_numpy()
    empty = int(sum(not i.strip() for i in ids))
    if empty:
        raise ValueError(f"{csv_path}: {empty} row(s) without a series id; expected each row's series named ({known})")
    unknown = sorted(set(ids) - set(series))
    if unknown:
        raise ValueError(f"{csv_path}: series {', '.join(repr(u[:60]) for u in unknown[:3])} not in this bundle; "
                         f"expected one of {known}")
    out = np.empty_like(raw)
    for sid in set(ids):
        rows = ids == sid
        out[rows] = Scaler.from_dict(series[sid]["inputs"]).normalize(raw[rows], np.float64)
    return out


def _build(search: Search, opts: QuantizeOptions, drift: dict, left_out: list) -> list:
    """(budget kind, chosen Candidate) per requested artifact; the candidate tables into `drift`."""
    built = []
    if "onnx" in opts.formats:
        best, drift["candidates"]["step.int8.onnx"] = search.keep(search.onnx_int8(), "step.int8.onnx")
        drift["onnx_coverage"] = onnx_coverage(search.w.path("step.onnx"), search.w.path("step.int8.onnx"),
                                               [p["name"] for p in best.precise])
        built.append(("onnx-int8", best))
    if "tflite" in opts.formats:
        for act in opts.activations:
            file = f"step.{act}.tflite"
            try:
                cands = search.tflite(act)
            except RuntimeError as e:     # e.g. a LiteRT int16 kernel that refuses this graph's scales
                left_out.append(f"{file}: does not run in litert: {str(e).strip().splitlines()[-1][:300]}")
                continue
            if act == "int8":
                drift["input_grid"] = {"as trained": input_grid(search.w.manifest, search.w.path(cands[0].file), None)}
            best, drift["candidates"][file] = search.keep(cands, file)
            if act == "int8":
                drift["input_grid"]["chosen"] = input_grid(search.w.manifest, search.w.path(file), best.input_scale)
            built.append((f"tflite-{act}", best))
    drift["mixed_precision"] = search.rankings
    if search.weight_floor:
        drift["weight_floor"] = search.weight_floor
    search.cleanup()
    return built


def _report_and_add(w: BundleWriter, data, ref, built, opts: QuantizeOptions, drift: dict, left_out: list) -> list:
    """The test-split drift of each chosen artifact; those within budget (or --allow-drift) are added."""
    md, added = w.manifest["model"], []
    for kind, c in built:
        float_file = "step.onnx" if c.engine == "onnxruntime" else "step.tflite"
        q = open_engine(w.path(c.file), c.artifact(), md)
        f = open_engine(w.path(float_file), {"engine": c.engine, "precision": "fp32"}, md)
        d = drift_for(q, f, ref, data, md)
        d["size_ratio"] = c.bytes / os.path.getsize(w.path(float_file))
        d["chosen"] = c.label
        d["precise_ops"] = [p["name"] for p in c.precise]
        d["over_budget"] = check_budget(kind, d)
        drift["artifacts"][c.file] = d
        if d["over_budget"] and not opts.allow_drift:
            left_out.append(f"{c.file}: " + "; ".join(d["over_budget"]))
            os.remove(w.path(c.file))
            continue
        w.add_artifact(c.file, c.engine, c.precision, 1 if c.engine == "litert" else None,
                       over_budget=bool(d["over_budget"]), **{k: v for k, v in c.artifact().items() if k == "input_scale"})
        added.append(c.file)
    return added


def record_tflm(w: BundleWriter, data) -> list[str]:
    """Measure every batch-1 TFLite artifact in TFLite Micro into `w.manifest["tflm"]`; warning lines.

    An artifact TFLM cannot run is kept, recorded as {"error": ...} naming the op, and warned about;
    without tflite-micro or enough test readings the section is left out (never a stale one kept).
    """
    w.manifest.pop("tflm", None)
    try:
        section, failed = recorded_section(w.tmp, w.manifest, parity_readings(data, TFLM_STEPS, w.out))
    except TFLMError as e:
        return [f"no tflm section: {e}"]
    if section:
        w.manifest["tflm"] = section
    return failed + over_tier(section, w.manifest)


def quantize_bundle(bundle: str, opts: QuantizeOptions) -> Outcome:
    """Quantize `bundle` in place (atomically); returns what was added and what was left out, and why.

    The bundle is read once, by the writer (`w.manifest`, checked); everything below takes it from there.
    """
    with BundleWriter(bundle, base=bundle) as w:
        data = read_build_file(bundle, w.manifest)
        calib = calibration_readings(w.manifest, data, opts.calibration)
        for a in list(w.manifest["artifacts"]):
            if a["precision"] != "fp32":
                w.remove_artifact(a["file"])          # re-quantizing replaces the earlier results
        ref = open_engine(w.path("weights.npz"), {"engine": "numpy"}, w.manifest["model"])
        xs, hs = calibration_pairs(ref, calib, opts.samples, opts.range_margin)
        drift = {"artifacts": {}, "candidates": {}, "chosen_on": "validation split", "reported_on": "test split",
                 "target": TARGET,
                 "budgets": {**BUDGETS, "mae_change": MAE_BUDGET, "size_ratio_int8": SIZE_BUDGET},
                 "calibration": {"source": opts.calibration or "training and validation splits", "pairs": int(len(xs)),
                                 "range_margin": opts.range_margin}}
        left_out = []
        built = _build(Search(w, data, calib, xs, hs), opts, drift, left_out)
        added = _report_and_add(w, data, ref, built, opts, drift, left_out)
        drift["left_out"] = left_out
        plot_drift(drift["artifacts"], w.path("drift.png"))
        w.manifest["drift"] = drift
        warnings = record_tflm(w, data)
        w.latency_budget_us, w.sign_key = opts.latency_budget_us, opts.sign_key
    from export.report import drift_section
    return Outcome(added, left_out, "\n".join(drift_section(drift, every_candidate=False)), warnings)
