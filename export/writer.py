"""The one bundle writer: export creates a bundle through it, quantize adds to one through it.

    with BundleWriter(out, base=None, force=False) as w:     # base: an existing bundle to extend
        path = w.path("step.onnx"); ...write the file...
        w.add_artifact("step.onnx", "onnxruntime", "fp32", batch=None)
        w.manifest["drift"] = {...}
    # close: golden outputs, latency, checksums, bundle id, REPORT.md, signature, atomic swap

Everything that makes a bundle a bundle happens once, in `close`. The bundle is built in a
hidden temporary folder beside the target and swapped in only when complete, so an interrupted
export or quantize never leaves something that looks like a valid bundle; the next run removes
the leftovers of a killed one.
"""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from importlib import metadata

import numpy as np

from runtime.bundle import (FORMAT, FORMAT_VERSION, SIGNATURE_FILE, SIGNATURE_NAMESPACE, TIERS, BundleError,
                            bundle_id, check_manifest, format_version_for, read_manifest, sha256_file)

GOLDEN_FILE = "golden.npz"
FORMATS = ("onnx", "tflite")      # the graph formats export writes in float and quantize quantizes
LATENCY_STEPS = 3000
# Default latency budget: 3x the p99 of Forecaster.step measured when the bundle is built, so
# a budget trips on a real regression, not on a noisy neighbour. It describes the machine that
# built the bundle: pass --latency-budget-us for the device's own figure.
BUDGET_HEADROOM = 3.0
TOOLS = ("numpy", "torch", "onnx", "onnxruntime", "onnxscript", "litert-torch", "ai-edge-litert",
         "ai-edge-quantizer")


class WriteError(RuntimeError):
    """The bundle cannot be written where asked (e.g. the target is a folder that is not a bundle)."""


def tool_versions() -> dict:
    out = {"python": platform.python_version()}
    for name in TOOLS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(out: str) -> list[str]:
    """Delete `.NAME.tmp-PID-*` / `.NAME.old-PID-*` folders beside `out` whose process is gone."""
    parent, name = os.path.split(os.path.abspath(out))
    pattern = re.compile(rf"\.{re.escape(name)}\.(tmp|old)-(\d+)-")
    removed = []
    for entry in os.listdir(parent) if os.path.isdir(parent) else []:
        hit = pattern.match(entry)
        if hit and not _pid_alive(int(hit.group(2))):
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
            removed.append(entry)
    return removed


def is_bundle_folder(path: str) -> bool:
    """A folder whose manifest.json says it is a bundle (readable or not in every other way)."""
    try:
        with open(os.path.join(path, "manifest.json"), encoding="utf-8") as f:
            return json.load(f).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_target(out: str, force: bool) -> None:
    """Refuse to replace an existing folder that is not a bundle (unless `force`)."""
    if not os.path.exists(out):
        return
    if not os.path.isdir(out):
        raise WriteError(f"{out} exists and is not a folder; choose another --out")
    entries = os.listdir(out)
    if entries and not is_bundle_folder(out) and not force:
        raise WriteError(f"{out} exists and is not a bundle ({len(entries)} entries, e.g. {sorted(entries)[0]!r}): "
                         "refusing to replace its contents; choose another --out or pass --force")


def replace_dir_atomically(tmp: str, out: str) -> None:
    """Swap the finished folder `tmp` in at `out`; the old bundle survives until `tmp` is complete."""
    old = None
    if os.path.exists(out):
        old = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(out)),
                               prefix=f".{os.path.basename(os.path.abspath(out))}.old-{os.getpid()}-")
        os.rmdir(old)
        os.replace(out, old)
    os.replace(tmp, out)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def sign_manifest(folder: str, key: str) -> None:
    """manifest.sig: an OpenSSH signature (ssh-keygen -Y sign) over manifest.json."""
    if not os.path.isfile(key):
        raise WriteError(f"signing key {key} does not exist")
    manifest = os.path.join(folder, "manifest.json")
    p = subprocess.run(["ssh-keygen", "-q", "-Y", "sign", "-f", key, "-n", SIGNATURE_NAMESPACE, manifest],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        raise WriteError(f"ssh-keygen could not sign with {key}: {p.stderr.strip()[-300:]}")
    os.replace(manifest + ".sig", os.path.join(folder, SIGNATURE_FILE))


def drop_measurements(m: dict, file: str) -> None:
    """Remove a file's entries from the per-artifact measurement sections (`tflm`: {file: ...},
    `npu`: {accelerator: {file: ...}}), and a section left empty: they described the old file."""
    if file in m.get("tflm", {}):
        del m["tflm"][file]
    for acc in list(m.get("npu", {})):
        m["npu"][acc].pop(file, None)
        if not m["npu"][acc]:
            del m["npu"][acc]
    for key in ("tflm", "npu"):
        if key in m and not m[key]:
            del m[key]


def write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, allow_nan=False)
        f.write("\n")


