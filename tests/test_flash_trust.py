"""Trust on the device over its whole life (issue 25): the signature and the release order are
checked at deploy, at load, by `status` and before a `rollback`, against a real loopback sshd."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import LoopbackSSHD, reseal, run_module


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    d = tmp_path_factory.mktemp("sshd")
    server = LoopbackSSHD(d, "gru-device")
    yield str(d / "ssh_config")
    server.stop()


@pytest.fixture(scope="module")
def signed(tmp_path_factory, daphnet_bundle, two_layer_bundle):
    """A builder key, its allowed_signers line, and two signed bundles: `old` created before `new`."""
    from export.writer import sign_manifest
    d = tmp_path_factory.mktemp("signed")
    for name in ("builder", "stranger"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(d / name)], check=True)
    pub = (d / "builder.pub").read_text().split()
    (d / "allowed_signers").write_text(f"builder@example {pub[0]} {pub[1]}\n")
    out = {"dir": d, "signers": str(d / "allowed_signers")}
    for name, src in (("old", daphnet_bundle), ("new", two_layer_bundle)):
        shutil.copytree(src, d / name)
        sign_manifest(str(d / name), str(d / "builder"))
        out[name] = str(d / name)
    assert manifest(out["old"])["created"] < manifest(out["new"])["created"]
    return out


def manifest(bundle):
    with open(os.path.join(bundle, "manifest.json")) as f:
        return json.load(f)


@pytest.fixture
def device(sshd, tmp_path):
    root = tmp_path / "device"
    root.mkdir()
    return {"root": root, "env": {"FLASH_SSH_CONFIG": sshd, "FLASH_DEVICE_PYTHON": sys.executable},
            "args": ["--device", "gru-device", "--root", str(root)]}


def flash(device, cmd, *args, check=True):
    p = run_module("flash", cmd, *args, *device["args"], env=device["env"], check=False, timeout=300)
    assert not check or p.returncode == 0, p.stdout[-1500:] + p.stderr[-1500:]
    return p


def live(device):
    link = device["root"] / "current"
    return os.readlink(link) if os.path.islink(link) else None


def require_signatures(device, signed):
    shutil.copy(signed["signers"], device["root"] / "allowed_signers")


def tamper(release):
    """What someone with a shell on the device can do without the key: shift the forecast by
    +10 target units and make the id match the edited manifest again."""
    m = manifest(release)
    m["scaler"]["targets"]["offset"] = [v + 10 for v in m["scaler"]["targets"]["offset"]]
    reseal(release, m)


# -- case 1: no downgrades -----------------------------------------------------------------
def test_an_older_signed_bundle_is_refused_unless_allow_downgrade(device, signed):
    require_signatures(device, signed)
    new_id, old_id = manifest(signed["new"])["bundle_id"], manifest(signed["old"])["bundle_id"]
    flash(device, "deploy", signed["new"])
    p = flash(device, "deploy", signed["old"], check=False)
    assert p.returncode == 1 and "refusing a downgrade" in p.stderr and "--allow-downgrade" in p.stderr, p.stderr
    assert live(device) == f"releases/{new_id}" and sorted(os.listdir(device["root"] / "releases")) == [new_id]
    flash(device, "deploy", signed["old"], "--allow-downgrade")
    assert live(device) == f"releases/{old_id}"
    flash(device, "rollback")                           # back to `new`, then to `old` again: rollbacks are allowed
    flash(device, "rollback")
    assert live(device) == f"releases/{old_id}"


# -- case 2: a rollback target is checked as it is now ------------------------------------
def test_rollback_refuses_an_unsigned_previous_release(device, signed, daphnet_bundle):
    flash(device, "deploy", daphnet_bundle)             # flashed before signatures were required
    require_signatures(device, signed)
    flash(device, "deploy", signed["new"])
    p = flash(device, "rollback", check=False)
    assert p.returncode == 14 and "refusing to roll back" in p.stderr and "has no manifest.sig" in p.stderr, p.stderr
    assert live(device) == f"releases/{manifest(signed['new'])['bundle_id']}"


# -- case 3: the live release edited on the device -----------------------------------------
def test_status_rechecks_the_live_release_and_a_reflash_replaces_tampered_files(device, signed):
    require_signatures(device, signed)
    flash(device, "deploy", signed["new"])
    bid = manifest(signed["new"])["bundle_id"]
    p = flash(device, "status")
    assert "check_current=ok, signed by builder@example" in p.stdout, p.stdout
    tamper(str(device["root"] / "releases" / bid))
    p = flash(device, "status", check=False)
    assert p.returncode != 0 and "check_current=FAILED" in p.stdout and "does not verify" in p.stdout, p.stdout
    assert "not verified as it is now: current" in p.stderr
    p = flash(device, "deploy", signed["new"])
    assert "already live" in p.stdout and "differed from the verified upload (manifest.json)" in p.stdout, p.stdout
    assert manifest(str(device["root"] / "current")) == manifest(signed["new"])
    assert "check_current=ok" in flash(device, "status").stdout


def test_a_tampered_live_release_is_caught_without_signatures_too(device, daphnet_bundle):
    """No allowed_signers: the edited manifest re-id'd no longer names its own release folder."""
    flash(device, "deploy", daphnet_bundle)
    tamper(str(device["root"] / "current"))
    p = flash(device, "status", check=False)
    assert p.returncode != 0 and "check_current=FAILED" in p.stdout and "holds bundle" in p.stdout, p.stdout


