"""Fleet rollouts through real Ansible to three real sshd instances on loopback (issue 18)."""
import json
import os
import sys

import pytest

from conftest import ROOT, LoopbackSSHD, copy_bundle, run_module

HOSTS = ("dev1", "dev2", "dev3")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Three sshd instances, each with its own device root; one ssh config and one inventory."""
    d = tmp_path_factory.mktemp("fleet")
    servers, config = [], []
    for i, host in enumerate(HOSTS):
        folder = d / host
        folder.mkdir()
        servers.append(LoopbackSSHD(folder, host, keys_from=None if i == 0 else d / HOSTS[0]))
        config.append(servers[-1].config_entry(folder))
    (d / "ssh_config").write_text("".join(config))
    yield {"dir": d, "config": str(d / "ssh_config"), "servers": dict(zip(HOSTS, servers))}
    for s in servers:
        s.stop()


@pytest.fixture
def inventory(fleet, tmp_path):
    roots = {h: tmp_path / f"root-{h}" for h in HOSTS}
    inv = tmp_path / "inventory.ini"
    inv.write_text("[sensors]\n" + "".join(f"{h} device_root={roots[h]}\n" for h in HOSTS))
    env = {"FLASH_SSH_CONFIG": fleet["config"], "FLASH_DEVICE_PYTHON": sys.executable}   # runtime already there
    return {"path": str(inv), "roots": roots, "env": env, "cwd": tmp_path}


def fleet_cmd(inv, *args, check=True):
    p = run_module("flash", "fleet", *args, "--inventory", inv["path"], "--group", "sensors", env=inv["env"],
                   check=False, timeout=600, cwd=str(inv["cwd"]))
    if check:
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    return p


def current(inv, host):
    link = inv["roots"][host] / "current"
    return os.readlink(link) if os.path.islink(link) else None


def table_rows(stdout):
    return [[c.strip() for c in line.strip("|").split("|")] for line in stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| #") and not line.startswith("| host")]


def test_rollout_canary_first_then_idempotent_then_status(inventory, daphnet_bundle):
    bid = json.load(open(os.path.join(daphnet_bundle, "manifest.json")))["bundle_id"]
    p = fleet_cmd(inventory, "deploy", "--bundle", daphnet_bundle)
    rows = table_rows(p.stdout)
    assert [r[1] for r in rows] == list(HOSTS)                   # the canary (dev1) first, in inventory order
    assert all(r[2] == "none" and r[3] == bid and r[4] == "changed" for r in rows), p.stdout
    assert all(current(inventory, h) == f"releases/{bid}" for h in HOSTS)
    p = fleet_cmd(inventory, "deploy", "--bundle", daphnet_bundle)   # rerun: nothing to do
    assert all(r[4] == "unchanged" for r in table_rows(p.stdout)), p.stdout
    p = fleet_cmd(inventory, "status")
    rows = table_rows(p.stdout)
    assert [r[0] for r in rows] == list(HOSTS) and all(r[1] == bid for r in rows), p.stdout
    assert all(r[3].endswith(f"{bid} ok") and r[4] == "ok" for r in rows), p.stdout   # re-checked now, not stored
    for h in HOSTS:                                             # the table matches the roots on disk
        assert (inventory["roots"][h] / "last_verify").read_text().split()[1] == bid


def _broken_copy(src, tmp_path, name):
    """A bundle whose golden forecasts its model cannot meet: it fails `runtime verify` on the device."""
    import numpy as np
    from runtime.bundle import bundle_id, sha256_file
    b = copy_bundle(src, tmp_path / name)
    g = os.path.join(b, "golden.npz")
    with np.load(g) as z:
        data = {k: z[k] for k in z.files}
    data["forecast/step.tflite"] = data["forecast/step.tflite"] + 1000.0
    np.savez(g, **data)
    m = json.load(open(os.path.join(b, "manifest.json")))
    m["golden"].update(sha256=sha256_file(g), bytes=os.path.getsize(g))
    m["bundle_id"] = bundle_id(m)
    json.dump(m, open(os.path.join(b, "manifest.json"), "w"))
    return b


def test_a_failing_canary_stops_the_rollout(inventory, daphnet_bundle, tmp_path):
    fleet_cmd(inventory, "deploy", "--bundle", daphnet_bundle)
    before = {h: current(inventory, h) for h in HOSTS}
    bad = _broken_copy(daphnet_bundle, tmp_path, "bad")
    p = fleet_cmd(inventory, "deploy", "--bundle", bad, check=False)
    assert p.returncode == 1 and "HALTED" in p.stdout
    rows = table_rows(p.stdout)
    assert [r[1] for r in rows] == list(HOSTS) and rows[0][4].startswith("FAILED"), p.stdout
    assert [r[4] for r in rows[1:]] == ["not reached", "not reached"], p.stdout     # every host accounted for
    assert {h: current(inventory, h) for h in HOSTS} == before


def test_a_failure_mid_batch_stops_and_one_command_rolls_back(inventory, daphnet_bundle, two_layer_bundle):
    from conftest import free_port
    fleet_cmd(inventory, "deploy", "--bundle", daphnet_bundle)
    old = {h: current(inventory, h) for h in HOSTS}
    text = open(inventory["path"]).read()     # dev3 goes down: flash cannot reach it
    open(inventory["path"], "w").write(text.replace("dev3 device_root", f"dev3 flash_device=nobody@127.0.0.1:{free_port()} "
                                                                       "device_root"))
    p = fleet_cmd(inventory, "deploy", "--bundle", two_layer_bundle, "--serial", "1,1,1", check=False)
    rows = table_rows(p.stdout)
    assert p.returncode == 1 and [r[4] for r in rows[:2]] == ["changed", "changed"], p.stdout
    assert rows[2][1] == "dev3" and rows[2][4].startswith("FAILED") and "cannot reach device" in rows[2][4]
    new = current(inventory, "dev1")
    assert new != old["dev1"] and current(inventory, "dev2") == new and current(inventory, "dev3") == old["dev3"]
    p = fleet_cmd(inventory, "rollback")                 # one command: exactly the hosts that were switched
    assert [r[1] for r in table_rows(p.stdout)] == ["dev1", "dev2"]
    assert {h: current(inventory, h) for h in HOSTS} == old


def test_devices_that_require_signatures_refuse_an_unsigned_rollout(inventory, daphnet_bundle, tmp_path):
    import subprocess
    key = tmp_path / "builder"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    pub = (tmp_path / "builder.pub").read_text().split()
    root = inventory["roots"]["dev1"]
    root.mkdir(parents=True, exist_ok=True)
    (root / "allowed_signers").write_text(f"builder@example {pub[0]} {pub[1]}\n")
    p = fleet_cmd(inventory, "deploy", "--bundle", daphnet_bundle, check=False)
    rows = table_rows(p.stdout)
    assert p.returncode == 1 and rows[0][1] == "dev1" and "requires signed bundles" in rows[0][4], p.stdout
    assert all(current(inventory, h) is None for h in HOSTS)            # nobody changed


# -- issue 25 -------------------------------------------------------------------------------------
def test_a_host_name_never_becomes_a_path_and_every_host_is_accounted_for(inventory, daphnet_bundle, two_layer_bundle,
                                                                          tmp_path):
    """A host named like a path deploys, and its result stays in the run's folder and in the table."""
    import secrets
    name = f"../../../../tmp/gru-edge-escape-{secrets.token_hex(4)}"
    escaped = [f"/tmp/{os.path.basename(name)}.json", f"{ROOT}/{os.path.basename(name)}.json"]
    root = tmp_path / "root-escape"
    with open(inventory["path"], "a") as f:
        f.write(f"{name} ansible_host=dev2 device_root={root}\n")
    try:
        p = fleet_cmd(inventory, "deploy", "--bundle", daphnet_bundle)
        rows = table_rows(p.stdout)
        assert sorted(r[1] for r in rows) == sorted([*HOSTS, name]) and all(r[4] == "changed" for r in rows), p.stdout
        assert not any(os.path.exists(e) for e in escaped)
        first = os.readlink(root / "current")
        fleet_cmd(inventory, "deploy", "--bundle", two_layer_bundle)
        assert os.readlink(root / "current") != first
        p = fleet_cmd(inventory, "rollback")             # the recorded host name comes back as a name, not a pattern
        assert [r[1] for r in table_rows(p.stdout)] == sorted([*HOSTS, name]), p.stdout
        assert os.readlink(root / "current") == first
    finally:
        for e in escaped:
            if os.path.exists(e):
                os.remove(e)


