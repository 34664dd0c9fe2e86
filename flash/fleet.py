"""`python -m flash fleet {deploy,rollback,status} --inventory INV`: many devices through Ansible.

Runs flash/fleet.yml with ansible-playbook (the `fleet` extra) and prints one table for the whole
fleet. A deploy records which hosts it switched (build/fleet/last-rollout.json), so `rollback`
returns exactly those hosts to their previous release and leaves untouched hosts untouched.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

PLAYBOOK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fleet.yml")
LAST_ROLLOUT = os.path.join("build", "fleet", "last-rollout.json")


class FleetError(RuntimeError):
    """The fleet run could not start (no ansible-playbook, no inventory, nothing to roll back)."""


def _facts(status_stdout: str) -> dict:
    return dict(line.split("=", 1) for line in status_stdout.splitlines() if "=" in line and " " not in line.split("=")[0])


def _release(facts: dict) -> str:
    cur = facts.get("current", "none")
    return cur.split("/", 1)[1] if cur.startswith("releases/") else cur


def ansible_playbook() -> str:
    found = shutil.which("ansible-playbook") or os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
    if not os.path.exists(found):
        raise FleetError("ansible-playbook is not installed: pip install 'gru-edge[fleet]' (ansible-core, workstation only)")
    return found


def run_playbook(action: str, inventory: str, group: str, extra: dict, limit=None) -> tuple[int, list[dict], str]:
    """(exit status, one result per host, ansible's output). A deploy's rows are in the order the
    hosts were done (the canary first); the others' by host name."""
    if not os.path.isfile(inventory):
        raise FleetError(f"inventory {inventory} does not exist")
    with tempfile.TemporaryDirectory() as results:
        cmd = [ansible_playbook(), "-i", inventory, PLAYBOOK, "-e", json.dumps(
            {"fleet_action": action, "fleet_group": group, "fleet_results": results, "flash_python": sys.executable,
             **extra})]
        if limit:
            cmd += ["--limit", ",".join(limit)]
        env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_HOST_KEY_CHECKING": "True",
               "ANSIBLE_PYTHON_INTERPRETER": sys.executable, "PYTHONPATH": os.getcwd()}
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        files = sorted((os.path.join(results, f) for f in os.listdir(results)), key=os.path.getmtime)
        rows = [json.load(open(f)) for f in files]
    if action != "deploy":            # run on every host at once: list them by name
        rows.sort(key=lambda r: r["host"])
    return p.returncode, rows, p.stdout + p.stderr


def table(rows: list[dict], status: bool = False) -> str:
    if status:
        head = "| host | release | runtime | last verify |\n|---|---|---|---|"
        body = [f"| {r['host']} | {_release(_facts(r['after']))} | {_facts(r['after']).get('runtime_version', '?')} | "
                f"{_facts(r['after']).get('last_verify', '?')} |" for r in rows]
    else:
        head = "| # | host | previous release | current release | result |\n|---|---|---|---|---|"
        body = [f"| {i + 1} | {r['host']} | {_release(_facts(r['before']))} | {_release(_facts(r['after']))} | "
                f"{r['result']}{': ' + r['detail'] if r['result'] == 'FAILED' else ''} |" for i, r in enumerate(rows)]
    return "\n".join([head, *body])


def deploy(inventory, group, bundle, install_runtime=False, engine="litert", serial=None) -> int:
    extra = {"bundle": os.path.abspath(bundle), "install_runtime": install_runtime, "engine": engine}
    if serial:
        extra["fleet_serial"] = serial
    t0 = time.perf_counter()
    rc, rows, log = run_playbook("deploy", inventory, group, extra)
    os.makedirs(os.path.dirname(LAST_ROLLOUT), exist_ok=True)
    with open(LAST_ROLLOUT, "w") as f:
        json.dump({"inventory": os.path.abspath(inventory), "bundle": bundle,
                   "switched": [r["host"] for r in rows if r["result"] == "changed"], "rows": rows}, f, indent=2)
    print(table(rows))
    print(f"{len(rows)} host(s) in {time.perf_counter() - t0:.1f} s; "
          + ("rollout complete" if rc == 0 else "rollout HALTED at the first failure; hosts not reached are unchanged"))
    if rc != 0 and not rows:
        print(log[-2000:], file=sys.stderr)
    return 0 if rc == 0 else 1


def rollback(inventory, group) -> int:
    if not os.path.isfile(LAST_ROLLOUT):
        raise FleetError(f"no rollout recorded ({LAST_ROLLOUT}): nothing to roll back")
    with open(LAST_ROLLOUT) as f:
        last = json.load(f)
    if not last["switched"]:
        print("the last rollout switched no host: nothing to roll back")
        return 0
    rc, rows, log = run_playbook("rollback", inventory, group, {}, limit=last["switched"])
    print(table(rows))
    if rc == 0:
        os.remove(LAST_ROLLOUT)
    return 0 if rc == 0 else 1


def status(inventory, group) -> int:
    rc, rows, log = run_playbook("status", inventory, group, {})
    print(table(rows, status=True))
    return 0 if rc == 0 else 1
