"""`python -m export CHECKPOINT --out bundles/NAME`: checkpoint → checked bundle."""
from __future__ import annotations

import argparse
import sys

from runtime.args import number, prog
from train.checkpoint import CheckpointError

from .assemble import ExportError, export_bundle
from .quiet import quiet_libraries
from .writer import FORMATS, WriteError


def _ints(text):
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated batch sizes, got '{text}'") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1, got '{text}'")
    return vals


def _levels(text):
    try:
        vals = tuple(sorted({float(v) for v in text.split(",") if v.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated levels such as 0.8,0.95, got '{text}'") from None
    if not vals or not all(0.5 <= v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"interval levels must lie in [0.5, 1), got '{text}'")
    return vals


def _formats(text):
    vals = tuple(v.strip() for v in text.split(",") if v.strip())
    unknown = set(vals) - set(FORMATS)
    if unknown or not vals:
        raise argparse.ArgumentTypeError(f"unknown format(s) {sorted(unknown)}; expected {', '.join(FORMATS)}")
    return vals


def main(argv=None) -> int:
    quiet_libraries()
    p = argparse.ArgumentParser(prog=prog("python -m export"), description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True, help="bundle folder, e.g. bundles/demo")
    p.add_argument("--formats", type=_formats, default=FORMATS)
    p.add_argument("--batch", type=_ints, default=(1, 64),
                   help="TFLite batch sizes (the converter fixes the batch; ONNX has a dynamic batch)")
    p.add_argument("--latency-budget-us", type=number("--latency-budget-us", float, 0, 1e9, lo_open=True),
                   help="p99 budget per step for every artifact (default: 3x the p99 measured here)")
    p.add_argument("--force", action="store_true", help="replace --out even when it is a folder that is not a bundle")
    p.add_argument("--levels", type=_levels, default=(0.8, 0.95), help="forecast interval levels, comma-separated")
    p.add_argument("--sign", metavar="KEY", help="sign the manifest with this OpenSSH private key (ssh-keygen -Y sign)")
    a = p.parse_args(argv)
    try:
        m = export_bundle(a.checkpoint, a.out, a.formats, a.batch, a.latency_budget_us, a.force, a.sign, a.levels)
    except (CheckpointError, ExportError, WriteError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"bundle {a.out} (id {m['bundle_id']}{', signed' if a.sign else ''}):")
    for art in m["artifacts"]:
        err = m["parity"]["max_abs_err"][art["file"]]
        lat = m["latency_us"].get(art["file"])
        print(f"  {art['file']:<22} {art['engine']:<12} {art['precision']:<5} batch {str(art['batch'] or 'any'):<4} "
              f"{art['bytes']:>8} bytes  parity {err:.1e}"
              + (f"  p50 {lat['p50']:.1f} us, budget {m['latency_budget_us'][art['file']]:.0f} us" if lat else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
