"""`python -m bench BUNDLE --out bench`: the benchmark behind every performance claim.

One process, one bundle, engines interleaved: B=1 latency (PyTorch eager baseline, every engine
and precision, raw engine call and Forecaster.step), B=64 throughput, a hidden-size / layer sweep
on seeded models, a runtime-only process (import time, peak RSS), a 10^6-step soak, artifact
sizes and the drift summary. Writes results.json and REPORT.md (+ latency.png).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np
import torch

from export.writer import tool_versions
from export.convert import export_onnx, export_tflite
from export.step import GRUStep, numpy_weights
from runtime.bench import latency, runtime_process, soak_test, summary, throughput, time_calls
from runtime.bundle import HEAD_NAMES, npz_layer_names, read_manifest
from runtime.residual import through_deadband
from runtime.scaler import Scaler
from runtime.engines import LiteRTEngine, NumpyEngine, OnnxEngine
from train.model import RecurrentConfig, RecurrentModel

from .platform_parity import compare
from .report import write_report
from .serve_load import serve_load


def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine(), "os": platform.platform(),
            "date": time.strftime("%Y-%m-%d"), "tools": tool_versions()}


def torch_model(manifest: dict, bundle: str) -> RecurrentModel:
    """The bundle's GRU rebuilt in PyTorch from weights.npz: the eager baseline a user would write."""
    md = manifest["model"]
    cfg = RecurrentConfig(**{k: md[k] for k in ("input_size", "hidden_size", "num_layers", "horizon",
                                          "dropout", "cell", "residual_input")}, base=md.get("base") or ())
    model = RecurrentModel(cfg).eval()
    with np.load(os.path.join(bundle, "weights.npz")) as w:
        sd = {f"head.{t}": w[n] for n, t in HEAD_NAMES}
        for layer in range(cfg.num_layers):
            sd.update({f"rnn.{t}": w[n] for n, t in npz_layer_names(layer).items()})
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()})
    return model


def torch_stepper(model: RecurrentModel, manifest: dict, streams: int = 1):
    """Eager single step with carried state: normalize, an AR base's lags, model(x[B, 1, I], h), the
    deadband (runtime/residual.py's, on the model's numpy output), denormalize: the work
    Forecaster.step does. Returns the forecast [B, O], raw units, as numpy."""
    sc, out = Scaler.from_manifest(manifest), Scaler.from_manifest(manifest, "targets")
    off, scale = torch.from_numpy(sc.offset), torch.from_numpy(sc.scale)
    md = manifest["model"]
    state = {"h": torch.zeros(md["num_layers"], streams, md["hidden_size"]), "lags": None}
    j, tau = md.get("residual_input"), md.get("deadband")
    coef = torch.tensor(md["base"], dtype=torch.float32) if md.get("base") else None   # an AR base: [p + 1, O]

    def ar_base(x):
        """The AR base [B, 1, O] from each stream's last p levels (runtime/residual.base_of), or None."""
        if coef is None:
            return None
        level, lags = x[:, 0, j:j + 1], state["lags"]
        lags = level.expand(-1, len(coef) - 1) if lags is None else torch.cat([level, lags[:, :-1]], 1)
        state["lags"] = lags
        return (lags @ coef[:-1] + coef[-1])[:, None, :]

    @torch.inference_mode()
    def step(reading):
        x = (torch.as_tensor(reading).reshape(streams, 1, -1) - off) / scale
        y, state["h"] = model(x, state["h"], base=ar_base(x))
        level = None if j is None else x[:, 0, j:j + 1].numpy()                # [B, 1]
        return through_deadband(y[:, 0].numpy(), level, tau) * out.scale[0] + out.offset[0]
    return step


def with_derived(fn, manifest: dict, bundle: str):
    """fn over full model inputs, called with a raw reading: the derived inputs (calendar) are
    computed from the golden readings' times in turn, as runtime.bench feeds Forecaster.step."""
    import itertools
    from runtime.derived import derived_of, golden_stream
    d = derived_of(manifest)
    if d is None or not d.needs_time:
        return fn if d is None else lambda reading: fn(np.concatenate([reading, d.values(None)]).astype(np.float32))
    times = itertools.cycle(golden_stream(os.path.join(bundle, "golden.npz"))[1])
    return lambda reading: fn(np.concatenate([reading, d.values(next(times))]).astype(np.float32))


