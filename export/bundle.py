"""Checkpoint → bundle folder: artifacts, parity checks, golden vectors, manifest, report.

The bundle is built in a temporary folder beside the target and swapped in only when complete
and checked, so an interrupted export never leaves something that looks like a valid bundle.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from importlib import metadata

import numpy as np

from runtime.bundle import FORMAT, FORMAT_VERSION, TIERS, sha256_file
from runtime.forecaster import open_engine
from train.checkpoint import load_checkpoint

from .convert import export_onnx, export_tflite, tflite_name
from .step import GRUStep, numpy_weights, sequence_reference

GOLDEN_STEPS = 256
PARITY_STEPS = 1024
LATENCY_STEPS = 3000
# Default latency budget: 3x the p99 of Forecaster.step measured when the bundle is built, so
# a budget trips on a real regression, not on a noisy neighbour. It describes the machine that
# built the bundle: pass --latency-budget-us for the device's own figure.
BUDGET_HEADROOM = 3.0
TOOLS = ("numpy", "torch", "onnx", "onnxruntime", "onnxscript", "litert-torch", "ai-edge-litert",
         "ai-edge-quantizer")


class ExportError(RuntimeError):
    """The export could not produce a bundle that passes its own checks."""


def tool_versions() -> dict:
    out = {"python": platform.python_version()}
    for name in TOOLS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def replace_dir_atomically(tmp: str, out: str) -> None:
    """Swap the finished folder `tmp` in at `out`; the old bundle survives until `tmp` is complete."""
    old = None
    if os.path.exists(out):
        old = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(out)), prefix=".old-")
        os.rmdir(old)
        os.replace(out, old)
    os.replace(tmp, out)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def make_engine(art: dict, folder: str, manifest_model: dict, batch: int):
    return open_engine(os.path.join(folder, art["file"]), art, manifest_model, batch)


def step_stream(engine, x: np.ndarray, batch: int, num_layers: int, hidden: int, reset_every=None) -> np.ndarray:
    """Step the engine over x [T, I] (row b shifted by 7b steps), feeding h_next back: [T, B, O].

    reset_every: zero the state every that many steps (None: carry it through the whole stream).
    """
    xs = np.stack([np.roll(x, 7 * b, axis=0) for b in range(batch)], axis=1).astype(np.float32)  # [T, B, I]
    h = np.zeros((num_layers, batch, hidden), np.float32)
    out = []
    for t in range(len(xs)):
        if reset_every and t % reset_every == 0:
            h[:] = 0.0
        y, h_next = engine.run(xs[t], h)
        out.append(y.copy())
        h = h_next.copy()
    return np.stack(out)


def parity(art, folder, model, md, x, batches) -> float:
    """Max abs error (normalized units) of stepping `art` vs the PyTorch model on the sequence."""
    worst = 0.0
    for b in batches:
        got = step_stream(make_engine(art, folder, md, b), x, b, md["num_layers"], md["hidden_size"])
        worst = max(worst, float(np.max(np.abs(got - sequence_reference(model, x, b)))))
    return worst


def artifact_entry(folder: str, file: str, engine: str, precision: str, batch) -> dict:
    path = os.path.join(folder, file)
    return {"file": file, "engine": engine, "precision": precision, "batch": batch,
            "sha256": sha256_file(path), "bytes": os.path.getsize(path)}


def model_section(cfg) -> dict:
    return {**cfg.to_dict(), "output_size": cfg.output_size,
            "state_shape": [cfg.num_layers, "streams", cfg.hidden_size]}


def build_manifest(ck: dict, cfg, artifacts: list, parity_err: dict, checkpoint: str) -> dict:
    units = ck.get("units", {})
    features = [{"name": n, "unit": units.get(n, ""), "train_mean": float(m), "train_std": float(s)}
                for n, m, s in zip(ck["features"], ck["feature_mean"], ck["feature_std"])]
    metrics = ck["metrics"]
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "bundle_id": "", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": model_section(cfg),
        "features": features,
        "targets": [{"name": t, "unit": units.get(t, "")} for t in ck["targets"]],
        "scaler": {"inputs": ck["in_scaler"], "targets": ck["out_scaler"]},
        "sample_period_s": ck.get("period_s"),
        "artifacts": artifacts,
        "golden": {"file": "golden.npz", "steps": GOLDEN_STEPS, "tiers": TIERS},
        "parity": {"steps": PARITY_STEPS, "max_abs_err": parity_err, "tier": TIERS["fp32"]},
        "metrics": {"test": {k: {m: v[m] for m in ("mae", "rmse", "smape", "mase")}
                             for k, v in metrics["test"].items()},
                    "streamed_over_windowed_mae": metrics["streamed_over_windowed_mae"],
                    "parameters": metrics["parameters"]},
        "latency_budget_us": {},
        "drift": {},
        "source": {"checkpoint": os.path.basename(checkpoint), "checkpoint_sha256": sha256_file(checkpoint),
                   "data": ck.get("data_source", ""), "data_hash": ck.get("data_hash", ""),
                   "data_spec": ck.get("data_spec", {})},
        "tools": tool_versions(),
    }


def measure_latency(folder: str, manifest: dict, budget_us=None) -> None:
    """Time every batch-1 artifact through Forecaster.step here; record p50/p99 and set budgets.

    Needs manifest.json already in `folder` (call finalize_manifest first, and again after).
    """
    from runtime.bench import latency
    lat = latency(folder, steps=LATENCY_STEPS, rounds=3, warmup=300)
    manifest["latency_us"] = {v["artifact"]: {"p50": round(v["step_p50_us"], 2), "p99": round(v["step_p99_us"], 2)}
                              for v in lat.values()}
    manifest["latency_machine"] = f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores".strip()
    manifest["latency_budget_us"] = {f: float(budget_us) if budget_us else float(np.ceil(BUDGET_HEADROOM * v["p99"] / 10) * 10)
                                     for f, v in manifest["latency_us"].items()}


def write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def finalize_manifest(folder: str, manifest: dict) -> dict:
    """Refresh every artifact's checksum, derive the bundle id from them, write manifest.json."""
    for art in manifest["artifacts"]:
        art.update(artifact_entry(folder, art["file"], art["engine"], art["precision"], art["batch"]))
    golden = os.path.join(folder, manifest["golden"]["file"])
    manifest["golden"].update(sha256=sha256_file(golden), bytes=os.path.getsize(golden))
    ids = "".join(a["sha256"] for a in manifest["artifacts"]) + manifest["golden"]["sha256"]
    import hashlib
    manifest["bundle_id"] = hashlib.sha256(ids.encode()).hexdigest()[:16]
    write_json(os.path.join(folder, "manifest.json"), manifest)
    return manifest