def test_a_missing_result_is_a_failure():
    from flash.fleet import account
    rc, rows = account(["a", "b"], [{"host": "a", "result": "changed"}], 0)
    assert rc == 1 and rows[1]["host"] == "b" and rows[1]["result"] == "FAILED"
    rc, rows = account(["a", "b"], [{"host": "a", "result": "FAILED"}], 2)
    assert rc == 2 and rows[1]["result"] == "not reached"


def test_a_standard_inventory_with_key_file_and_common_args_and_no_ssh_config(fleet, daphnet_bundle, tmp_path):
    """The connection comes from the inventory alone, as `ansible -m ping` uses it: a key file and
    strict host-key checking against a known_hosts file named in ansible_ssh_common_args."""
    import getpass
    import subprocess
    server, folder = fleet["servers"]["dev2"], fleet["dir"] / "dev2"
    root = tmp_path / "root-std"
    inv = tmp_path / "standard.ini"
    inv.write_text(
        "[sensors]\n"
        f"pi-std ansible_host=127.0.0.1 ansible_port={server.port} ansible_user={getpass.getuser()} "
        f"ansible_ssh_private_key_file={server.client_key} device_root={root} "
        f"ansible_ssh_common_args='-o UserKnownHostsFile={folder}/known_hosts -o StrictHostKeyChecking=yes'\n")
    env = {**os.environ, "ANSIBLE_HOST_KEY_CHECKING": "True", "ANSIBLE_PYTHON_INTERPRETER": sys.executable}
    env.pop("FLASH_SSH_CONFIG", None)
    ping = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible"), "-i", str(inv), "sensors",
                           "-m", "ping"], capture_output=True, text=True, env=env, timeout=120)
    assert ping.returncode == 0 and "SUCCESS" in ping.stdout, ping.stdout + ping.stderr
    std = {"path": str(inv), "env": {"FLASH_DEVICE_PYTHON": sys.executable}, "cwd": tmp_path}
    p = fleet_cmd(std, "deploy", "--bundle", daphnet_bundle, check=False)
    assert p.returncode == 0 and table_rows(p.stdout)[0][4] == "changed", p.stdout + p.stderr[-1500:]
    assert os.path.islink(root / "current")
    p = fleet_cmd(std, "status")
    assert table_rows(p.stdout)[0][4] == "ok", p.stdout


def test_fleet_status_rechecks_every_host_as_it_is_now(inventory, daphnet_bundle):
    from conftest import reseal
    fleet_cmd(inventory, "deploy", "--bundle", daphnet_bundle)
    live = inventory["roots"]["dev2"] / "current"
    m = json.load(open(live / "manifest.json"))
    m["scaler"]["targets"]["offset"] = [v + 10 for v in m["scaler"]["targets"]["offset"]]   # edited on the device
    reseal(str(live), m)
    p = fleet_cmd(inventory, "status", check=False)
    rows = {r[0]: r for r in table_rows(p.stdout)}
    assert p.returncode == 1 and rows["dev2"][4].startswith("FAILED: current: release folder"), p.stdout
    assert rows["dev1"][4] == rows["dev3"][4] == "ok" and "dev2" in p.stderr
