"""`python -m bench.coverage BUNDLE`: realized interval coverage per horizon step on the test split.

Offline (the export's split-conformal quantiles on the float model's streamed test errors) beside
the runtime itself: `Forecaster(intervals=True)` streaming the whole segment from its start, as a
device would, with fixed and with adaptive (ACI) intervals, in fp32 and each quantized precision
present. Only the test split's forecasts are counted. Writes a markdown table (and JSON).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

import runtime
from export.buildfile import build_file_path, device_rows


def test_stream(bundle: str):
    """(raw readings from the start of the test split's segment to its end, index of the test start)."""
    with np.load(build_file_path(bundle), allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
    a, b = max(meta["splits"]["test"], key=lambda r: r[1] - r[0])
    start = max(s for s, e in meta["segments"] if s <= a)
    m = runtime.read_manifest(bundle)
    raw, times = device_rows(bundle, m, start, b + m["model"]["horizon"])
    return raw, (times if times is not None else [None] * len(raw)), a - start


def runtime_coverage(bundle: str, engine: str, precision: str, adapt: bool) -> dict:
    """Coverage per level and horizon step over the test part of the stream, through the runtime."""
    fc = runtime.load(bundle, engine=engine, precision=precision, intervals=True, adapt_intervals=adapt)
    readings, times, test_start = test_stream(bundle)
    before = None
    for t, (r, when) in enumerate(zip(readings, times)):
        if t == test_start:
            before = {k: v.copy() for k, v in fc._tracker._sum.items()}
        fc.step(r, time=when)
    after = fc._tracker._sum
    n = np.maximum(after["n"] - before["n"], 1)
    return {str(lv): [float(v) for v in (after[f"hit{lv}"] - before[f"hit{lv}"]) / n] for lv in fc._tracker.levels}


def coverage_table(bundle: str) -> tuple[str, dict]:
    m = runtime.read_manifest(bundle)
    iv = m["intervals"]
    runs = {"offline (float)": iv["test_coverage_offline"]}
    precisions = sorted({a["precision"] for a in m["artifacts"]}, key=("fp32", "int8", "int16").index)
    for p in precisions:
        runs[f"runtime {p}, fixed"] = runtime_coverage(bundle, "auto", p, adapt=False)
        runs[f"runtime {p}, adaptive"] = runtime_coverage(bundle, "auto", p, adapt=True)
    lines = []
    for lv in iv["levels"]:
        lines += [f"{float(lv):.0%} intervals, realized coverage on the test split ({iv['test_points']} origins):", "",
                  "| run | " + " | ".join(f"+{k + 1}" for k in range(m["model"]["horizon"])) + " |",
                  "|---|" + "---|" * m["model"]["horizon"]]
        for name, cov in runs.items():
            lines.append(f"| {name} | " + " | ".join(f"{100 * c:.1f}%" for c in cov[str(lv)]) + " |")
        lines.append("")
    return "\n".join(lines), runs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.coverage", description=__doc__)
    p.add_argument("bundle")
    p.add_argument("--out", help="write the table here (and the figures as JSON beside it)")
    a = p.parse_args(argv)
    text, runs = coverage_table(a.bundle)
    print(text)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            f.write(f"# Interval coverage: {a.bundle}\n\n{text}\n")
        with open(os.path.splitext(a.out)[0] + ".json", "w") as f:
            json.dump(runs, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
