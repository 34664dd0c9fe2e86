"""Flash against a real OpenSSH server on 127.0.0.1 (throwaway keys, device root in a temp folder)."""
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, LoopbackSSHD, free_port as _free_port, run_module


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    d = tmp_path_factory.mktemp("sshd")
    server = LoopbackSSHD(d, "gru-device")
    yield {"config": str(d / "ssh_config"), "port": server.port}
    server.stop()


@pytest.fixture
def device(sshd, tmp_path):
    """A fresh device root; the device's Python is this venv's (runtime already installed)."""
    root = tmp_path / "device"
    env = {"FLASH_SSH_CONFIG": sshd["config"], "FLASH_DEVICE_PYTHON": sys.executable}
    return {"root": str(root), "env": env, "args": ["--device", "gru-device", "--root", str(root)]}


def flash(device, *args, check=True, env=None):
    cmd = args[0]
    p = run_module("flash", cmd, *args[1:], *device["args"], env={**device["env"], **(env or {})},
                   check=False, timeout=300)
    if check:
        assert p.returncode == 0, p.stderr[-2000:]
    return p


def live(device):
    link = os.path.join(device["root"], "current")
    return os.readlink(link) if os.path.islink(link) else None


def bundle_copy(src, dst, tmp_path):
    out = tmp_path / dst
    shutil.copytree(src, out)
    return str(out)


def test_flash_verify_and_go_live(device, daphnet_bundle):
    p = flash(device, "deploy", daphnet_bundle)
    bid = json.load(open(os.path.join(daphnet_bundle, "manifest.json")))["bundle_id"]
    assert f"{bid} is live on gru-device" in p.stdout
    assert live(device) == f"releases/{bid}"
    assert os.path.exists(os.path.join(device["root"], "current", "step.tflite"))
    status = flash(device, "status")
    assert f"current=releases/{bid}" in status.stdout and "model: GRU" in status.stdout


def test_second_flash_then_rollback(device, daphnet_bundle, two_layer_bundle):
    flash(device, "deploy", daphnet_bundle)
    first = live(device)
    flash(device, "deploy", two_layer_bundle)
    second = live(device)
    assert second != first and os.readlink(os.path.join(device["root"], "previous")) == first
    flash(device, "rollback")
    assert live(device) == first
    assert os.readlink(os.path.join(device["root"], "previous")) == second


def test_corrupted_artifact_leaves_previous_live(device, daphnet_bundle, two_layer_bundle, tmp_path):
    flash(device, "deploy", daphnet_bundle)
    before = live(device)
    bad = bundle_copy(two_layer_bundle, "bad", tmp_path)
    with open(os.path.join(bad, "step.onnx"), "r+b") as f:      # flips one byte after export
        f.seek(200)
        b = f.read(1)
        f.seek(200)
        f.write(bytes([b[0] ^ 0xFF]))
    p = flash(device, "deploy", bad, check=False)
    assert p.returncode == 1 and "checksum mismatch on the device" in p.stderr
    assert live(device) == before
    assert sorted(os.listdir(os.path.join(device["root"], "releases"))) == [before.split("/")[1]]


def test_verify_failure_leaves_previous_live(device, daphnet_bundle, two_layer_bundle, tmp_path):
    from runtime.bundle import sha256_file
    flash(device, "deploy", daphnet_bundle)
    before = live(device)
    bad = bundle_copy(two_layer_bundle, "wrong-golden", tmp_path)
    g = os.path.join(bad, "golden.npz")
    with np.load(g) as z:
        data = {k: z[k] for k in z.files}
    data["forecast/step.tflite"] = data["forecast/step.tflite"] + 1.0   # expectations the model cannot meet
    np.savez(g, **data)
    m = json.load(open(os.path.join(bad, "manifest.json")))
    m["golden"].update(sha256=sha256_file(g), bytes=os.path.getsize(g))   # checksums and id stay consistent
    from runtime.bundle import bundle_id
    m["bundle_id"] = bundle_id(m)
    json.dump(m, open(os.path.join(bad, "manifest.json"), "w"))
    p = flash(device, "deploy", bad, check=False)
    assert p.returncode == 1 and "deploy to gru-device failed" in p.stderr and "FAIL" in p.stderr
    assert live(device) == before


