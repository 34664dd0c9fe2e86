"""Checkpoint → bundle folder: artifacts, parity checks and manifest sections, through the writer.

Export is one of the two producers of the bundle format (quantize is the other): it writes the
float artifacts, checks each one's streaming parity in its real engine, fills the manifest's
model, data and metrics sections, and hands everything else to `BundleWriter.close`. Beside the
bundle it writes `<bundle>.build.npz`, the streams quantize calibrates and measures on, so that
quantize needs neither `train` nor the original CSV.
"""
from __future__ import annotations

import os
import shutil

import numpy as np
import torch

from runtime.bundle import TIERS
from runtime.engines import open_engine, run_stream
from runtime.scaler import Scaler
from train.checkpoint import load_checkpoint
from train.data import row_seconds

from .buildfile import reach_back, write_build_file
from .conformal import LEVELS, intervals_section
from .report import TRAINING_PLOTS
from .convert import export_onnx, export_tflite, tflite_name
from .step import GRUStep, numpy_weights, sequence_reference
from .writer import FORMATS, BundleWriter

GOLDEN_STEPS = 256
GOLDEN_MIN = 32         # fewer readings in the test split's first range and its segment: no self-test
PARITY_STEPS = 1024
# Row b of a batched parity stream is the stream rolled by PARITY_SHIFT * b readings, so every
# row of a batch sees different data and a batch-mixing bug cannot pass.
PARITY_SHIFT = 7


class ExportError(RuntimeError):
    """The export could not produce a bundle that passes its own checks."""


def shifted_batch(x: np.ndarray, batch: int) -> np.ndarray:
    """x [T, I] → [T, B, I], row b rolled by PARITY_SHIFT * b steps."""
    return np.stack([np.roll(x, PARITY_SHIFT * b, axis=0) for b in range(batch)], axis=1).astype(np.float32)


def parity(path: str, art: dict, model, md: dict, x: np.ndarray, batches) -> float:
    """Max abs error (normalized) of stepping the artifact vs the PyTorch model over the sequence.

    NaN-aware: a non-finite output anywhere is an infinite error, never a pass.
    """
    worst = 0.0
    for b in batches:
        xs = shifted_batch(x, b)
        got = run_stream(open_engine(path, art, md, b), xs)
        err = np.abs(got - sequence_reference(model, xs))
        worst = max(worst, float(np.max(err)) if np.isfinite(err).all() else float("inf"))
    return worst


def model_section(cfg) -> dict:
    """The manifest's `model` (each series' own deadband and base go to its `series` entry instead)."""
    d = {k: v for k, v in cfg.to_dict().items() if k not in ("series_deadband", "series_base")}
    return {**d, "output_size": cfg.output_size, "state_shape": [cfg.num_layers, "streams", cfg.hidden_size]}


def data_sections(ck: dict, checkpoint: str) -> dict:
    """The manifest's features, targets, scaler, sample period, metrics and source, from the checkpoint."""
    from runtime.bundle import sha256_file
    units, meta = ck.get("units", {}), ck["metrics"]
    sc = ck["in_scaler"]
    return {
        "features": [{"name": n, "unit": units.get(n, "")} for n in ck["features"]],
        **({"derived_inputs": ck["derived_inputs"]} if ck.get("derived_inputs") else {}),
        "targets": [{"name": ck["target"], "unit": units.get(ck["target"], "")}],
        "scaler": {"inputs": sc, "targets": ck["out_scaler"]},
        **series_scalers(ck),
        "sample_period_s": ck.get("period_s"),
        **({"sample_phase_s": ck["phase_s"]} if ck.get("phase_s") is not None and ck.get("period_s") else {}),
        "metrics": {"test": {k: {**{m: v[m] for m in ("mae", "rmse", "smape", "mase")}, "mae_per_step": v["per_step"]["mae"]}
                             for k, v in meta["test"].items()},
                    "streamed_over_windowed_mae": meta["streamed_over_windowed_mae"],
                    "parameters": meta["parameters"]},
        "latency_budget_us": {}, "drift": {},
        "source": {"checkpoint": os.path.basename(checkpoint), "checkpoint_sha256": sha256_file(checkpoint),
                   "data": ck.get("data_source", ""), "data_hash": ck.get("data_hash", ""),
                   "data_spec": ck.get("data_spec", {})},
    }


def series_scalers(ck: dict) -> dict:
    """The manifest's `series` section (format 6) for a model of many series: each series' input and
    target offset and scale (train/prepare.py fits them on its training split), its own deadband
    where training fitted one (format 8) and its own base where training chose one (format 10), and
    its units where the series write different units in one column (optional, no format bump: an
    older runtime reads the bundle as before); {} for one series."""
    scalers = ck["series"].get("scalers") or {}
    if not scalers:
        return {}
    own = {field: {str(sid): [list(r) for r in v] if field == "base" else list(v)
                   for sid, v in ck["config"].get(f"series_{field}") or ()} for field in ("deadband", "base")}
    own["units"] = ck.get("series_units") or {}
    return {"series": {sid: {**{part: {k: sc[part][k] for k in ("offset", "scale")} for part in ("inputs", "targets")},
                             **{field: own[field][sid] for field in own if own[field].get(sid)}}
                       for sid, sc in scalers.items()}}


