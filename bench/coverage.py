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
from runtime.forecaster import step_rows


def test_stream(bundle: str):
    """(raw readings from the start of the test split's segment to its end, their times or None,
    index of the test start)."""
    with np.load(build_file_path(bundle), allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
    a, b = max(meta["splits"]["test"], key=lambda r: r[1] - r[0])
    start = max(s for s, e in meta["segments"] if s <= a)
    m = runtime.read_manifest(bundle)
    raw, times = device_rows(bundle, m, start, b + m["model"]["horizon"])
    return raw, times, a - start


def _hits(score: dict) -> dict:
    """{level: hits [K]} and the scored count [K] from a `Forecaster.stats["score"]`."""
    n = np.asarray(score["scored"], np.float64)
    return {lv: np.rint(np.asarray(cov) * n) for lv, cov in score["coverage"].items()}, n


def runtime_coverage(bundle: str, engine: str, precision: str, adapt: bool) -> dict:
    """Coverage per level and horizon step over the test part of the stream, through the runtime:
    the whole segment stepped by `step_rows`, the running score read before and after the test start."""
    fc = runtime.load(bundle, engine=engine, precision=precision, intervals=True, adapt_intervals=adapt)
    readings, times, test_start = test_stream(bundle)
    step_rows(fc, readings[:test_start], None if times is None else times[:test_start])
    hits0, n0 = _hits(fc.stats["score"])
    step_rows(fc, readings[test_start:], None if times is None else times[test_start:])
    hits1, n1 = _hits(fc.stats["score"])
    n = np.maximum(n1 - n0, 1)
    return {lv: [float(v) for v in (hits1[lv] - hits0[lv]) / n] for lv in hits1}


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