class BundleWriter:
    """A bundle under construction in a temporary folder; `close()` finishes it (see the module doc)."""

    def __init__(self, out: str, base: str | None = None, force: bool = False):
        self.out = out
        check_target(out, force)
        parent = os.path.dirname(os.path.abspath(out))
        os.makedirs(parent, exist_ok=True)
        remove_stale_temps(out)
        self.tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(os.path.abspath(out))}.tmp-{os.getpid()}-")
        self.golden_inputs = None      # raw readings [T, I_raw] for the device self-test
        self.golden_times = None       # their times (epoch seconds) when the bundle has derived inputs
        self.latency_budget_us = None
        self.sign_key = None
        if base is None:
            self.manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "bundle_id": "", "artifacts": []}
        else:
            self.manifest = read_manifest(base)
            shutil.copytree(base, self.tmp, dirs_exist_ok=True, symlinks=True)
            with np.load(os.path.join(self.tmp, self.manifest["golden"]["file"])) as g:
                self.golden_inputs = g["inputs"]
                self.golden_times = g["times"] if "times" in g.files else None
            self.manifest["format_version"] = FORMAT_VERSION

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        if kind is None:
            self.close()
        else:
            self.discard()
        return False

    def path(self, name: str) -> str:
        return os.path.join(self.tmp, name)

    def add_artifact(self, file: str, engine: str, precision: str, batch=None, **extra) -> dict:
        """List a file already written at `path(file)`; replaces an entry of the same name."""
        self.remove_artifact(file, keep_file=True)
        art = {"file": file, "engine": engine, "precision": precision, "batch": batch, **extra}
        self.manifest["artifacts"].append(art)
        return art

    def remove_artifact(self, file: str, keep_file: bool = False) -> None:
        """Unlist `file` (and delete it unless `keep_file`); what `tflm` and `npu` measured of it goes too."""
        self.manifest["artifacts"] = [a for a in self.manifest["artifacts"] if a["file"] != file]
        drop_measurements(self.manifest, file)
        if not keep_file and os.path.exists(self.path(file)):
            os.remove(self.path(file))

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- close: everything that makes the folder a bundle, once ------------------------------
    def close(self) -> dict:
        """Golden outputs, latency, checksums and id, REPORT.md, signature, atomic swap; the manifest."""
        try:
            m = self.manifest
            m["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            m["tools"] = tool_versions()
            self._write_golden()
            self._seal()
            self._measure_latency()
            from .report import write_report
            write_report(self.tmp, m)
            self._seal()
            if self.sign_key:
                sign_manifest(self.tmp, self.sign_key)
            elif os.path.exists(self.path(SIGNATURE_FILE)):
                os.remove(self.path(SIGNATURE_FILE))      # a signature over the old manifest is void
            replace_dir_atomically(self.tmp, self.out)
        except BaseException:
            self.discard()
            raise
        return m

    def _seal(self) -> None:
        """Checksums of every listed file, the id over the manifest's content, manifest.json."""
        m = self.manifest
        m["format_version"] = format_version_for(m)        # the oldest runtime that computes it right
        for art in m["artifacts"]:
            path = self.path(art["file"])
            art.update(sha256=sha256_file(path), bytes=os.path.getsize(path))
        m["golden"].update(sha256=sha256_file(self.path(GOLDEN_FILE)), bytes=os.path.getsize(self.path(GOLDEN_FILE)))
        m["bundle_id"] = ""
        m.update(json.loads(json.dumps(m, allow_nan=False)))       # exactly what a reader will parse
        m["bundle_id"] = bundle_id(m)
        try:
            check_manifest(m, os.path.join(self.out, "manifest.json"))
        except BundleError as e:
            raise WriteError(f"refusing to write an invalid bundle: {e}") from None
        write_json(self.path("manifest.json"), m)

    def _write_golden(self) -> None:
        """Each batch-1 artifact's forecasts over the golden readings, in raw units, via Forecaster.step
        (without the deadband, as `verify` runs them: a value at a threshold cannot flip across it)."""
        from runtime.engines import open_engine
        from runtime.forecaster import Forecaster, step_rows
        if self.golden_inputs is None:
            raise WriteError("no golden readings: the bundle has no device self-test input")
        m, raw = self.manifest, np.asarray(self.golden_inputs, np.float32)
        m["golden"] = {"file": GOLDEN_FILE, "steps": int(len(raw)), "tiers": TIERS, "units": "raw"}
        out = {}
        for art in m["artifacts"]:
            if art["batch"] in (None, 1):
                eng = open_engine(self.path(art["file"]), art, m["model"], 1)
                fc = Forecaster(self.tmp, m, eng, art, nan_policy="raise", deadband=False)
                out["forecast/" + art["file"]] = step_rows(fc, raw, self.golden_times)
        if self.golden_times is not None:
            out["times"] = np.asarray(self.golden_times, np.float64)
        np.savez(self.path(GOLDEN_FILE), inputs=raw, **out)

    def _measure_latency(self) -> None:
        """Time every batch-1 artifact through Forecaster.step here; record p50/p99 and budgets."""
        from runtime.bench import latency
        m = self.manifest
        lat = latency(self.tmp, steps=LATENCY_STEPS, rounds=3, warmup=300)
        m["latency_us"] = {v["artifact"]: {"p50": round(v["step_p50_us"], 2), "p99": round(v["step_p99_us"], 2)}
                           for v in lat.values()}
        m["latency_machine"] = f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores".strip()
        budget = self.latency_budget_us
        m["latency_budget_us"] = {f: float(budget) if budget else float(np.ceil(BUDGET_HEADROOM * v["p99"] / 10) * 10)
                                  for f, v in m["latency_us"].items()}