def test_connection_cut_mid_copy_leaves_nothing_live(device, daphnet_bundle, two_layer_bundle, tmp_path):
    flash(device, "deploy", daphnet_bundle)
    before = live(device)
    cutter = tmp_path / "ssh-cut"      # an ssh that drops the connection 20 kB into the bundle upload
    cutter.write_text("#!/bin/sh\ncase \"$*\" in *' receive '*) head -c 20000 | ssh \"$@\"; exit 255;; esac\n"
                      "exec ssh \"$@\"\n")
    cutter.chmod(0o755)
    p = flash(device, "deploy", two_layer_bundle, check=False, env={"FLASH_SSH": str(cutter)})
    assert p.returncode == 1 and "cannot reach device" in p.stderr
    assert live(device) == before
    flash(device, "deploy", daphnet_bundle)              # the next deploy drops what the cut left behind
    assert os.listdir(os.path.join(device["root"], "releases")) == [before.split("/")[1]]


def test_unreachable_device_with_a_bundle(daphnet_bundle):
    t0 = time.time()
    p = run_module("flash", "deploy", daphnet_bundle, "--device", f"nobody@127.0.0.1:{_free_port()}",
                   check=False, timeout=60)
    assert p.returncode == 1 and time.time() - t0 < 30
    assert "cannot reach device nobody@127.0.0.1" in p.stderr and "Connection refused" in p.stderr


def test_local_folder_device(daphnet_bundle, tmp_path):
    root = tmp_path / "sdcard"
    p = run_module("flash", "deploy", daphnet_bundle, "--device", str(root), check=False)
    assert p.returncode == 0, p.stderr
    assert os.readlink(root / "current").startswith("releases/")


def test_runtime_installed_from_a_wheel_on_a_bare_device(device, daphnet_bundle):
    """The device's own python3 has no numpy: flash refuses, then FLASH_RUNTIME installs a venv
    from the runtime wheel plus numpy and ai-edge-litert wheels fetched for its platform."""
    bare = {"FLASH_DEVICE_PYTHON": "/usr/bin/python3"}
    if not os.path.exists("/usr/bin/python3"):
        pytest.fail("the loopback device needs /usr/bin/python3 (Debian python3, python3-venv)")
    p = flash(device, "deploy", daphnet_bundle, check=False, env=bare)
    assert p.returncode == 1 and "the runtime is not installed there" in p.stderr
    assert live(device) is None
    p = flash(device, "deploy", daphnet_bundle, "--install-runtime", env=bare)
    venv_py = os.path.join(device["root"], "venv", "bin", "python")
    out = subprocess.run([venv_py, "-c", "import sys, runtime; print(runtime.__file__, 'torch' in sys.modules)"],
                         capture_output=True, text=True, check=True, cwd="/")
    assert "site-packages/runtime" in out.stdout and out.stdout.strip().endswith("False")
    assert live(device).startswith("releases/")


# -- hardening (issue 11): a bundle can only ever touch its own release folder ---------------
def _reid(bundle, manifest):
    json.dump(manifest, open(os.path.join(bundle, "manifest.json"), "w"))


@pytest.mark.parametrize("bad_id", ["../../victim", ""])
def test_a_crafted_bundle_id_cannot_escape_the_device_root(device, daphnet_bundle, tmp_path, bad_id):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    flash(device, "deploy", daphnet_bundle)
    before = live(device)
    b = bundle_copy(daphnet_bundle, "crafted", tmp_path)
    m = json.load(open(os.path.join(b, "manifest.json")))
    m["bundle_id"] = bad_id
    _reid(b, m)
    p = flash(device, "deploy", b, check=False)          # refused on the workstation
    assert p.returncode == 1 and "bundle_id" in p.stderr
    from flash.device import Device                         # and again by the device script itself
    dev = Device("gru-device", device["root"], sys.executable)
    os.environ["FLASH_SSH_CONFIG"] = device["env"]["FLASH_SSH_CONFIG"]
    try:
        r = dev.command("receive", bad_id, "abcd", upload=[(b, sorted(os.listdir(b)))])
    finally:
        del os.environ["FLASH_SSH_CONFIG"]
    assert r.returncode == 2 and "refusing bundle id" in r.stderr
    assert (victim / "keep.txt").read_text() == "precious" and live(device) == before


