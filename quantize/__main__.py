"""`python -m quantize bundles/NAME`: add int8 (and int16-activation) artifacts, with a drift report.

A quantized artifact must earn its place: over its drift budget (RMSE/std(y) vs float over the
streamed test split, task MAE change, and for int8 the file size) it is not added, and the
report says why. Exit 0 when something requested was added (1 when nothing could be, or with
--strict when anything was left out); 2 for bad input.
"""
from __future__ import annotations

import argparse
import sys

from export.buildfile import BuildFileError
from export.quiet import quiet_libraries
from export.writer import FORMATS, WriteError
from runtime.args import number, prog
from runtime.bundle import BundleError

from .pipeline import ACTIVATIONS, QuantizeOptions, quantize_bundle


def _choices(allowed):
    def parse(text: str) -> tuple:
        vals = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
        unknown = [v for v in vals if v not in allowed]
        if unknown or not vals:
            raise argparse.ArgumentTypeError(f"unknown value(s) {', '.join(unknown) or '(none)'}; "
                                             f"expected a comma-separated subset of {', '.join(allowed)}")
        return vals
    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog("python -m quantize"), description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("--formats", type=_choices(FORMATS), default=FORMATS, help="engines to quantize for")
    p.add_argument("--activations", type=_choices(ACTIVATIONS), default=ACTIVATIONS, help="TFLite activation precisions")
    p.add_argument("--calibration", help="CSV of readings to calibrate on instead of the training split")
    p.add_argument("--samples", type=number("--samples", int, 1, 10_000_000), default=3000,
                   help="calibration (x, h) pairs")
    p.add_argument("--range-margin", type=number("--range-margin", float, 0, 100), default=0.5,
                   help="calibration range headroom (0 = none)")
    p.add_argument("--allow-drift", action="store_true", help="keep over-budget artifacts, marked")
    p.add_argument("--strict", action="store_true", help="exit 1 when any requested artifact was left out")
    p.add_argument("--latency-budget-us", type=number("--latency-budget-us", float, 0, 1e9, lo_open=True),
                   help="p99 budget per step for every artifact (default: 3x the p99 measured here)")
    p.add_argument("--sign", metavar="KEY", help="sign the manifest with this OpenSSH private key (ssh-keygen -Y sign)")
    return p


def main(argv=None) -> int:
    quiet_libraries()
    a = parser().parse_args(argv)
    opts = QuantizeOptions(a.formats, a.activations, a.calibration, a.samples, a.range_margin, a.allow_drift,
                           a.latency_budget_us, a.sign)
    try:
        out = quantize_bundle(a.bundle, opts)
    except (BundleError, BuildFileError, WriteError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out.report)
    print("added: " + (", ".join(out.added) or "nothing"))
    for line in out.warnings:
        print(f"warning: {line}", file=sys.stderr)
    if out.left_out:
        print("left out (--allow-drift keeps artifacts over budget):\n  " + "\n  ".join(out.left_out), file=sys.stderr)
    if not out.added or (a.strict and out.left_out):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