# -- case 4: a tampered folder in releases/ is never switched to -----------------------------
def test_flashing_a_bundle_whose_folder_was_tampered_installs_the_verified_upload(device, signed):
    require_signatures(device, signed)
    flash(device, "deploy", signed["old"])
    flash(device, "deploy", signed["new"])
    flash(device, "rollback")                           # new is now `previous`
    new_id = manifest(signed["new"])["bundle_id"]
    tamper(str(device["root"] / "releases" / new_id))
    p = flash(device, "deploy", signed["new"])
    assert f"{new_id} is live" in p.stdout and "was replaced with it" in p.stdout, p.stdout
    assert live(device) == f"releases/{new_id}"
    assert manifest(str(device["root"] / "current")) == manifest(signed["new"])


# -- at load: runtime/trust.py -------------------------------------------------------------------
def device_release(root, bundle):
    """`bundle` placed as flash would: <root>/releases/<id>, <root>/current -> it."""
    bid = manifest(bundle)["bundle_id"]
    shutil.copytree(bundle, root / "releases" / bid)
    os.symlink(f"releases/{bid}", root / "current")
    return root / "current"


def test_signature_at_load(signed, tmp_path):
    from runtime.bundle import BundleError
    from runtime.trust import check_signature_at_load
    assert check_signature_at_load(signed["new"]) is None          # not in a device root: nothing required
    root = tmp_path / "root"
    current = device_release(root, signed["new"])
    assert check_signature_at_load(str(current)) is None           # a root without allowed_signers
    shutil.copy(signed["signers"], root / "allowed_signers")
    assert check_signature_at_load(str(current)) == "builder@example"
    tamper(str(current))
    with pytest.raises(BundleError, match="does not verify against"):
        check_signature_at_load(str(current))
    os.remove(current / "manifest.sig")
    with pytest.raises(BundleError, match="requires signed bundles .* has no manifest.sig"):
        check_signature_at_load(str(current))


def test_signature_at_load_refuses_a_strangers_key(signed, tmp_path):
    from export.writer import sign_manifest
    from runtime.bundle import BundleError
    from runtime.trust import check_signature_at_load
    root = tmp_path / "root"
    current = device_release(root, signed["old"])
    shutil.copy(signed["signers"], root / "allowed_signers")
    sign_manifest(str(current), str(signed["dir"] / "stranger"))
    with pytest.raises(BundleError, match="is not by a key in"):
        check_signature_at_load(str(current))
    p = run_module("runtime.trust", str(current), check=False)    # the device script's one line
    assert p.returncode == 1 and p.stdout.startswith("FAILED: ") and len(p.stdout.splitlines()) == 1


# -- a supply-chain probe's cases (2026-12-08): each failed on the code before ------------------------
def copy_of(bundle, tmp_path, name):
    out = tmp_path / name
    shutil.copytree(bundle, out)
    return out


def test_a_file_name_in_the_bundle_folder_is_never_a_tar_option_and_unlisted_files_stay_home(device, signed,
                                                                                           tmp_path):
    """`--checkpoint-action=exec=...` as a file name ran commands on the workstation at deploy (GNU
    tar read it as an option), and every file in the folder was shipped and called signed: a hard link
    to the signing key too. Only the manifest, its signature and the files it lists are sent."""
    require_signatures(device, signed)
    b = copy_of(signed["new"], tmp_path, "b")
    for name in ("--checkpoint=1", "--checkpoint-action=exec=touch PWNED", "evil.sh"):
        (b / name).write_text("x")
    os.link(signed["dir"] / "builder", b / "notes.txt")
    work = tmp_path / "cwd"
    work.mkdir()
    p = run_module("flash", "deploy", str(b), *device["args"], env=device["env"], check=False, cwd=work)
    assert p.returncode == 0, p.stderr
    assert not os.listdir(work), os.listdir(work)                     # tar ran nothing
    m = manifest(str(b))
    listed = {a["file"] for a in m["artifacts"]} | {m["golden"]["file"], "manifest.json", "manifest.sig", "SHA256SUMS"}
    assert set(os.listdir(device["root"] / "current")) == listed


