"""ExecuTorch as a peer of the runtime's engines: the same GRU step as a `.pte`, timed the same way.

    python -m bench.executorch bundles/demo          # parity, B=1 p50/p99 and B=64 beside the others

The bundle's step (export/step.GRUStep, rebuilt from weights.npz) is exported with torch.export
and lowered to ExecuTorch with the XNNPACK delegate, then run through ExecuTorch's runtime
bindings (`executorch.runtime`) behind the runtime engines' interface (bound x, h → invoke() →
y, h_next), so `Forecaster.step` drives it exactly as it drives LiteRT or onnxruntime. Parity is
checked against the numpy reference closed loop over real readings, at the float tier. It is a
workstation peer for the benchmark, not a device engine: its Python bindings import torch.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from importlib import metadata

import numpy as np

from export.buildfile import read_build_file
from runtime.bench import latency, throughput
from runtime.bundle import TIERS, head_weights, load_weights, npz_layer_names, read_manifest
from runtime.derived import golden_stream
from runtime.engines import open_engine, run_stream
from runtime.forecaster import Forecaster

ENGINE = "executorch"
PTE_FILE = "step.pte"              # a bench artifact, never part of a bundle
PARITY_STEPS = 1000


def step_module(bundle: str, manifest: dict):
    """export/step.GRUStep with the bundle's weights (weights.npz, names from runtime.bundle)."""
    import torch
    from export.step import GRUStep
    from train.model import RecurrentConfig, RecurrentModel
    md = manifest["model"]
    cfg = RecurrentConfig(**{k: md[k] for k in ("input_size", "hidden_size", "num_layers", "horizon",
                                                  "cell", "residual_input")})
    model = RecurrentModel(cfg).eval()
    w = load_weights(os.path.join(bundle, "weights.npz"), md)
    head_w, head_b = head_weights(w)
    sd = {"head.weight": head_w, "head.bias": head_b}
    for layer in range(cfg.num_layers):
        sd.update({f"rnn.{t}": w[n] for n, t in npz_layer_names(layer).items()})
    model.load_state_dict({k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in sd.items()})
    return GRUStep(model).eval()


def export_pte(step, path: str, batch: int) -> int:
    """Write the step at a fixed batch as an XNNPACK-delegated .pte; returns its size in bytes."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    cfg = step.cfg
    example = (torch.zeros(batch, cfg.input_size), torch.zeros(cfg.num_layers, batch, cfg.hidden_size))
    with warnings.catch_warnings():      # torch 2.13's pytree deprecation notes, one per traced call
        warnings.simplefilter("ignore", FutureWarning)
        program = to_edge_transform_and_lower(torch.export.export(step, example),
                                              partitioner=[XnnpackPartitioner()]).to_executorch()
    with open(path, "wb") as f:
        f.write(program.buffer)
    return len(program.buffer)


def single_thread() -> None:
    """ExecuTorch's XNNPACK thread pool at one thread, like every engine in the benchmark."""
    from executorch.extension.pybindings import portable_lib
    if portable_lib._threadpool_get_thread_count() != 1:
        portable_lib._unsafe_reset_threadpool(1)


class ExecuTorchEngine:
    """A .pte step through executorch.runtime with the runtime engines' bound buffers.

    x, h are numpy buffers that the input tensors share (torch.from_numpy, no copy); `invoke`
    runs the method and copies its two outputs into y, h_next.
    """
    name = ENGINE
    input_gain = None

    def __init__(self, path: str, batch: int, in_size: int, state_shape, output_size: int, residual_input=None):
        import torch
        from executorch.runtime import Runtime
        self.method = Runtime.get().load_program(path).load_method("forward")
        layers, _, hidden = state_shape
        self.x = np.zeros((batch, in_size), np.float32)
        self.h = np.zeros((layers, batch, hidden), np.float32)
        self.y = np.zeros((batch, output_size), np.float32)
        self.h_next = np.zeros_like(self.h)
        self._inputs = [torch.from_numpy(self.x), torch.from_numpy(self.h)]
        self.batch, self.residual_input = batch, residual_input

    def invoke(self):
        y, h_next = self.method.execute(self._inputs)
        np.copyto(self.y, y.numpy())
        np.copyto(self.h_next, h_next.numpy())

    def run(self, x, h):
        """One step on copies of x [B, I] and h [L, B, H]: (forecast [B, O], h_next), like every engine."""
        np.copyto(self.x, x)
        np.copyto(self.h, h)
        self.invoke()
        y = self.y.copy()
        if self.residual_input is not None:
            y += self.x[:, self.residual_input:self.residual_input + 1]
        return y, self.h_next


def forecaster(bundle: str, manifest: dict, folder: str, streams: int = 1) -> Forecaster:
    """A Forecaster on the step exported to folder/step[.bN].pte (exported on first use)."""
    md = manifest["model"]
    path = os.path.join(folder, PTE_FILE if streams == 1 else f"step.b{streams}.pte")
    if not os.path.exists(path):
        export_pte(step_module(bundle, manifest), path, streams)
    eng = ExecuTorchEngine(path, streams, md["input_size"], (md["num_layers"], streams, md["hidden_size"]),
                           md["output_size"], md.get("residual_input"))
    art = {"file": os.path.basename(path), "engine": ENGINE, "precision": "fp32", "batch": streams}
    return Forecaster(bundle, manifest, eng, art, streams)


