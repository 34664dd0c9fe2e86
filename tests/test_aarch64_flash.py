"""`flash --install-runtime` to an aarch64 device (a folder device whose Python is the emulated
arm64 interpreter): the wheels collected are aarch64 ones, and on the device `runtime verify`,
`runtime stream` and `runtime serve` run on arm64 and agree with this machine.

Run by `make test-aarch64`, which builds the emulated device and sets GRU_EDGE_AARCH64."""
import csv
import json
import os
import subprocess

import numpy as np
import pytest

from conftest import run_module

A64 = os.environ.get("GRU_EDGE_AARCH64") and os.path.abspath(os.environ["GRU_EDGE_AARCH64"])
FP32 = 1e-4        # tier: the same TFLite artifact on arm64 and x86_64, normalized output units


def _device_run(vpy, dev, *args, stdin=None):
    p = subprocess.run([vpy, *args], cwd=dev, capture_output=True, text=True, timeout=300,
                       stdin=stdin or subprocess.DEVNULL, env={**os.environ, "QEMU_CPU": "cortex-a72"})
    assert p.returncode == 0, f"{args} on the device exited {p.returncode}: {p.stderr[-2000:]}"
    return p


@pytest.mark.skipif(not A64, reason="make test-aarch64 runs this: it builds the emulated aarch64 device")
def test_flash_runtime_to_an_emulated_aarch64_device(daphnet_bundle, tmp_path):
    dev = tmp_path / "pi4"
    env = {"FLASH_DEVICE_PYTHON": os.path.join(A64, "python3.11"), "QEMU_CPU": "cortex-a72"}
    out = run_module("flash", "deploy", daphnet_bundle, "--device", str(dev), "--engine", "litert",
                     "--install-runtime", env=env, timeout=900).stdout
    assert "is live" in out
    wheels = os.listdir(dev / "wheelhouse")
    native = [w for w in wheels if not w.endswith("-none-any.whl")]
    assert native and all("aarch64" in w and ("cp311" in w or "abi3" in w) for w in native), native
    vpy = str(dev / "venv" / "bin" / "python")
    where = _device_run(vpy, dev, "-c", "import platform, numpy, ai_edge_litert, runtime; "
                                        "print(platform.machine(), runtime.__file__)").stdout.split()
    assert where[0] == "aarch64" and where[1].startswith(str(dev / "venv")), where   # the venv's own install
    assert "ok" in (dev / "last_verify").read_text()
    assert "ok" in _device_run(vpy, dev, "-m", "runtime", "verify", "current").stdout

    with np.load(daphnet_bundle + ".build.npz") as z:
        x = z["inputs"][-400:]
    features = [f["name"] for f in json.load(open(os.path.join(daphnet_bundle, "manifest.json")))["features"]]
    src = tmp_path / "readings.csv"
    with open(src, "w", newline="") as f:
        csv.writer(f).writerows([features] + [[repr(float(v)) for v in r] for r in x])
    host_out = tmp_path / "host.csv"
    run_module("runtime", "stream", daphnet_bundle, "--engine", "litert", "--input", str(src), "--output", str(host_out))
    _device_run(vpy, dev, "-m", "runtime", "stream", "current", "--engine", "litert", "--input", str(src),
                "--output", str(tmp_path / "device.csv"))
    host = np.loadtxt(host_out, delimiter=",", skiprows=1)
    device = np.loadtxt(tmp_path / "device.csv", delimiter=",", skiprows=1)
    scale = json.load(open(os.path.join(daphnet_bundle, "manifest.json")))["scaler"]["targets"]["scale"][0]
    assert device.shape == host.shape == (len(x), host.shape[1])
    assert np.max(np.abs(device - host)) / scale <= FP32

    period = json.load(open(os.path.join(daphnet_bundle, "manifest.json")))["sample_period_s"]
    timed = tmp_path / "timed.csv"           # serve places rows by their time, not by their arrival
    with open(timed, "w", newline="") as f:
        csv.writer(f).writerows([["time"] + features] + [[1_700_000_400 + i * period] + [repr(float(v)) for v in r]
                                                         for i, r in enumerate(x)])
    served = _device_run(vpy, dev, "-m", "runtime", "serve", "current", "--stdin", "--stdout", "--engine", "litert",
                         "--streams", "1", stdin=open(timed)).stdout.splitlines()
    got = np.array([[s["value"] for s in json.loads(line)["forecast"]] for line in served])
    assert np.max(np.abs(got - host)) / scale <= FP32