def torch_bare_gru(model: RecurrentModel, manifest: dict):
    """The bare `nn.GRU` call on one reading with carried state: no scaler, no head, no residual.

    Less work than a forecast; reported beside the full eager step so the comparison is plain.
    """
    md = manifest["model"]
    state = {"h": torch.zeros(md["num_layers"], 1, md["hidden_size"])}

    @torch.inference_mode()
    def step(reading):
        _, state["h"] = model.rnn(torch.from_numpy(reading).view(1, 1, -1), state["h"])
    return step


def torch_throughput(model, manifest, bundle, streams=64, steps=2000) -> float:
    step = torch_stepper(model, manifest, streams)
    from runtime.derived import full_inputs, golden_stream
    raw, times = golden_stream(os.path.join(bundle, "golden.npz"))
    r = np.resize(full_inputs(manifest, raw, times), (steps, int(manifest["model"]["input_size"]))).astype(np.float32)
    batch = np.stack([np.roll(r, k, axis=0) for k in range(streams)], axis=1)
    for b in batch[:200]:
        step(b)
    t0 = time.perf_counter()
    for b in batch:
        step(b)
    return streams * len(batch) / (time.perf_counter() - t0)


def sweep(hidden=(32, 64, 128), layers=(1, 2), inputs=26, steps=3000) -> list[dict]:
    """B=1 latency of each engine's native call on seeded models, beside PyTorch eager, interleaved."""
    rows = []
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((steps, 1, inputs)).astype(np.float32)
    for L in layers:
        for H in hidden:
            torch.manual_seed(0)
            cfg = RecurrentConfig(input_size=inputs, hidden_size=H, num_layers=L, horizon=6, residual_input=0)
            model = RecurrentModel(cfg).eval()
            step = GRUStep(model)
            with tempfile.TemporaryDirectory() as tmp:
                export_onnx(step, os.path.join(tmp, "s.onnx"))
                export_tflite(step, os.path.join(tmp, "s.tflite"), 1)
                engines = {"numpy": NumpyEngine(numpy_weights(step), L, 0),
                           "onnxruntime": OnnxEngine(os.path.join(tmp, "s.onnx"), 1, (L, 1, H), 6, residual_input=0),
                           "litert": LiteRTEngine(os.path.join(tmp, "s.tflite"), residual_input=0)}
                th = torch.zeros(L, 1, H)
                for e in engines.values():
                    e.x[...] = xs[0]
                calls = {k: (e.invoke, [()] * len(xs)) for k, e in engines.items()}   # the native call
                with torch.inference_mode():
                    calls["pytorch eager"] = (lambda x: model(torch.from_numpy(x)[None], th), [(x,) for x in xs])
                    times = {k: [] for k in calls}
                    for k, (fn, args) in calls.items():
                        time_calls(fn, args[:300], [])
                    for _ in range(3):
                        for k, (fn, args) in calls.items():
                            time_calls(fn, args[:steps // 3], times[k])
            row = {"hidden": H, "layers": L, "parameters": sum(p.numel() for p in model.parameters())}
            row.update({f"{k} p50 us": round(summary(v)["p50_us"], 2) for k, v in times.items()})
            rows.append(row)
            print(f"  sweep H={H} L={L}: " + ", ".join(f"{k} {row[f'{k} p50 us']:.1f}" for k in times), flush=True)
    return rows


def executorch_peer(bundle: str, manifest: dict, folder: str) -> tuple:
    """ExecuTorch as a peer (bench/executorch.py): the step exported to `folder`/step.pte with the
    XNNPACK delegate, one thread; (its Forecaster, latency extras "executorch" and "executorch raw"),
    or (None, {}) where executorch is not installed."""
    try:
        from . import executorch as et
    except ImportError:
        return None, {}
    et.single_thread()
    fc = et.forecaster(bundle, manifest, folder)
    return fc, et.latency_extra(fc, bundle)


def as_engine_row(lat: dict, name: str, row: str) -> None:
    """A peer timed as latency extras (`name`: Forecaster.step, `name raw`: the bare call) as an
    engine row like runtime.bench.latency's own, under `row`."""
    if name not in lat:
        return
    step, raw = lat.pop(name), lat.pop(name + " raw")
    lat[row] = {"artifact": "step.pte", "steps": step["steps"], "step_p50_us": step["p50_us"],
                "step_p99_us": step["p99_us"], "raw_p50_us": raw["p50_us"], "raw_p99_us": raw["p99_us"],
                "wrapper_ratio": step["p50_us"] / raw["p50_us"]}


def executorch_throughput(bundle: str, manifest: dict, folder: str, fc) -> dict:
    """B=64 stream-steps/s of the ExecuTorch peer, with its parity against the numpy reference."""
    from . import executorch as et
    fc64 = et.forecaster(bundle, manifest, folder, 64)
    return {"artifact": et.PTE_FILE, "streams": 64, "stream_steps_per_s": et.batch_throughput(fc64, bundle, 64),
            "parity_vs_numpy": et.parity(bundle, manifest, fc.engine)}


def _engines(bundle: str, m: dict, steps: int) -> tuple[dict, dict]:
    """(B=1 latency, B=64 throughput) of every engine, with PyTorch and ExecuTorch beside them."""
    model = torch_model(m, bundle)
    print("latency, B=1 (ExecuTorch beside the engines) ...", flush=True)
    et_dir = tempfile.mkdtemp(prefix="gru-edge-pte-")
    et_fc, et_extra = executorch_peer(bundle, m, et_dir)
    lat = latency(bundle, steps, extra={"pytorch eager": with_derived(torch_stepper(model, m), m, bundle),
                                        "pytorch nn.GRU call": with_derived(torch_bare_gru(model, m), m, bundle),
                                        **et_extra})
    as_engine_row(lat, "executorch", "executorch/fp32")
    print("throughput, B=64 ...", flush=True)
    thr = throughput(bundle, 64)
    thr["pytorch eager"] = {"artifact": "(checkpoint)", "streams": 64,
                            "stream_steps_per_s": torch_throughput(model, m, bundle)}
    if et_fc is not None:
        thr["executorch/fp32"] = executorch_throughput(bundle, m, et_dir, et_fc)
    shutil.rmtree(et_dir, ignore_errors=True)
    return lat, thr


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("bundle")
    p.add_argument("--out", default="bench")
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--soak", type=int, default=1_000_000)
    p.add_argument("--serve-seconds", type=float, default=60.0, help="each serve load run (0: skip them)")
    p.add_argument("--aarch64", default="build/aarch64", help="the emulated aarch64 environment (make test-aarch64 "
                   "builds it); absent: no platform parity")
    a = p.parse_args(argv)
    torch.set_num_threads(1)       # the engines run one thread too; a device has few cores
    m = read_manifest(a.bundle)
    t0 = time.perf_counter()
    lat, thr = _engines(a.bundle, m, a.steps)
    print("sweep ...", flush=True)
    sw = sweep()
    print("runtime-only process and soak ...", flush=True)
    res = {"machine": machine(), "bundle": a.bundle, "bundle_id": m["bundle_id"], "latency_b1": lat,
           "throughput_b64": thr, "sweep": sw, "runtime_process": runtime_process(a.bundle),
           "soak": soak_test(a.bundle, a.soak) if a.soak else None,
           "sizes": {x["file"]: x["bytes"] for x in m["artifacts"]},
           "drift": {k: {"rmse_over_std": v["continuous"]["vs_float"]["rmse_over_std"],
                         "max_abs_over_std": v["continuous"]["vs_float"]["max_abs_over_std"],
                         "mae_change": v["task"]["mae_change"], "size_ratio": v["size_ratio"]}
                     for k, v in m.get("drift", {}).get("artifacts", {}).items()}}
    if a.serve_seconds:
        print("serve under load (mosquitto on loopback) ...", flush=True)
        res["serve_load"] = serve_load(a.bundle, seconds=a.serve_seconds)
    if os.path.isdir(a.aarch64):
        print("aarch64 parity under emulation ...", flush=True)
        res["platform_parity"] = [compare(a.bundle, os.path.join(a.aarch64, f"python{ver}"), cpu, 3000)
                                  for ver, cpu in (("3.11", "cortex-a72"), ("3.13", "cortex-a76"))]
    res["seconds"] = time.perf_counter() - t0
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(res, f, indent=2)
    write_report(res, a.out)
    print(open(os.path.join(a.out, "REPORT.md")).read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