def test_a_corrupted_artifact_in_the_live_release_does_not_switch_the_downgrade_check_off(device, signed):
    """The live release's time is its signed manifest's: a bad byte in one of its artifacts made it
    'no trusted time', and an older bundle went live without --allow-downgrade."""
    require_signatures(device, signed)
    flash(device, "deploy", signed["new"])
    live_dir = device["root"] / "current"
    art = next(a["file"] for a in manifest(str(live_dir))["artifacts"] if a["file"].endswith(".onnx"))
    data = bytearray((live_dir / art).read_bytes())
    data[len(data) // 2] ^= 1
    (live_dir / art).write_bytes(bytes(data))
    p = flash(device, "deploy", signed["old"], check=False)
    assert p.returncode == 1 and "refusing a downgrade" in p.stderr, p.stdout + p.stderr
    assert live(device) == f"releases/{manifest(signed['new'])['bundle_id']}"


def test_a_release_linked_from_outside_releases_is_refused_where_signatures_are_required(device, signed,
                                                                                         daphnet_bundle, tmp_path):
    """The policy was read from the folder a link resolved to: `previous` (or releases/<x>) pointing at
    an unsigned folder elsewhere turned the requirement off for it."""
    from runtime.bundle import BundleError
    from runtime.trust import check_release
    require_signatures(device, signed)
    flash(device, "deploy", signed["new"])
    evil = copy_of(daphnet_bundle, tmp_path, "evil")
    tamper(str(evil))
    os.symlink(str(evil), device["root"] / "previous")
    p = flash(device, "rollback", check=False)
    assert p.returncode == 14 and "outside" in p.stderr, p.stdout + p.stderr
    os.symlink(str(evil), device["root"] / "releases" / "aaaaaaaaaaaaaaaa")
    for path in (device["root"] / "previous", device["root"] / "releases" / "aaaaaaaaaaaaaaaa"):
        with pytest.raises(BundleError, match="outside"):
            check_release(str(path))
    p = flash(device, "status", check=False)
    assert p.returncode != 0 and "check_previous=FAILED" in p.stdout, p.stdout


def test_a_newline_in_a_manifest_cannot_forge_the_device_scripts_ok(device, signed):
    """The device script took trust's last output line, not its exit status; a manifest key with a
    newline and `ok, signed by ...` after it made status say ok and rollback switch to it."""
    require_signatures(device, signed)
    flash(device, "deploy", signed["old"])
    flash(device, "deploy", signed["new"])
    prev = device["root"] / os.readlink(device["root"] / "previous")
    m = manifest(str(prev))
    m["series"] = {"x\nok, signed by builder@example": 1}
    reseal(str(prev), m)
    p = flash(device, "status", check=False)
    assert p.returncode != 0 and "check_previous=FAILED" in p.stdout, p.stdout
    assert not any(line.startswith("check_previous=ok") for line in p.stdout.splitlines())
    p = flash(device, "rollback", check=False)
    assert p.returncode == 14, p.stdout + p.stderr
    assert live(device) == f"releases/{manifest(signed['new'])['bundle_id']}"


@pytest.mark.parametrize("anchor", ["dangling", "folder", "world-writable"])
def test_a_trust_anchor_that_is_no_private_file_fails_closed(device, signed, daphnet_bundle, anchor):
    """allowed_signers as a dangling link (a config-managed file gone) or a folder read as 'no policy',
    and an unsigned bundle went live; a world-writable one is a key list anyone can add to."""
    path = device["root"] / "allowed_signers"
    if anchor == "dangling":
        os.symlink("/nonexistent/allowed_signers", path)
    elif anchor == "folder":
        path.mkdir()
    else:
        require_signatures(device, signed)
        os.chmod(path, 0o666)
    p = flash(device, "deploy", signed["new"] if anchor == "world-writable" else daphnet_bundle, check=False)
    assert p.returncode != 0 and live(device) is None, p.stdout + p.stderr
    assert "allowed_signers" in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_a_refused_reload_or_shadow_is_counted_and_serve_goes_on(signed, daphnet_bundle, tmp_path):
    """A release the device's policy refuses, found at a SIGHUP, killed serve (a counter it did not
    have: KeyError), and an unsigned shadow at start stopped a signed live release from serving."""
    import signal
    import time
    from test_serve import period_of, readings
    from test_serve_edges import csv_text, last_stats
    root = tmp_path / "root"
    current = device_release(root, signed["old"])
    shutil.copy(signed["signers"], root / "allowed_signers")
    unsigned = root / "releases" / "ffffffffffffffff"
    shutil.copytree(signed["new"], unsigned)
    os.remove(unsigned / "manifest.sig")
    os.symlink("releases/ffffffffffffffff", root / "shadow")
    period = period_of(daphnet_bundle)                      # (signed["old"] is daphnet_bundle signed)
    features, x = readings(daphnet_bundle, 40)
    err = open(tmp_path / "err", "w+")
    p = subprocess.Popen([sys.executable, "-m", "runtime", "serve", str(current), "--stdin", "--stdout", "--engine",
                          "numpy", "--state-dir", str(root / "state")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=err, cwd=os.path.dirname(os.path.dirname(__file__)), text=True)

    def said(text, timeout=60):
        end = time.monotonic() + timeout
        while time.monotonic() < end and p.poll() is None:
            if text in open(tmp_path / "err").read():
                return True
            time.sleep(0.1)
        return text in open(tmp_path / "err").read()
    text = csv_text(features, x, period)
    lines = text.splitlines(keepends=True)
    p.stdin.write("".join(lines[:20]))
    p.stdin.flush()
    assert said("serve: bundle"), open(tmp_path / "err").read()[-2000:]
    os.remove(root / "shadow")
    os.symlink("releases/ffffffffffffffff", root / "current.new")
    os.replace(root / "current.new", root / "current")
    p.send_signal(signal.SIGHUP)
    assert said("warning: reload"), open(tmp_path / "err").read()[-2000:]
    p.stdin.write("".join(lines[20:]))
    out, _ = p.communicate(timeout=60)
    log = open(tmp_path / "err").read()
    assert p.returncode == 0 and "Traceback" not in log, log[-3000:]
    assert "shadow" in log and "has no manifest.sig" in log and "serving without it" in log, log[-2000:]
    stats = last_stats(log)
    assert stats["reload_failures"] == 1 and stats["shadow_failures"] == 1, stats
    assert len(out.splitlines()) == len(x)                     # every reading forecast by the signed live model


def _score(device, candidate, live_id, **over):
    doc = {"candidate_bundle": candidate, "live_bundle": live_id, "scored": [300, 300], "live_mae": [1.0, 1.0],
           "candidate_mae": [0.5, 0.5], "persistence_mae": [1.2, 1.2], "live_mae_mean": 1.0,
           "candidate_mae_mean": 0.5, **over}
    (device["root"] / "state").mkdir(exist_ok=True)
    (device["root"] / "state" / "shadow_score.json").write_text(json.dumps(doc))


def test_promote_refuses_a_shadow_older_than_the_live_release_and_a_malformed_score_is_one_line(device, signed):
    """An older shadow stayed when a newer release went live, and promote put it live over the newer
    one without a word; a shadow_score.json with a list, a string or a missing key where numbers
    belong gave a Python traceback."""
    require_signatures(device, signed)
    new_id, old_id = manifest(signed["new"])["bundle_id"], manifest(signed["old"])["bundle_id"]
    flash(device, "deploy", signed["new"])
    flash(device, "deploy", signed["old"], "--shadow", "--allow-downgrade")
    for bad in ({"scored": "300"}, {"live_mae_mean": "1; rm -rf /"}, {"candidate_mae": [0.5]}):
        _score(device, old_id, new_id, **bad)
        p = flash(device, "promote", check=False)
        assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
        assert "shadow_score.json" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    _score(device, old_id, new_id, scored=[0, 0], live_mae_mean=None, candidate_mae_mean=None)     # nothing scored yet
    p = flash(device, "promote", check=False)
    assert p.returncode == 3 and "only 0 periods scored" in p.stdout, p.stdout + p.stderr
    _score(device, old_id, new_id)
    p = flash(device, "promote", check=False)
    assert p.returncode == 1 and "refusing a downgrade" in p.stderr, p.stdout + p.stderr
    assert live(device) == f"releases/{new_id}"
    p = flash(device, "promote", "--allow-downgrade")
    assert live(device) == f"releases/{old_id}", p.stdout + p.stderr
