"""Put a bundle live on a device, safely: checked here, checked again there, switched atomically.

deploy: check the bundle on the workstation (manifest, id, plain files only), check the device
(Python, architecture, free disk, signature policy), then stream the bundle to the device's
`receive` command, which under the device's deploy lock extracts it into a temporary release,
checks it again (checksums, signature, not older than the live release unless allow_downgrade),
runs `python -m runtime verify` there, and only then puts it at releases/<id> and switches
`current`. If any step fails, `current` is untouched and the upload is removed.
"""
from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import sys
import tempfile

from runtime.bundle import SIGNATURE_FILE, BundleError, bundle_file, read_manifest

from .device import Device

MIN_PYTHON = (3, 9)
WHEEL_ARCHES = {"x86_64", "aarch64"}   # ai-edge-litert / onnxruntime ship wheels for these
ENGINE_PINS = {"litert": "ai-edge-litert==2.3.0", "onnx": "onnxruntime==1.32.0"}


class FlashError(RuntimeError):
    """A step of the flash failed; the message names the step and the reason."""


def parse_facts(text: str) -> dict:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def bundle_files(bundle: str, m: dict) -> list[str]:
    """What is sent: manifest.json, its signature, and the files the manifest lists (each a plain
    name of a regular file). Nothing else in the folder leaves the workstation: the report and plots
    are for people, and a file the signature does not cover (or a hard link to a key) has no place
    on a device. Links and folders among the listed names are refused."""
    listed = [a["file"] for a in m["artifacts"]] + [m["golden"]["file"]]
    extra = [SIGNATURE_FILE] if os.path.lexists(os.path.join(bundle, SIGNATURE_FILE)) else []
    names = list(dict.fromkeys(["manifest.json", *extra, *listed]))
    for name in names:
        try:
            bundle_file(bundle, name, "flash")
        except BundleError as e:
            raise FlashError(f"{e}; refusing to flash") from None
    return names


def unsent(bundle: str, sent: list) -> str:
    """'; not sent ...' naming the files in the folder that stayed here (the report and plots aside)."""
    left = [n for n in sorted(os.listdir(bundle)) if n not in sent and n != "REPORT.md" and not n.endswith(".png")]
    shown = ", ".join(repr(n)[1:-1] for n in left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
    return f"; not sent, as the manifest does not list them: {shown}" if left else ""


def check_device(dev: Device, need_kb: int, install_runtime: bool) -> dict:
    p = dev.command("check", timeout=60)
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
        raise FlashError(f"{dev.spec}: the runtime is not installed there, or is too old (numpy + runtime.trust not "
                         f"importable by {dev.python}); flash with FLASH_RUNTIME=1 to install it from a wheel")
    return facts


CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # wheels are built from a checkout
RUNTIME_PROJECT = os.path.join(CHECKOUT, "packaging", "runtime")   # gru-edge-runtime: the `runtime` package only
PROJECTS = {"gru_edge_runtime": RUNTIME_PROJECT, "gru_edge": CHECKOUT}   # wheel name prefix: project folder


def _pip_wheel(prefix: str, project: str, out: str) -> str:
    """One project's wheel, built fresh from this checkout into `out`; returns its path."""
    for old in glob.glob(os.path.join(out, f"{prefix}-*.whl")):
        os.remove(old)
    # setuptools copies its whole build/lib into a wheel: a stale one would smuggle old packages in.
    for stale in [os.path.join(project, "build", "lib"), *glob.glob(os.path.join(project, "build", "bdist.*"))]:
        shutil.rmtree(stale, ignore_errors=True)
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", out,
                        project], capture_output=True, text=True)
    wheels = glob.glob(os.path.join(out, f"{prefix}-*.whl"))
    if p.returncode != 0 or not wheels:
        raise FlashError(f"building the {prefix} wheel from {project} failed: {p.stderr.strip()[-300:]}")
    return wheels[0]