def test_a_bundle_with_a_symlink_is_refused(device, daphnet_bundle, tmp_path):
    b = bundle_copy(daphnet_bundle, "linked", tmp_path)
    art = json.load(open(os.path.join(b, "manifest.json")))["artifacts"][0]["file"]
    os.remove(os.path.join(b, art))
    os.symlink("/etc/passwd", os.path.join(b, art))
    p = flash(device, "deploy", b, check=False)
    assert p.returncode == 1 and "is a symbolic link" in p.stderr and live(device) is None


def test_a_release_an_older_flash_sent_with_its_report_is_no_difference(device, daphnet_bundle):
    """A flash before 2026-12-08 sent REPORT.md and the plots; re-flashing the same bundle said the
    release 'differed from the verified upload', the line that reports tampering."""
    flash(device, "deploy", daphnet_bundle)
    for name in ("REPORT.md", "curves.png"):
        with open(os.path.join(device["root"], "current", name), "w") as f:
            f.write("as an older flash sent it")
    p = flash(device, "deploy", daphnet_bundle)
    assert "already live" in p.stdout and "differed" not in p.stdout, p.stdout


def test_a_file_the_manifest_does_not_list_stays_on_the_workstation_and_is_named(device, daphnet_bundle, tmp_path):
    b = bundle_copy(daphnet_bundle, "extra", tmp_path)
    os.symlink("/etc/passwd", os.path.join(b, "extra.txt"))
    open(os.path.join(b, "notes.md"), "w").write("x")
    p = flash(device, "deploy", b)
    assert "not sent, as the manifest does not list them: extra.txt, notes.md" in p.stdout, p.stdout
    assert not {"extra.txt", "notes.md", "REPORT.md"} & set(os.listdir(os.path.join(device["root"], "current")))


def test_concurrent_deploys_serialize_and_keep_current_and_previous(device, daphnet_bundle, two_layer_bundle, tmp_path):
    flash(device, "deploy", daphnet_bundle)
    first = live(device)
    slow = tmp_path / "slow-python"        # the device's verify takes 4 s: a long deploy
    slow.write_text(f"#!/bin/sh\ncase \"$*\" in *'runtime verify'*) sleep 4;; esac\nexec {sys.executable} \"$@\"\n")
    slow.chmod(0o755)
    env = {**os.environ, **device["env"], "FLASH_DEVICE_PYTHON": str(slow)}
    cmd = [sys.executable, "-m", "flash", "deploy", two_layer_bundle, *device["args"]]
    a = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2.5)
    b = flash(device, "deploy", daphnet_bundle, check=False)
    assert b.returncode == 1 and "another deploy is running" in b.stderr
    out, err = a.communicate(timeout=120)
    assert a.returncode == 0, err
    assert os.readlink(os.path.join(device["root"], "previous")) == first and live(device) != first
    assert os.path.isdir(os.path.join(device["root"], first)) and os.path.isdir(os.path.join(device["root"], live(device)))


def test_mkdir_lock_without_flock_refuses_a_live_holder_and_takes_a_stale_one(daphnet_bundle, tmp_path):
    root = tmp_path / "sd"
    env = {"GRU_EDGE_NO_FLOCK": "1"}
    run_module("flash", "deploy", daphnet_bundle, "--device", str(root), env=env)
    (root / ".deploy.lock.d").mkdir()
    (root / ".deploy.lock.d" / "pid").write_text(str(os.getpid()))          # a live holder
    p = run_module("flash", "rollback", "--device", str(root), env=env, check=False)
    assert p.returncode == 11 and "another deploy is running on this device (pid" in p.stderr
    (root / ".deploy.lock.d" / "pid").write_text("999999999")              # its process is gone
    p = run_module("flash", "deploy", daphnet_bundle, "--device", str(root), env=env)
    assert "already live" in p.stdout and not (root / ".deploy.lock.d").exists()


