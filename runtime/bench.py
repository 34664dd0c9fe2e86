"""`python -m runtime bench`: per-step latency, multi-stream throughput and memory, per artifact.

Every figure is measured in this process, engines interleaved in rounds so machine noise does
not favour one of them; p50/p99 are over all timed steps after a warm-up.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

from .bundle import read_manifest
from .engines import available_engines
from .derived import golden_stream
from .forecaster import load


def rss_mb(key: str = "VmHWM") -> float:
    """This process's peak (VmHWM) or current (VmRSS) resident memory in MB.

    /proc/self/status rather than getrusage: ru_maxrss survives exec, so a child started from a
    big parent (the benchmark has torch loaded) would report the parent's peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # not Linux: best effort


def _readings(bundle: str, n: int):
    """n golden readings, repeated ([n, I_raw]), and their times ([n] epoch seconds, or None)."""
    raw, times = golden_stream(os.path.join(bundle, "golden.npz"))
    return (np.resize(raw, (n, raw.shape[1])).astype(np.float32),
            None if times is None else np.resize(times, n).astype(np.float64))


def step_args(readings: np.ndarray, times) -> list[tuple]:
    """`Forecaster.step` arguments for each reading: (reading,) or (reading, time) with the time as a
    Python float, so that a timed call is the step alone (no indexing or conversion around it)."""
    if times is None:
        return [(r,) for r in readings]
    return list(zip(readings, np.asarray(times, np.float64).tolist()))


def configurations(manifest: dict, streams: int) -> list[tuple[str, str]]:
    """(engine, precision) pairs that have an artifact for this stream count and are installed."""
    installed = available_engines()
    out = []
    for a in manifest["artifacts"]:
        key = (a["engine"], a["precision"])
        if a["engine"] in installed and a.get("batch") in (None, streams) and key not in out:
            out.append(key)
    return out


def time_calls(fn, args_list, timings: list) -> None:
    """Call fn(*args) for each args tuple in `args_list`, appending each call's wall time in ns to `timings`.

    Every figure of the benchmarks is timed here, the same way: a native call as `time_calls(invoke,
    [()] * n, t)`, a step as `time_calls(fc.step, step_args(readings, times), t)`.
    """
    clock = time.perf_counter_ns
    for args in args_list:
        t0 = clock()
        fn(*args)
        timings.append(clock() - t0)


def summary(ns) -> dict:
    """{p50_us, p99_us, steps} of call times in ns (as `time_calls` collects them)."""
    us = np.asarray(ns) / 1e3
    return {"p50_us": float(np.median(us)), "p99_us": float(np.percentile(us, 99)), "steps": len(us)}


