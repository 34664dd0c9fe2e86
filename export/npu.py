"""`python -m export.npu BUNDLE`: compile the quantized TFLite artifacts for Arm Ethos-U NPUs with Vela.

    python -m export.npu bundles/demo                                  # U55-128 and U65-256
    python -m export.npu bundles/demo --accelerator ethos-u55-128 --out build/npu

Per accelerator and artifact (step.int8.tflite, step.int16.tflite): the graph's ops that Vela
places on the NPU and those left to the CPU (TFLite op names, counted), the NPU cycles per step
and their time at the system's clock, and the SRAM (feature maps) and flash (weights and command
stream) the compiled model uses, all as Vela's performance estimate reports them. The section is
recorded in the bundle's manifest (`npu`) through the one bundle writer; the compiled files are
written only with --out. Vela (`ethos-u-vela`) is a workstation tool (the `mcu` extra).
"""
from __future__ import annotations

import argparse
import csv
import glob
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter

from runtime.args import prog
from runtime.bundle import BundleError, check_artifact, read_manifest

from .writer import BundleWriter, WriteError

# Vela's system configurations (its bundled Arm/vela.ini) with weights in flash and feature maps
# in SRAM: the embedded systems these NPUs sit in. Clocks: U55 High-End Embedded 500 MHz, U65
# Embedded 500 MHz.
SYSTEMS = {"ethos-u55": ("Ethos_U55_High_End_Embedded", "Shared_Sram"),
           "ethos-u65": ("Ethos_U65_Embedded", "Shared_Sram")}
ACCELERATORS = ("ethos-u55-32", "ethos-u55-64", "ethos-u55-128", "ethos-u55-256", "ethos-u65-256", "ethos-u65-512")
DEFAULT_ACCELERATORS = ("ethos-u55-128", "ethos-u65-256")
NPU_OP = "ethos-u"            # the custom op Vela puts in place of what runs on the NPU
KIB = 1024


class NPUError(RuntimeError):
    """Vela cannot compile an artifact, or is not installed; the message names the file."""


def op_counts(path: str) -> Counter:
    """{TFLite op name: count} over every subgraph of a .tflite file (custom ops by their custom name)."""
    from ethosu.vela.tflite import BuiltinOperator
    from ethosu.vela.tflite.Model import Model
    names = {v: k for k, v in vars(BuiltinOperator.BuiltinOperator).items() if not k.startswith("_")}
    with open(path, "rb") as f:
        m = Model.GetRootAsModel(bytearray(f.read()), 0)
    codes = []
    for i in range(m.OperatorCodesLength()):
        oc = m.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        custom = oc.CustomCode()
        codes.append(custom.decode() if code == BuiltinOperator.BuiltinOperator.CUSTOM and custom else names[code])
    out = Counter()
    for s in range(m.SubgraphsLength()):
        sg = m.Subgraphs(s)
        out.update(codes[sg.Operators(j).OpcodeIndex()] for j in range(sg.OperatorsLength()))
    return out


def vela(path: str, accelerator: str, folder: str) -> tuple[dict, str]:
    """Run Vela on one .tflite; returns (its summary CSV row, the compiled file's path)."""
    system, memory = SYSTEMS[accelerator.rsplit("-", 1)[0]]
    cmd = [sys.executable, "-m", "ethosu.vela", path, "--accelerator-config", accelerator, "--config", "Arm/vela.ini",
           "--system-config", system, "--memory-mode", memory, "--output-dir", folder]
    p = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        if "No module named ethosu" in p.stderr:
            raise NPUError("the NPU report needs Vela: pip install -e '.[mcu]' (ethos-u-vela, workstation only)")
        last = (p.stderr.strip() or p.stdout.strip() or "no message").splitlines()[-1][:300]
        raise NPUError(f"{os.path.basename(path)}: Vela could not compile it for {accelerator}: {last}")
    stem = os.path.splitext(os.path.basename(path))[0]
    with open(glob.glob(os.path.join(folder, f"{stem}_summary_*.csv"))[0], newline="") as f:
        row = next(csv.DictReader(f))
    return row, os.path.join(folder, f"{stem}_vela.tflite")


def placement(source: str, compiled: str) -> tuple[dict, dict]:
    """({op: count} on the NPU, {op: count} on the CPU): what Vela left as TFLite ops runs on the CPU."""
    before, after = op_counts(source), op_counts(compiled)
    cpu = Counter({op: n for op, n in after.items() if op != NPU_OP})
    return dict(sorted((before - cpu).items())), dict(sorted(cpu.items()))