def self_test_rows(series: dict) -> tuple[int, int]:
    """The rows [a, b) of the parity check and the golden readings: the test split's first range, and
    where it holds fewer than GOLDEN_STEPS readings (a small series: 1,500 rows leave 225), the
    readings before it in its segment too. They test the graph on the device, they score nothing."""
    a, b = series["splits"]["test"][0]
    return reach_back(series["segments"], a, b, GOLDEN_STEPS), b


def golden_times(ck: dict, start: int, n: int):
    """Epoch seconds of the n golden readings (rows from `start`), for bundles with derived inputs."""
    d, series = ck.get("derived_inputs"), ck["series"]
    if not d or not d.get("inputs"):           # (a section of the clock alone: no input needs a time)
        return None
    wall = row_seconds(start + np.arange(n), ck["period_s"], series["start_s"], series.get("parts") or (),
                       series.get("shifts") or ())
    return wall - d.get("utc_offset_s", 0.0)


def check_weights_finite(model, checkpoint: str) -> None:
    bad = [k for k, v in model.state_dict().items() if not torch.isfinite(v).all()]
    if bad:
        raise ExportError(f"{checkpoint}: non-finite weights in {', '.join(bad)}; the checkpoint cannot be exported")


def write_float_artifacts(w: BundleWriter, step: GRUStep, formats, batches) -> dict:
    """weights.npz, step.onnx and step[.bN].tflite into the writer; returns each graph's op list."""
    np.savez(w.path("weights.npz"), **numpy_weights(step))
    w.add_artifact("weights.npz", "numpy", "fp32")
    ops = {}
    if "onnx" in formats:
        ops["step.onnx"] = export_onnx(step, w.path("step.onnx"))
        w.add_artifact("step.onnx", "onnxruntime", "fp32")
    if "tflite" in formats:
        for b in batches:
            name = tflite_name(b)
            ops[name] = export_tflite(step, w.path(name), b)
            w.add_artifact(name, "litert", "fp32", b)
    return ops


def check_parity(w: BundleWriter, model, x: np.ndarray) -> dict:
    md = w.manifest["model"]
    errs = {a["file"]: parity(w.path(a["file"]), a, model, md, x, [a["batch"]] if a["batch"] else [1, 4])
            for a in w.manifest["artifacts"]}
    failed = {k: v for k, v in errs.items() if not v <= TIERS["fp32"]}
    if failed:
        raise ExportError(f"streaming parity failed (max abs error > {TIERS['fp32']} in normalized units): "
                          + ", ".join(f"{k}: {v:.2e}" for k, v in failed.items()))
    return {"steps": len(x), "max_abs_err": errs, "tier": TIERS["fp32"]}


def export_bundle(checkpoint: str, out: str, formats=FORMATS, batches=(1, 64),
                  latency_budget_us=None, force: bool = False, sign_key=None, levels=LEVELS) -> dict:
    """Build, check and atomically write the bundle at `out` (+ out.build.npz); returns the manifest.

    Raises:
        train.checkpoint.CheckpointError: the checkpoint is missing, corrupt or foreign.
        ExportError: non-finite weights, or an artifact fails its streaming-parity check.
        export.writer.WriteError: `out` is a folder that is not a bundle (without `force`).
    """
    model, ck = load_checkpoint(checkpoint)
    check_weights_finite(model, checkpoint)
    step = GRUStep(model)
    a, b = self_test_rows(ck["series"])
    raw = ck["series"]["inputs"][a:b].numpy().astype(np.float32)
    if len(raw) < GOLDEN_MIN:
        raise ExportError(f"{checkpoint}: the test split's first range and its segment have {len(raw)} readings, "
                          f"need >= {GOLDEN_MIN} for the device self-test")
    with BundleWriter(out, force=force) as w:
        w.manifest["model"] = model_section(model.cfg)
        w.manifest.update(data_sections(ck, checkpoint))
        w.manifest["graph_ops"] = write_float_artifacts(w, step, formats, batches)
        w.manifest["parity"] = check_parity(w, model, Scaler.from_manifest(w.manifest).normalize(raw[:PARITY_STEPS]))
        w.manifest["intervals"] = intervals_section(model, ck, levels)
        w.golden_inputs = raw[:GOLDEN_STEPS, :len(ck["features"])]       # what a device reads
        w.golden_times = golden_times(ck, a, len(w.golden_inputs))
        w.latency_budget_us, w.sign_key = latency_budget_us, sign_key
        stem = os.path.splitext(checkpoint)[0]
        for kind in TRAINING_PLOTS:
            if os.path.exists(f"{stem}.{kind}.png"):
                shutil.copy(f"{stem}.{kind}.png", w.path(f"{kind}.png"))
    write_build_file(out, w.manifest, ck["series"])
    return w.manifest