def latency(bundle: str, steps: int = 10_000, rounds: int = 5, warmup: int = 1_000, extra=None) -> dict:
    """B=1 p50/p99 µs per step through Forecaster.step and through the raw engine call.

    The raw call is the engine's `invoke()` on its bound buffers: the native step alone, without
    the scaler, input checks and state handling that `Forecaster.step` adds around it.

    `extra` maps a name to a callable(reading) timed in the same interleaved rounds (e.g. a
    PyTorch baseline); its figures come back under that name. Each call is timed by `time_calls`:
    the step as `fc.step(reading, time)`, the native call as `invoke()`, nothing around either.
    """
    m = read_manifest(bundle)
    configs = configurations(m, 1)
    fcs = {c: load(bundle, engine=c[0], precision=c[1]) for c in configs}
    extra = extra or {}
    readings, times = _readings(bundle, steps // rounds)
    args, bare = step_args(readings, times), [(r,) for r in readings]
    no_args = [()] * len(readings)
    t_step = {c: [] for c in configs}
    t_raw = {c: [] for c in configs}
    t_extra = {k: [] for k in extra}
    for a in args[:warmup]:
        for fc in fcs.values():
            fc.step(*a)
    for fn in extra.values():
        time_calls(fn, bare[:warmup], [])
    for _ in range(rounds):                       # interleaved: every engine in every round
        for c, fc in fcs.items():
            time_calls(fc.step, args, t_step[c])
            time_calls(fc.engine.invoke, no_args, t_raw[c])
        for k, fn in extra.items():
            time_calls(fn, bare, t_extra[k])
    out = {k: summary(v) for k, v in t_extra.items()}
    for c in configs:
        s, r = np.asarray(t_step[c]) / 1e3, np.asarray(t_raw[c]) / 1e3
        out[f"{c[0]}/{c[1]}"] = {"artifact": fcs[c].artifact["file"], "steps": len(s),
                                 "step_p50_us": float(np.median(s)), "step_p99_us": float(np.percentile(s, 99)),
                                 "raw_p50_us": float(np.median(r)), "raw_p99_us": float(np.percentile(r, 99)),
                                 "wrapper_ratio": float(np.median(s) / np.median(r))}
    return out


def throughput(bundle: str, streams: int = 64, steps: int = 2_000) -> dict:
    """Stream-steps per second with `streams` sensors batched into each Forecaster.step call; for a
    bundle of many series also the seconds to set every stream's series (`set_series_s`)."""
    m = read_manifest(bundle)
    readings, times = _readings(bundle, steps)
    batch = np.stack([np.roll(readings, k, axis=0) for k in range(streams)], axis=1)   # [T, S, I]
    out = {}
    args = step_args(batch, times)
    ids = sorted(m.get("series") or {})
    for c in configurations(m, streams):
        fc = load(bundle, engine=c[0], precision=c[1], streams=streams)
        t0 = time.perf_counter()
        for k in range(streams if ids else 0):      # many series: each stream its own, as serve maps nodes
            fc.set_series(k, ids[k % len(ids)])
        bind = {"set_series_s": time.perf_counter() - t0} if ids else {}
        for a in args[:200]:
            fc.step(*a)
        t0 = time.perf_counter()
        for a in args:
            fc.step(*a)
        dt = time.perf_counter() - t0
        out[f"{c[0]}/{c[1]}"] = {"artifact": fc.artifact["file"], "streams": streams,
                                 "stream_steps_per_s": float(streams * len(batch) / dt), **bind}
    return out


_CHILD = """
import json, sys, time
t0 = time.perf_counter()
import numpy, runtime
from runtime.bench import rss_mb
t1 = time.perf_counter()
fc = runtime.load(sys.argv[1], engine=sys.argv[2])
t2 = time.perf_counter()
from runtime.derived import golden_stream
r, t = golden_stream(sys.argv[1] + "/golden.npz")
for i in range(int(sys.argv[3])):
    fc.step(r[i % len(r)], time=None if t is None else float(t[i % len(t)]))
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "tensorflow", "onnx", "litert_torch", "pandas"))
print(json.dumps({"engine": fc.engine.name, "import_s": t1 - t0, "load_s": t2 - t1,
                  "peak_rss_mb": rss_mb("VmHWM"), "heavy_modules": heavy,
                  "state_finite": bool(numpy.isfinite(fc.state).all()), "steps": fc.stats["steps"]}))
"""


def runtime_process(bundle: str, engine: str = "auto", steps: int = 10_000) -> dict:
    """A fresh runtime-only process: import time, load time, peak RSS while streaming."""
    p = subprocess.run([sys.executable, "-c", _CHILD, bundle, engine, str(steps)], capture_output=True,
                       text=True, check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return json.loads(p.stdout.strip().splitlines()[-1])


def check_budgets(manifest: dict, lat: dict) -> list[str]:
    """Artifacts whose measured Forecaster.step p99 exceeds the manifest's latency budget."""
    budgets = manifest.get("latency_budget_us", {})
    over = []
    for key, v in lat.items():
        budget = budgets.get(v.get("artifact"))
        if budget is not None and v["step_p99_us"] > budget:
            over.append(f"{v['artifact']} ({key}): p99 {v['step_p99_us']:.1f} us > budget {budget:.1f} us "
                        f"(p50 {v['step_p50_us']:.1f} us)")
    return over


def bench(bundle: str, steps: int = 10_000, streams: int = 64, soak: int = 0) -> dict:
    """All runtime figures for one bundle, as one JSON-ready dict."""
    res = {"bundle": bundle, "bundle_id": read_manifest(bundle)["bundle_id"],
           "latency_b1": latency(bundle, steps), f"throughput_b{streams}": throughput(bundle, streams),
           "runtime_process": runtime_process(bundle), "peak_rss_mb": rss_mb()}
    if soak:
        res["soak"] = soak_test(bundle, soak)
    return res


def soak_test(bundle: str, steps: int) -> dict:
    """Many consecutive steps: RSS before/after and whether the state stayed finite."""
    fc = load(bundle)
    r, times = _readings(bundle, 4096)
    args = step_args(r, times)
    for i in range(10_000):
        fc.step(*args[i % len(args)])
    rss0 = rss_mb("VmRSS")
    t0 = time.perf_counter()
    for i in range(steps):
        fc.step(*args[i % len(args)])
    return {"steps": steps, "engine": fc.engine.name, "seconds": time.perf_counter() - t0,
            "rss_growth_mb": rss_mb("VmRSS") - rss0, "state_finite": bool(np.isfinite(fc.state).all()),
            "state_resets": fc.stats["state_resets"]}