def golden_outputs(folder: str, manifest: dict, x_norm: np.ndarray) -> dict:
    """Each batch-1-capable artifact's own outputs over the golden stream, normalized [T, O]."""
    md = manifest["model"]
    out = {}
    for art in manifest["artifacts"]:
        if art["batch"] in (None, 1):
            eng = make_engine(art, folder, md, 1)
            out["y/" + art["file"]] = step_stream(eng, x_norm, 1, md["num_layers"], md["hidden_size"])[:, 0]
    return out


def export_bundle(checkpoint: str, out: str, formats=("onnx", "tflite"), batches=(1, 64),
                  latency_budget_us=None) -> dict:
    """Build, check and atomically write the bundle at `out`; returns the manifest.

    Raises:
        train.checkpoint.CheckpointError: the checkpoint is missing, corrupt or foreign.
        ExportError: an artifact fails its streaming-parity check (nothing is written).
    """
    model, ck = load_checkpoint(checkpoint)
    step = GRUStep(model)
    cfg = model.cfg
    raw = np.asarray(ck["stream_inputs"], np.float32)
    if len(raw) < GOLDEN_STEPS:
        raise ExportError(f"{checkpoint}: only {len(raw)} real readings stored, need >= {GOLDEN_STEPS}")
    sc = ck["in_scaler"]
    x = ((raw - np.asarray(sc["offset"])) / np.asarray(sc["scale"])).astype(np.float32)
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out)}.tmp-")
    try:
        np.savez(os.path.join(tmp, "weights.npz"), **numpy_weights(step))
        arts = [artifact_entry(tmp, "weights.npz", "numpy", "fp32", None)]
        graph_ops = {}
        if "onnx" in formats:
            graph_ops["step.onnx"] = export_onnx(step, os.path.join(tmp, "step.onnx"))
            arts.append(artifact_entry(tmp, "step.onnx", "onnxruntime", "fp32", None))
        if "tflite" in formats:
            for b in batches:
                name = tflite_name(b)
                graph_ops[name] = export_tflite(step, os.path.join(tmp, name), b)
                arts.append(artifact_entry(tmp, name, "litert", "fp32", b))
        md = model_section(cfg)
        errs = {}
        for art in arts:
            bs = [art["batch"]] if art["batch"] else [1, 4]
            errs[art["file"]] = parity(art, tmp, model, md, x[:PARITY_STEPS], bs)
        failed = {k: v for k, v in errs.items() if not v <= TIERS["fp32"]}
        if failed:
            raise ExportError(f"streaming parity failed (max abs error > {TIERS['fp32']} in normalized units): "
                              + ", ".join(f"{k}: {v:.2e}" for k, v in failed.items()))
        manifest = build_manifest(ck, cfg, arts, errs, checkpoint)
        manifest["graph_ops"] = graph_ops
        np.savez(os.path.join(tmp, "golden.npz"), inputs=raw[:GOLDEN_STEPS],
                 reference=sequence_reference(model, x[:GOLDEN_STEPS])[:, 0],
                 **golden_outputs(tmp, manifest, x[:GOLDEN_STEPS]))
        from .report import write_report
        write_report(tmp, manifest, ck, checkpoint, x, raw)
        finalize_manifest(tmp, manifest)
        measure_latency(tmp, manifest, latency_budget_us)
        finalize_manifest(tmp, manifest)
        replace_dir_atomically(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
