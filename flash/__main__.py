"""`python -m flash {deploy,rollback,status}`: put a bundle live on a device, safely.

deploy: check the device (Python, architecture, free disk), copy the bundle into a temporary
release folder, verify checksums and run `python -m runtime verify` there, and only then switch
`current` atomically. If any step fails, `current` is untouched and the upload is removed.
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile

from runtime.bundle import BundleError, read_manifest

from .device import Device, DeviceError

MIN_PYTHON = (3, 9)
WHEEL_ARCHES = {"x86_64", "aarch64"}   # ai-edge-litert / onnxruntime ship wheels for these
ENGINE_PINS = {"litert": "ai-edge-litert==2.3.0", "onnx": "onnxruntime==1.32.0"}


class FlashError(RuntimeError):
    """A step of the flash failed; the message names the step and the reason."""


def parse_facts(text: str) -> dict:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def check_device(dev: Device, need_kb: int, install_runtime: bool) -> dict:
    p = dev.run("check", timeout=60)
    if p.returncode != 0:
        raise FlashError(f"device check failed on {dev.spec}: {p.stderr.strip() or p.stdout.strip()}")
    facts = parse_facts(p.stdout)
    py = facts.get("python", "none")
    if py == "none":
        raise FlashError(f"{dev.spec}: no Python at '{dev.python}' (set FLASH_DEVICE_PYTHON); need >= 3.9")
    if tuple(int(v) for v in py.split(".")) < MIN_PYTHON:
        raise FlashError(f"{dev.spec}: Python {py} is too old; the runtime needs >= 3.9")
    if int(facts.get("free_kb", "0")) < need_kb:
        raise FlashError(f"{dev.spec}: {int(facts['free_kb']) // 1024} MB free under {dev.root}, "
                         f"need {need_kb // 1024 + 1} MB")
    if install_runtime and facts["arch"] not in WHEEL_ARCHES:
        raise FlashError(f"{dev.spec}: architecture {facts['arch']} has no engine wheels; "
                         f"supported: {', '.join(sorted(WHEEL_ARCHES))}")
    if not install_runtime and facts.get("runtime") != "ok":
        raise FlashError(f"{dev.spec}: the runtime is not installed there (numpy + runtime not importable by "
                         f"{dev.python}); flash with FLASH_RUNTIME=1 to install it from a wheel")
    return facts


def build_wheelhouse(arch: str, python: str, engine: str, out: str) -> str:
    """The runtime wheel (make wheel) plus numpy and the engine, downloaded for the device's platform."""
    os.makedirs(out, exist_ok=True)
    for old in glob.glob(os.path.join(out, "gru_edge-*.whl")):
        os.remove(old)
    wheel = build_wheel()
    plats = [f"manylinux{v}_{arch}" for v in ("2014", "_2_17", "_2_24", "_2_27", "_2_28")]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--python-version", python,
           "--implementation", "cp", "-d", out, ENGINE_PINS[engine], "numpy"]
    for plat in plats:
        cmd += ["--platform", plat]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise FlashError(f"cannot fetch {engine} wheels for {arch}/Python {python}: {p.stderr.strip()[-300:]}")
    shutil.copy(wheel, out)
    return out


def build_wheel(out: str = "dist") -> str:
    """The project's wheel, built fresh from this checkout (what `make wheel` runs)."""
    for old in glob.glob(os.path.join(out, "gru_edge-*.whl")):
        os.remove(old)
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", out, "."],
                       capture_output=True, text=True)
    wheels = glob.glob(os.path.join(out, "gru_edge-*.whl"))
    if p.returncode != 0 or not wheels:
        raise FlashError(f"building the runtime wheel failed: {p.stderr.strip()[-300:]}")
    return wheels[0]


def write_checksums(bundle: str, manifest: dict, dest: str) -> None:
    with open(dest, "w") as f:
        for a in manifest["artifacts"]:
            f.write(f"{a['sha256']}  {a['file']}\n")
        f.write(f"{manifest['golden']['sha256']}  {manifest['golden']['file']}\n")


def deploy(bundle: str, dev: Device, install_runtime: bool = False, engine: str = "litert") -> str:
    """Flash `bundle` to `dev`; returns what happened. Raises FlashError/DeviceError naming the step."""
    try:
        m = read_manifest(bundle)
    except BundleError as e:
        raise FlashError(str(e)) from None
    size_kb = sum(os.path.getsize(os.path.join(bundle, f)) for f in os.listdir(bundle)) // 1024
    facts = check_device(dev, 3 * size_kb + (200_000 if install_runtime else 0), install_runtime)
    bid = m["bundle_id"]
    if install_runtime:
        house = build_wheelhouse(facts["arch"], facts["python"], engine,
                                 os.path.join("build", f"wheelhouse-{facts['arch']}-py{facts['python']}-{engine}"))
        dev.upload(house, "wheelhouse")
        p = dev.run("install-runtime", engine)
        if p.returncode != 0:
            raise FlashError(f"installing the runtime on {dev.spec} failed: {p.stderr.strip()[-500:]}")
    tmp = f".tmp-{bid}-{os.getpid()}"
    try:
        with tempfile.TemporaryDirectory() as stage:
            write_checksums(bundle, m, os.path.join(stage, "SHA256SUMS"))
            dev.upload(bundle, f"releases/{tmp}")
            dev.upload(stage, f"releases/{tmp}")
        p = dev.run("verify", tmp)
        if p.returncode != 0:
            detail = (p.stdout + p.stderr).strip().splitlines()
            raise FlashError(f"verification on {dev.spec} failed, {bid} not activated: " + " | ".join(detail[-6:]))
        p = dev.run("activate", tmp, bid)
        if p.returncode != 0:
            raise FlashError(f"switching current on {dev.spec} failed: {p.stderr.strip()}")
    except (FlashError, DeviceError):
        try:
            dev.run("discard", tmp, timeout=60)
        except DeviceError:
            pass    # unreachable now: the next flash drops leftover uploads (never live)
        raise
    return "already live" if "already live" in p.stdout else f"{bid} is live on {dev.spec}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m flash", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("deploy")
    d.add_argument("bundle")
    for s in (d, sub.add_parser("rollback"), sub.add_parser("status")):
        s.add_argument("--device", required=True, help="user@host[:port], an ssh config alias, or /path")
        s.add_argument("--root", default=os.environ.get("DEVICE_ROOT", "gru-edge"),
                       help="folder on the device (relative to the login's home)")
    d.add_argument("--install-runtime", action="store_true", help="install the runtime from a wheel into <root>/venv")
    d.add_argument("--engine", choices=sorted(ENGINE_PINS), default="litert")
    sub.add_parser("wheel", help="build dist/gru_edge-*.whl (the device install)")
    a = p.parse_args(argv)
    if a.cmd == "wheel":
        print(build_wheel())
        return 0
    dev = Device(a.device, a.root)
    try:
        if a.cmd == "deploy":
            print(deploy(a.bundle, dev, a.install_runtime, a.engine))
            return 0
        r = dev.run(a.cmd, timeout=120)
        print(r.stdout, end="")
        if r.returncode != 0:
            print(f"error: {a.cmd} on {dev.spec}: {r.stderr.strip()}", file=sys.stderr)
        return r.returncode
    except (FlashError, DeviceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
