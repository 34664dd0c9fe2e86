"""`python -m export.mcu BUNDLE --out DIR [--precision fp32|int8] [--force] [--report]`: the step as C99.

Parses the arguments and calls `export.mcu.write_library` (the generator) and, with --report,
`export.mcu_target.record_report` (Cortex-M builds under QEMU, recorded in the bundle).
"""
from __future__ import annotations

import argparse
import os
import sys

from runtime.args import prog
from runtime.bundle import BundleError

from ..report import mcu_section
from . import PRECISIONS, McuError, write_library


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=prog("python -m export.mcu"), description="The bundle's step as dependency-free C99: "
                                "gru_step.h, gru_step.c and README.md in --out.")
    p.add_argument("bundle")
    p.add_argument("--out", required=True,
                   help="a new or empty folder, or this command's own earlier output (replaced whole)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--series", metavar="ID",
                   help="a bundle of many series: the library for a sensor of this series (its own scales, deadband and "
                        "base); without it, the pooled scale")
    p.add_argument("--force", action="store_true",
                   help="write into an --out folder that holds files this command did not write (it refuses otherwise)")
    p.add_argument("--report", action="store_true",
                   help="also build both precisions for Cortex-M4F/M7/M3 (arm-none-eabi-gcc, qemu-system-arm) and record "
                        "flash, RAM and instructions per step in the bundle's manifest and REPORT.md")
    a = p.parse_args(argv)
    try:
        for path in write_library(a.bundle, a.out, a.precision, a.force, a.series):
            print(path)
        pooled_note(a.bundle, a.series)
        if a.report:
            from ..mcu_target import record_report
            print("\n".join(mcu_section(record_report(a.bundle, os.path.join(a.out, "targets")))))
    except (BundleError, McuError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def pooled_note(bundle: str, series) -> None:
    """One line on stderr when a many-series bundle's library was written in the pooled scale."""
    from runtime.bundle import read_manifest
    from runtime.streams import pooled_note
    known = read_manifest(bundle).get("series") or {}
    if known and series is None:
        print(pooled_note(known, "this library uses"), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