def test_device_strings_cannot_inject_ssh_options(daphnet_bundle, tmp_path):
    marker = tmp_path / "pwned"
    p = run_module("flash", "deploy", daphnet_bundle, "--device", f"-oProxyCommand=touch {marker}", check=False)
    assert p.returncode == 1 and "must not start with '-'" in p.stderr and not marker.exists()
    p = run_module("flash", "status", f"--device=-oProxyCommand=touch {marker}", check=False)
    assert p.returncode == 1 and "must not start with '-'" in p.stderr and not marker.exists()


def test_make_flash_requires_a_bundle():
    p = subprocess.run(["make", "--no-print-directory", "flash", "DEVICE=/tmp/nowhere"], cwd=ROOT,
                       capture_output=True, text=True)
    assert p.returncode != 0 and "BUNDLE is required" in p.stdout + p.stderr


def test_root_is_honoured_for_folder_devices(daphnet_bundle, tmp_path):
    run_module("flash", "deploy", daphnet_bundle, "--device", str(tmp_path / "sd"), "--root", "home/pi/gru-edge")
    assert os.path.islink(tmp_path / "sd" / "home" / "pi" / "gru-edge" / "current")
    p = run_module("flash", "deploy", daphnet_bundle, "--device", str(tmp_path / "sd"), "--root", "/abs", check=False)
    assert p.returncode == 1 and "is absolute" in p.stderr


@pytest.fixture(scope="module")
def signing(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    for name in ("builder", "stranger"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(d / name)], check=True)
    pub = (d / "builder.pub").read_text().split()
    (d / "allowed_signers").write_text(f"builder@example {pub[0]} {pub[1]}\n")
    return d


def test_a_device_with_allowed_signers_runs_only_bundles_signed_by_them(device, daphnet_bundle, signing, tmp_path):
    from export.writer import sign_manifest
    os.makedirs(device["root"])
    shutil.copy(signing / "allowed_signers", os.path.join(device["root"], "allowed_signers"))
    p = flash(device, "deploy", daphnet_bundle, check=False)              # unsigned: refused before upload
    assert p.returncode == 1 and "requires signed bundles" in p.stderr
    wrong = bundle_copy(daphnet_bundle, "wrong", tmp_path)
    sign_manifest(wrong, str(signing / "stranger"))
    p = flash(device, "deploy", wrong, check=False)                       # signed by another key: the device refuses
    assert p.returncode == 1 and "not by a key in" in p.stderr and live(device) is None
    good = str(tmp_path / "good")                                         # signed by export itself
    run_module("export", os.path.join(os.path.dirname(daphnet_bundle), "daphnet.pt"), "--out", good,
               "--formats", "onnx", "--sign", str(signing / "builder"))
    assert os.path.exists(os.path.join(good, "manifest.sig"))
    tampered = bundle_copy(good, "tampered", tmp_path)
    m = json.load(open(os.path.join(tampered, "manifest.json")))
    m["created"] = "yesterday"                                            # re-id'd, but the signature is void
    from runtime.bundle import bundle_id
    m["bundle_id"] = bundle_id(m)
    _reid(tampered, m)
    p = flash(device, "deploy", tampered, check=False)
    assert p.returncode == 1 and "does not verify" in p.stderr and live(device) is None
    flash(device, "deploy", good)
    assert live(device).endswith(json.load(open(os.path.join(good, "manifest.json")))["bundle_id"])


def test_a_promote_margin_of_nan_stops_at_parse():
    """--margin nan made every 'candidate worse than live x (1 + margin)' test false: a worse candidate
    passed the per-step rule."""
    from flash.__main__ import parser
    for argv in (["promote", "/tmp/x", "--margin", "nan"], ["promote", "/tmp/x", "--wait", "inf"],
                 ["collect", "/tmp/x", "--out", "/tmp/y", "--batch-rows", "0"]):
        with pytest.raises(SystemExit) as e:
            parser().parse_args(argv)
        assert e.value.code == 2