def build_wheels(out: str = "dist") -> list[str]:
    """Both wheels (what `make wheel` runs): gru_edge_runtime (the device's) and gru_edge (the workstation's)."""
    return [_pip_wheel(prefix, project, out) for prefix, project in PROJECTS.items()]


def build_wheel(out: str = "dist") -> str:
    """Both wheels, built fresh; returns the runtime's (the one a device installs)."""
    return build_wheels(out)[0]


def build_wheelhouse(arch: str, python: str, engine: str, out: str) -> str:
    """The runtime wheel (gru-edge-runtime only) plus numpy and the engine, downloaded for the device's platform."""
    os.makedirs(out, exist_ok=True)
    for old in glob.glob(os.path.join(out, "gru_edge*.whl")):
        os.remove(old)
    wheel = _pip_wheel("gru_edge_runtime", RUNTIME_PROJECT, "dist")
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


def install_runtime(dev: Device, facts: dict, engine: str) -> None:
    house = build_wheelhouse(facts["arch"], facts["python"], engine,
                             os.path.join("build", f"wheelhouse-{facts['arch']}-py{facts['python']}-{engine}"))
    p = dev.command("install-runtime", engine, upload=[(house, sorted(os.listdir(house)))])
    if p.returncode != 0:
        raise FlashError(f"installing the runtime on {dev.spec} failed: {p.stderr.strip()[-500:]}")


def deploy(bundle: str, dev: Device, with_runtime: bool = False, engine: str = "litert",
           allow_downgrade: bool = False, shadow: bool = False) -> str:
    """Flash `bundle` to `dev`; returns what happened. Raises FlashError/DeviceError naming the step.

    allow_downgrade: flash a bundle created before the live release (refused otherwise).
    shadow: verified the same way, then `<root>/shadow` points at it and `current` stays (flash/promote.py).
    """
    try:
        m = read_manifest(bundle)
    except BundleError as e:
        raise FlashError(str(e)) from None
    names = bundle_files(bundle, m)
    size_kb = sum(os.path.getsize(os.path.join(bundle, f)) for f in names) // 1024
    facts = check_device(dev, 3 * size_kb + (200_000 if with_runtime else 0), with_runtime)
    bid = m["bundle_id"]
    if facts.get("signatures") == "required" and SIGNATURE_FILE not in names:
        raise FlashError(f"{dev.spec} requires signed bundles ({dev.root}/allowed_signers) and {bundle} is not signed: "
                         "export or quantize it with --sign KEY")
    if with_runtime:
        install_runtime(dev, facts, engine)
    with tempfile.TemporaryDirectory() as stage:
        with open(os.path.join(stage, "SHA256SUMS"), "w") as f:
            for a in m["artifacts"]:
                f.write(f"{a['sha256']}  {a['file']}\n")
            f.write(f"{m['golden']['sha256']}  {m['golden']['file']}\n")
        p = dev.command("receive", bid, secrets.token_hex(4), "allow-downgrade" if allow_downgrade else "-",
                        *(["shadow"] if shadow else []),
                        upload=[(bundle, names), (stage, ["SHA256SUMS"])])
    if p.returncode != 0:
        detail = (p.stdout + p.stderr).strip().splitlines()
        raise FlashError(f"deploy to {dev.spec} failed, {bid} not activated: " + " | ".join(detail[-6:]))
    lines = [ln for ln in p.stdout.strip().splitlines() if not ln.startswith("serve ")] or [""]
    done = lines[-1]       # activate's line: "[already ]live[; ... replaced]" or "shadow[; ...]"
    note = done.split(";", 1)[1] if ";" in done else ""
    note = (";" + note if note else "") + unsent(bundle, names)
    if done.startswith("shadow"):
        return f"{bid} is the shadow on {dev.spec} (scored beside the live release, not published)" + note
    what = "already live" if done.startswith("already live") else f"{bid} is live on {dev.spec}"
    return what + note