def parity(bundle: str, manifest: dict, engine, steps: int = PARITY_STEPS) -> dict:
    """Max abs error (normalized) against the numpy reference, both closed loop over real readings."""
    x, _ = read_build_file(bundle, manifest).split("test")
    x = np.ascontiguousarray(x[np.isfinite(x).all(axis=1)][:steps], np.float32)
    ref = open_engine(os.path.join(bundle, "weights.npz"), {"engine": "numpy"}, manifest["model"])
    err = float(np.max(np.abs(run_stream(engine, x) - run_stream(ref, x))))
    return {"steps": int(len(x)), "max_abs_err": err, "tier": TIERS["fp32"], "ok": bool(err <= TIERS["fp32"])}


def timed_step(fc: Forecaster, bundle: str):
    """fc.step as a callable(reading) for runtime.bench.latency's `extra`: the golden times in turn
    where the bundle has derived inputs (the same readings and times latency feeds the others)."""
    times = golden_stream(os.path.join(bundle, "golden.npz"))[1]
    if times is None:
        return fc.step
    ts, i = np.asarray(times, np.float64).tolist(), [0]

    def step(reading):
        i[0] += 1
        return fc.step(reading, ts[(i[0] - 1) % len(ts)])
    return step


def batch_throughput(fc: Forecaster, bundle: str, streams: int, steps: int = 2_000) -> float:
    """Stream-steps per second through fc.step, batched as runtime.bench.throughput feeds the others."""
    raw, times = golden_stream(os.path.join(bundle, "golden.npz"))
    readings = np.resize(raw, (steps, raw.shape[1])).astype(np.float32)
    batch = np.stack([np.roll(readings, k, axis=0) for k in range(streams)], axis=1)     # [T, S, I]
    ts = [None] * steps if times is None else np.resize(np.asarray(times, np.float64), steps).tolist()
    for b, t in zip(batch[:200], ts):
        fc.step(b, t)
    t0 = time.perf_counter()
    for b, t in zip(batch, ts):
        fc.step(b, t)
    return streams * steps / (time.perf_counter() - t0)


def latency_extra(fc: Forecaster, bundle: str) -> dict:
    """Callables for runtime.bench.latency's `extra`, timed in the same interleaved rounds as the
    other engines: "executorch" (Forecaster.step) and "executorch raw" (the bare method call)."""
    return {ENGINE: timed_step(fc, bundle), ENGINE + " raw": lambda _: fc.engine.invoke()}


def executorch_results(bundle: str, steps: int = 10_000, streams: int = 64, folder: str | None = None,
                       beside: bool = False) -> dict:
    """{"executorch": {...}} for bench/results.json: .pte size, parity, B=1 p50/p99 (Forecaster.step
    and the bare method call) and B=`streams` throughput. beside=True also returns the installed
    engines' figures from the same interleaved rounds under "beside"."""
    single_thread()
    m = read_manifest(bundle)
    with tempfile.TemporaryDirectory() as tmp:
        folder = folder or tmp
        fc = forecaster(bundle, m, folder)
        size = os.path.getsize(os.path.join(folder, PTE_FILE))
        check = parity(bundle, m, fc.engine)
        fc.reset()
        lat = latency(bundle, steps, extra=latency_extra(fc, bundle))
        thr = batch_throughput(forecaster(bundle, m, folder, streams), bundle, streams)
        beside_thr = throughput(bundle, streams) if beside else None
    et, raw = lat.pop(ENGINE), lat.pop(ENGINE + " raw")
    out = {ENGINE: {"version": metadata.version("executorch"), "delegate": "XNNPACK", "threads": 1,
                    "pte_bytes": size, "parity_vs_numpy": check,
                    "latency_b1": {"step_p50_us": et["p50_us"], "step_p99_us": et["p99_us"],
                                   "raw_p50_us": raw["p50_us"], "raw_p99_us": raw["p99_us"], "steps": et["steps"]},
                    f"throughput_b{streams}": {"streams": streams, "stream_steps_per_s": thr}}}
    if beside:
        out["beside"] = {"latency_b1": lat, f"throughput_b{streams}": beside_thr}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.executorch", description=__doc__.split("\n")[0])
    p.add_argument("bundle")
    p.add_argument("--steps", type=int, default=10_000, help="timed B=1 steps per engine")
    p.add_argument("--streams", type=int, default=64)
    a = p.parse_args(argv)
    if a.steps < 100 or a.streams < 1:
        p.error(f"need --steps >= 100 and --streams >= 1, got {a.steps} and {a.streams}")
    try:
        res = executorch_results(a.bundle, a.steps, a.streams, beside=True)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(res, indent=2))
    return 0 if res[ENGINE]["parity_vs_numpy"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
