"""Shared fixtures: tiny seeded models and small real-data checkpoints built inside the tests."""
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(*args, cwd=ROOT, check=True, timeout=600):
    """Run `python -m ...` as a user would; returns the CompletedProcess."""
    p = subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} exited {p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-3000:]}")
    return p


def sensor_frame(n=600, seed=0, period="10min"):
    """A small synthetic sensor table: a daily-ish sine target driven by two inputs."""
    import pandas as pd
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    drive = np.sin(2 * np.pi * t / 48) + 0.1 * rng.standard_normal(n)
    other = np.cos(2 * np.pi * t / 30) + 0.1 * rng.standard_normal(n)
    temp = 20 + 2 * np.convolve(drive, np.ones(4) / 4, mode="same") + 0.05 * rng.standard_normal(n)
    return pd.DataFrame({"time": pd.date_range("2024-01-01", periods=n, freq=period),
                         "drive": drive, "other": other, "temp": temp})


@pytest.fixture(scope="session")
def daphnet_checkpoint(tmp_path_factory):
    """A tiny GRU (hidden 8) trained for a few epochs on the real Daphnet accelerometers."""
    out = tmp_path_factory.mktemp("ck") / "daphnet.pt"
    run_module("train", "--data", "daphnet", "--hidden", "8", "--epochs", "3", "--quiet", "--out", str(out))
    return str(out)


def _export(checkpoint, out, *extra):
    run_module("export", checkpoint, "--out", str(out), *extra)
    return str(out)


@pytest.fixture(scope="session")
def daphnet_bundle(daphnet_checkpoint, tmp_path_factory):
    """The Daphnet checkpoint (L=1) exported beside it, TFLite at batch 1 and 4."""
    return _export(daphnet_checkpoint, os.path.join(os.path.dirname(daphnet_checkpoint), "bundle"), "--batch", "1,4")


@pytest.fixture(scope="session")
def two_layer_bundle(tmp_path_factory):
    """A 2-layer GRU (hidden 6) on the real Daphnet data, exported with TFLite at batch 1 and 4."""
    d = tmp_path_factory.mktemp("l2")
    run_module("train", "--data", "daphnet", "--hidden", "6", "--layers", "2", "--epochs", "2", "--quiet",
               "--out", str(d / "l2.pt"))
    return _export(str(d / "l2.pt"), d / "bundle", "--batch", "1,4")
