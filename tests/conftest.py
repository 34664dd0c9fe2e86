"""Shared fixtures: tiny seeded models and small real-data checkpoints built inside the tests."""
import getpass
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from bench.broker import LoopbackMosquitto, free_port  # noqa: F401  (helpers of the serve and flash tests)

from runtime.bundle import TIERS  # noqa: E402,F401  (the artifact tiers: fp32, int16, int8, normalized units)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tests' own tolerance tiers, beside the artifact tiers above; every test file imports them from here.
SAME = 1e-9          # two halves of one definition (the calendar's train and runtime sides)
CSV_REL = 2e-5       # relative: stream writes 6 significant digits, serve publishes float32 values in full
ROUNDOFF = 1e-6      # normalized units: numpy at batch 4 (serve) vs batch 1 (stream) sums in another order;
                     # float32 roundoff (~1e-7) times the target's scale is the absolute floor
ENGINE_TIER = 1e-4   # raw units: a float engine (TFLite at batch 4) against the numpy reference
# Device-side runs (a venv with numpy + one engine, no torch) use bundles the toolchain built
# beforehand (`make test` builds them into build/test-bundles) instead of training their own.
PREBUILT = os.environ.get("GRU_EDGE_BUNDLES")


def run_module(*args, cwd=ROOT, check=True, timeout=600, env=None):
    """Run `python -m ...` as a user would; returns the CompletedProcess."""
    p = subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                       env=None if env is None else {**os.environ, **env})
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


def calendar_frame(days=84, seed=0):
    """Hourly readings over twelve weeks: a load with a daily and a weekly rhythm and a noisy
    temperature; the rhythms are learnable from the time of day and day of week alone."""
    import pandas as pd
    rng = np.random.default_rng(seed)
    t = pd.date_range("2024-01-01", periods=24 * days, freq="h")
    hour, dow = t.hour.to_numpy(), t.day_of_week.to_numpy()
    load = 100 + 40 * np.sin(2 * np.pi * hour / 24) * (dow < 5) + 5 * rng.standard_normal(len(t))
    return pd.DataFrame({"time": t.strftime("%Y-%m-%dT%H:%M:%S"), "temp": 15 + rng.standard_normal(len(t)),
                         "load": load})


SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


class LoopbackSSHD:
    """A real OpenSSH server on 127.0.0.1 with throwaway keys, reachable as the ssh alias `alias`
    through `folder/ssh_config` (keys, known_hosts and the config live in `folder`)."""

    def __init__(self, folder, alias: str, keys_from=None):
        if not os.path.exists(SSHD):
            pytest.fail("openssh-server is not installed (make test / .ci/run install it with apt-get)")
        d = folder
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key")], check=True)
        if keys_from is None:
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "client_key")], check=True)
            keys_from = d
        self.client_key = keys_from / "client_key"
        shutil.copy(str(self.client_key) + ".pub", d / "authorized_keys")
        self.port, self.alias = free_port(), alias
        (d / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n"
            f"AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nLogLevel ERROR\n")
        host_pub = (d / "host_key.pub").read_text().split()
        (d / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        (d / "ssh_config").write_text(self.config_entry(d))
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", exist_ok=True)      # privilege-separation folder sshd needs as root
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        self.proc.kill()
        pytest.fail(f"sshd did not start: {self.proc.stderr.read().decode()[-500:]}")

    def config_entry(self, d) -> str:
        return (f"Host {self.alias}\n  HostName 127.0.0.1\n  Port {self.port}\n  User {getpass.getuser()}\n"
                f"  IdentityFile {self.client_key}\n  IdentitiesOnly yes\n  UserKnownHostsFile {d}/known_hosts\n"
                "  StrictHostKeyChecking yes\n")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


def copy_bundle(src, dst):
    """A copy of a bundle with its build-side data (<bundle>.build.npz) beside it."""
    import shutil
    shutil.copytree(src, dst)
    shutil.copy(str(src) + ".build.npz", str(dst) + ".build.npz")
    return str(dst)


def reseal(bundle, manifest):
    """Write an edited manifest with a bundle id that matches it again (the id check passes;
    whatever else is wrong must be caught by the field checks)."""
    import json
    from runtime.bundle import bundle_id
    manifest["bundle_id"] = bundle_id(manifest)
    with open(os.path.join(bundle, "manifest.json"), "w") as f:
        json.dump(manifest, f)


def _export(checkpoint, out, *extra):
    run_module("export", checkpoint, "--out", str(out), *extra)
    return str(out)


def build_test_bundles(folder):
    """The test bundles: Daphnet L=1 hidden 8 (--base ar: an AR base, chosen on validation), and L=2 hidden 6 on
    the level (--base level: what bundles before format 7 hold), TFLite at batch 1 and 4; and a
    hidden-6 model with calendar inputs (time of day, day of week) on hourly synthetic loads."""
    os.makedirs(folder, exist_ok=True)
    csv = os.path.join(folder, "calendar.csv")
    calendar_frame().to_csv(csv, index=False)
    ck = os.path.join(folder, "calendar.pt")
    run_module("train", "--data", csv, "--target", "load", "--hidden", "6", "--epochs", "2", "--quiet", "--out", ck)
    _export(ck, os.path.join(folder, "calendar"), "--batch", "1,4")
    for name, args in (("daphnet", ("--hidden", "8", "--epochs", "3", "--base", "ar")),
                       ("two_layer", ("--hidden", "6", "--layers", "2", "--epochs", "2", "--base", "level"))):
        ck = os.path.join(folder, f"{name}.pt")
        run_module("train", "--data", "daphnet", *args, "--quiet", "--out", ck)
        _export(ck, os.path.join(folder, name), "--batch", "1,4")


@pytest.fixture(scope="session")
def test_bundles(tmp_path_factory):
    if PREBUILT:
        return PREBUILT
    folder = str(tmp_path_factory.mktemp("bundles"))
    build_test_bundles(folder)
    return folder


@pytest.fixture(scope="session")
def daphnet_checkpoint(test_bundles):
    """A tiny GRU (hidden 8) trained for a few epochs on the real Daphnet accelerometers."""
    return os.path.join(test_bundles, "daphnet.pt")


@pytest.fixture(scope="session")
def daphnet_bundle(test_bundles):
    """The Daphnet checkpoint (L=1) exported beside it, TFLite at batch 1 and 4."""
    return os.path.join(test_bundles, "daphnet")


@pytest.fixture(scope="session")
def two_layer_bundle(test_bundles):
    """A 2-layer GRU (hidden 6) on the real Daphnet data, on the level (no AR base), exported beside its checkpoint."""
    return os.path.join(test_bundles, "two_layer")


@pytest.fixture(scope="session")
def calendar_bundle(test_bundles):
    """A hidden-6 GRU with four calendar inputs derived from each reading's time; its CSV beside it."""
    return os.path.join(test_bundles, "calendar")


if __name__ == "__main__":   # python tests/conftest.py FOLDER: build the bundles for device runs
    build_test_bundles(sys.argv[1])


@pytest.fixture
def broker(tmp_path):
    """A real mosquitto on a free loopback port, persistent (tests/../bench/broker.py)."""
    b = LoopbackMosquitto(str(tmp_path))
    yield b
    b.stop()


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """One loopback sshd reachable as the ssh alias `gru-device`: the environment flash needs
    (its ssh config, the device's Python) for the capture and shadow tests."""
    d = tmp_path_factory.mktemp("sshd")
    server = LoopbackSSHD(d, "gru-device")
    yield {"FLASH_SSH_CONFIG": str(d / "ssh_config"), "FLASH_DEVICE_PYTHON": sys.executable}
    server.stop()
