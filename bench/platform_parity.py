"""Does the bundle forecast the same on another platform? aarch64 (emulated) against this x86_64.

    python -m bench.platform_parity BUNDLE --python build/aarch64/python3.11 [--cpu cortex-a72]
        [--steps 3000] [--json out.json] [--check]

Streams the last `steps` readings of the bundle's build series (<bundle>.build.npz: real data,
thousands of consecutive steps, not only the golden vectors) through every batch-1 artifact, once
in this interpreter and once in the other (`--dump`, which imports only numpy and the runtime),
then reports per artifact the max |other - here| in normalized output units against the
runtime's verify tier for its precision, and the drift of each quantized artifact against the
numpy float reference on the other platform (RMSE and max over std(y)). `--check` exits 1 when
a tier is crossed. Emulated step times are printed for relative costs only, never as device speed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dump(bundle: str, steps: int, out: str) -> None:
    """Forecasts [steps, K] of every installed batch-1 artifact, and µs per step, into out.npz."""
    from runtime.bundle import read_manifest
    from runtime.engines import available_engines
    from runtime.forecaster import load
    from export.buildfile import build_file_path, device_rows
    from runtime.forecaster import step_rows
    m = read_manifest(bundle)
    with np.load(build_file_path(bundle)) as z:
        n = len(z["inputs"])
    x, times = device_rows(bundle, m, n - steps, n)
    got, us = {}, {}
    installed = available_engines()
    for art in m["artifacts"]:
        if art.get("batch") not in (None, 1) or art["engine"] not in installed:
            continue
        fc = load(bundle, art["engine"], art["precision"])
        if fc.artifact["file"] != art["file"]:
            continue
        t0 = time.perf_counter()
        got[art["file"]] = step_rows(fc, x, times)
        us[art["file"]] = 1e6 * (time.perf_counter() - t0) / len(x)
    np.savez(out, us=json.dumps(us), **{f"y/{k}": v for k, v in got.items()})


def _load_dump(path: str):
    with np.load(path) as z:
        return {k[2:]: z[k] for k in z.files if k.startswith("y/")}, json.loads(str(z["us"]))


def compare(bundle: str, python: str, cpu: str | None, steps: int) -> dict:
    from runtime.bundle import TIERS, read_manifest
    m = read_manifest(bundle)
    prec = {a["file"]: a["precision"] for a in m["artifacts"]}
    scale = float(m["scaler"]["targets"]["scale"][0])
    env = {**os.environ, **({"QEMU_CPU": cpu} if cpu else {})}
    with tempfile.TemporaryDirectory() as d:
        here, there = os.path.join(d, "here.npz"), os.path.join(d, "there.npz")
        dump(bundle, steps, here)
        cmd = [python, "-m", "bench.platform_parity", "--dump", bundle, there, "--steps", str(steps)]
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if p.returncode != 0:
            raise RuntimeError(f"{python} --dump exited {p.returncode}: {p.stderr[-2000:]}")
        (y_here, us_here), (y_there, us_there) = _load_dump(here), _load_dump(there)
    ref = y_there.get("weights.npz")
    with np.load(os.path.abspath(bundle).rstrip(os.sep) + ".build.npz") as z:
        std = float(np.nanstd(z["targets"][-steps:]))                     # std(y), as quantize's drift
    rows = {}
    for f in sorted(set(y_here) & set(y_there)):
        err = float(np.nanmax(np.abs(y_there[f] - y_here[f]))) / scale
        row = {"precision": prec[f], "max_abs_diff_norm": err, "tier": TIERS[prec[f]], "ok": bool(err <= TIERS[prec[f]]),
               "us_per_step_here": round(us_here[f], 1), "us_per_step_emulated": round(us_there[f], 1)}
        if prec[f] != "fp32" and ref is not None:
            d = y_there[f] - ref
            row["drift_vs_float"] = {"rmse_over_std": float(np.sqrt(np.nanmean(d ** 2))) / std,
                                     "max_abs_over_std": float(np.nanmax(np.abs(d))) / std}
        rows[f] = row
    missing = sorted(set(y_here) ^ set(y_there))
    return {"python": python, "cpu": cpu, "steps": steps, "artifacts": rows, "not_on_both": missing,
            "ok": all(r["ok"] for r in rows.values()) and bool(rows)}


def print_report(res: dict) -> None:
    print(f"platform parity: {res['python']} (QEMU_CPU={res['cpu']}) vs this machine, {res['steps']} steps")
    for f, r in res["artifacts"].items():
        drift = r.get("drift_vs_float")
        extra = f", drift vs float {100 * drift['rmse_over_std']:.2f}% RMSE/std" if drift else ""
        print(f"  {'ok  ' if r['ok'] else 'FAIL'} {f:<20} {r['precision']:<5} max diff {r['max_abs_diff_norm']:.2e} "
              f"(tier {r['tier']:g}){extra}; {r['us_per_step_emulated']:.0f} us/step emulated vs {r['us_per_step_here']:.0f}")
    if res["not_on_both"]:
        print(f"  not run on both: {', '.join(res['not_on_both'])}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.platform_parity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("out", nargs="?", help="(with --dump) where to write the forecasts")
    p.add_argument("--dump", action="store_true", help="(internal) stream here and write the forecasts")
    p.add_argument("--python", help="the other interpreter, e.g. build/aarch64/python3.11")
    p.add_argument("--cpu", help="QEMU_CPU for the other interpreter (cortex-a72 = Pi 4, cortex-a76 = Pi 5)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--json", help="append the result to this JSON list")
    p.add_argument("--check", action="store_true", help="exit 1 when an artifact crosses its tier")
    a = p.parse_args(argv)
    if a.dump:
        dump(a.bundle, a.steps, a.out)
        return 0
    res = compare(a.bundle, a.python, a.cpu, a.steps)
    print_report(res)
    if a.json:
        prior = json.load(open(a.json)) if os.path.exists(a.json) else []
        with open(a.json, "w") as f:
            json.dump(prior + [res], f, indent=2)
    return 0 if res["ok"] or not a.check else 1


if __name__ == "__main__":
    sys.exit(main())