def npu_entry(path: str, accelerator: str, folder: str) -> tuple[dict, str]:
    """One artifact on one accelerator: the section's entry and the compiled file's path."""
    row, compiled = vela(path, accelerator, folder)
    npu_ops, cpu_ops = placement(path, compiled)
    flash = float(row["off_chip_flash_memory_used"]) + float(row["on_chip_flash_memory_used"])
    return {"npu_ops": npu_ops, "cpu_ops": cpu_ops, "cycles": int(float(row["cycles_total"])),
            "time_us": round(float(row["inference_time"]) * 1e6, 3),
            "sram_bytes": round(float(row["sram_memory_used"]) * KIB),
            "flash_bytes": round(flash * KIB)}, compiled


def quantized_tflite(manifest: dict) -> list[dict]:
    """The bundle's batch-1 int8 and int16 TFLite artifacts: what an Ethos-U runs."""
    return [a for a in manifest["artifacts"]
            if a["engine"] == "litert" and a["precision"] in ("int8", "int16") and a.get("batch") in (None, 1)]


def npu_section(bundle: str, accelerators=DEFAULT_ACCELERATORS, out: str | None = None) -> dict:
    """The manifest's `npu` section: {accelerator: {file: {npu_ops, cpu_ops, cycles, time_us,
    sram_bytes, flash_bytes}}}; with `out`, the compiled files as out/<stem>.<accelerator>_vela.tflite.

    Raises:
        NPUError: no quantized TFLite artifact, an unknown accelerator, or Vela fails (naming the file).
        BundleError: the bundle does not check out.
    """
    unknown = [a for a in accelerators if a not in ACCELERATORS]
    if unknown or not accelerators:
        raise NPUError(f"unknown accelerator(s) {', '.join(unknown) or '(none)'}; "
                       f"expected some of {', '.join(ACCELERATORS)}")
    m = read_manifest(bundle)
    arts = quantized_tflite(m)
    if not arts:
        raise NPUError(f"{bundle}: no int8 or int16 TFLite artifact to compile; "
                       f"run `python -m quantize {bundle}` first")
    section = {}
    with tempfile.TemporaryDirectory() as tmp:
        for acc in accelerators:
            section[acc] = {}
            for art in arts:
                folder = os.path.join(tmp, acc)
                section[acc][art["file"]], compiled = npu_entry(check_artifact(bundle, art), acc, folder)
                if out:
                    os.makedirs(out, exist_ok=True)
                    stem = os.path.splitext(art["file"])[0]
                    shutil.copy(compiled, os.path.join(out, f"{stem}.{acc}_vela.tflite"))
    return section


def record(bundle: str, section: dict, sign_key: str | None = None) -> dict:
    """Write the section into the bundle's manifest (`npu`) through the one bundle writer."""
    with BundleWriter(bundle, base=bundle) as w:
        w.manifest["npu"] = section
        w.sign_key = sign_key
    return w.manifest


def table(section: dict) -> str:
    """The section as a Markdown table, one row per accelerator and artifact."""
    lines = ["| accelerator | artifact | ops on NPU | ops on CPU | cycles/step | µs/step | SRAM (B) | flash (B) |",
             "|---|---|---|---|---|---|---|---|"]
    for acc, files in section.items():
        for f, e in files.items():
            cpu = ", ".join(f"{op} x{n}" for op, n in e["cpu_ops"].items()) or "0"
            lines.append(f"| {acc} | {f} | {sum(e['npu_ops'].values())} | {cpu} | {e['cycles']} | "
                         f"{e['time_us']:.1f} | {e['sram_bytes']} | {e['flash_bytes']} |")
    return "\n".join(lines)


def _accelerators(text: str) -> tuple:
    vals = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    unknown = [v for v in vals if v not in ACCELERATORS]
    if unknown or not vals:
        raise argparse.ArgumentTypeError(f"unknown accelerator(s) {', '.join(unknown) or '(none)'}; expected a "
                                         f"comma-separated subset of {', '.join(ACCELERATORS)}")
    return vals


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=prog("python -m export.npu"), description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("--accelerator", type=_accelerators, default=DEFAULT_ACCELERATORS,
                   help="Ethos-U configurations, comma-separated")
    p.add_argument("--out", help="also write the Vela-compiled .tflite files into this folder")
    p.add_argument("--no-record", action="store_true", help="print the report without writing it into the manifest")
    p.add_argument("--sign", metavar="KEY", help="sign the rewritten manifest with this OpenSSH private key")
    a = p.parse_args(argv)
    try:
        section = npu_section(a.bundle, a.accelerator, a.out)
        if not a.no_record:
            signed = os.path.exists(os.path.join(a.bundle, "manifest.sig"))
            record(a.bundle, section, a.sign)
            if signed and not a.sign:
                print(f"note: {a.bundle}/manifest.sig was removed (the manifest changed); pass --sign KEY to re-sign",
                      file=sys.stderr)
    except (NPUError, BundleError, WriteError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table(section))
    return 0


if __name__ == "__main__":
    sys.exit(main())
