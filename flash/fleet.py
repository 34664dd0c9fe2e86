"""`python -m flash fleet {deploy,rollback,status,collect} --inventory INV`: many devices through Ansible.

Runs flash/fleet.yml with ansible-playbook (the `fleet` extra) and prints one table for the whole
fleet. `deploy --strategy shadow` puts the bundle on each batch as shadow and promotes it per host
only when the host's live score says so (flash/promote.py), halting at the first refusal with that
host's shadow removed; the table then shows each host's live and candidate MAE, periods scored and
the decision. A deploy records which hosts it switched (build/fleet/last-rollout.json), so `rollback`
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


def account(hosts: list[str], rows: list[dict], rc: int) -> tuple[int, list[dict]]:
    """Every targeted host with a row: a host without a result is FAILED (and the run with it)
    when Ansible says the run went through, and 'not reached' when the rollout halted before it."""
    seen = {r["host"] for r in rows}
    missing = [h for h in hosts if h not in seen]
    result = "not reached" if rc != 0 else "FAILED"     # halted before it, or went through without a word
    rows = rows + [{"host": h, "device": "?", "root": "?", "before": "", "after": "", "result": result,
                    "detail": "no result recorded for this host"} for h in missing]
    return (1 if missing and rc == 0 else rc), rows


def run_playbook(action: str, inventory: str, group: str, extra: dict, limit=None) -> tuple[int, list[dict], str]:
    """(exit status, one result per targeted host, ansible's output). A deploy's rows are in the
    order the hosts were done (the canary first); the others' by host name."""
    if not os.path.isfile(inventory):
        raise FleetError(f"inventory {inventory} does not exist")
    with tempfile.TemporaryDirectory() as results:
        cmd = [ansible_playbook(), "-i", inventory, PLAYBOOK, "-e", json.dumps(
            {"fleet_action": action, "fleet_group": group, "fleet_results": results, "flash_python": sys.executable,
             **extra})]
        if limit:               # a file of host names: a name is never read as a pattern (',', ':', '!', '~')
            with open(os.path.join(results, "limit"), "w") as f:
                f.write("".join(f"{h}\n" for h in limit))
            cmd += ["--limit", "@" + os.path.join(results, "limit")]
        env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_HOST_KEY_CHECKING": "True",
               "ANSIBLE_PYTHON_INTERPRETER": sys.executable, "PYTHONPATH": os.getcwd()}
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        listed = os.path.join(results, "hosts.json")
        hosts = json.load(open(listed)) if os.path.isfile(listed) else list(limit or [])
        files = sorted((os.path.join(results, f) for f in os.listdir(results)
                        if f.endswith(".json") and f != "hosts.json"), key=os.path.getmtime)
        rows = [json.load(open(f)) for f in files]
    rc, rows = account(hosts, rows, p.returncode)
    if action != "deploy":            # run on every host at once: list them by name
        rows.sort(key=lambda r: r["host"])
    return rc, rows, p.stdout + p.stderr


def _cell(text) -> str:
    """A table cell: one line, no column separator (host names come from the inventory)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def shadow_cells(row: dict) -> str:
    """live MAE | candidate MAE | periods scored | decision, from promote's `shadow_score:` line."""
    text = (row.get("detail") or "") + "\n" + (row.get("promote") or "")
    line = next((ln for ln in text.splitlines() if ln.startswith("shadow_score: ")), None)
    if line is None:
        return " | | | " + ("not reached" if row["result"] == "not reached" else "-")
    f = dict(kv.split("=", 1) for kv in line[len("shadow_score: "):].split())
    num = lambda v: v if v == "None" else f"{float(v):.4g}"       # noqa: E731
    return f" {num(f['live_mae'])} | {num(f['candidate_mae'])} | {f['scored']} | {f['decision']}"


def _result(row: dict) -> str:
    """ok/changed/..., or FAILED with why (a refusal's why is its decision and numbers, beside it)."""
    scored = "shadow_score: " in (row.get("detail") or "") + (row.get("promote") or "")
    return row["result"] + (": " + row["detail"] if row["result"] == "FAILED" and not scored else "")


def table(rows: list[dict], status: bool = False, shadow: bool = False) -> str:
    if shadow:
        head = ("| # | host | previous release | current release | live MAE | candidate MAE | periods scored | decision "
                "| result |\n|---|---|---|---|---|---|---|---|---|")
        body = [f"| {i + 1} | {_cell(r['host'])} | {_release(_facts(r['before']))} | {_release(_facts(r['after']))} |"
                f"{shadow_cells(r)} | {_cell(_result(r))} |"
                for i, r in enumerate(rows)]
        return "\n".join([head, *body])
    if status:
        head = "| host | release | runtime | last verify | checked now |\n|---|---|---|---|---|"
        body = [f"| {_cell(r['host'])} | {_release(_facts(r['after']))} | {_facts(r['after']).get('runtime_version', '?')} | "
                f"{_facts(r['after']).get('last_verify', '?')} | {_cell(_check(r))} |" for r in rows]
    else:
        head = "| # | host | previous release | current release | result |\n|---|---|---|---|---|"
        body = [f"| {i + 1} | {_cell(r['host'])} | {_release(_facts(r['before']))} | {_release(_facts(r['after']))} | "
                f"{_cell(r['result'] + (': ' + r['detail'] if r['result'] == 'FAILED' or 'replaced' in r['detail'] else ''))} |"
                for i, r in enumerate(rows)]
    return "\n".join([head, *body])


def _check(row: dict) -> str:
    """What `flash status` found checking current (and previous) as they are now."""
    if row["result"] == "FAILED":
        return "FAILED: " + row["detail"]
    f = _facts(row["after"])
    if not f:                          # `flash status` said nothing: the host was not reached
        return "FAILED: " + (row.get("after_error") or "no status from this host")
    bad = [f"{k[6:]}: {v.removeprefix('FAILED: ')}" for k, v in f.items()
           if k.startswith("check_") and not v.startswith("ok")]
    return "FAILED: " + "; ".join(bad) if bad else f.get("check_current", "no release")


def deploy(inventory, group, bundle, install_runtime=False, engine="litert", serial=None, allow_downgrade=False,
           shadow: dict | None = None) -> int:
    """Staged rollout of `bundle`; 0 when every host has it live (or already had it). shadow
    ({min_scored, margin, shadow_timeout}): each host proves it as shadow first (flash/promote.py)."""
    extra = {"bundle": os.path.abspath(bundle), "install_runtime": install_runtime, "engine": engine,
             "allow_downgrade": allow_downgrade, **({"fleet_strategy": "shadow", **shadow} if shadow else {})}
    if serial:
        extra["fleet_serial"] = serial
    t0 = time.perf_counter()
    rc, rows, log = run_playbook("deploy", inventory, group, extra)
    os.makedirs(os.path.dirname(LAST_ROLLOUT), exist_ok=True)
    with open(LAST_ROLLOUT, "w") as f:
        json.dump({"inventory": os.path.abspath(inventory), "bundle": bundle,
                   "switched": [r["host"] for r in rows if r["result"] == "changed"], "rows": rows}, f, indent=2)
    print(table(rows, shadow=bool(shadow)))
    if shadow:
        print(f"promote rule: >= {shadow['min_scored']} periods scored on every step; candidate MAE <= live MAE x "
              f"{1 + shadow['margin']:g} at every step; candidate MAE < live MAE overall")
    print(f"{len(rows)} host(s) in {time.perf_counter() - t0:.1f} s; "
          + ("rollout complete" if rc == 0 else "rollout HALTED at the first failure; hosts not reached are unchanged"))
    if rc != 0 and all(r["device"] == "?" for r in rows):     # ansible stopped before any host's step
        print(log[-2000:], file=sys.stderr)
    return 0 if rc == 0 else 1


def rollback(inventory, group) -> int:
    """The hosts the last rollout switched go back to their previous release (which is re-checked first)."""
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


def collect(inventory, group, out, capture_path=None) -> int:
    """Every host's new captured rows into the dataset `out` (flash/collect.py per host, in parallel):
    one table row per host; 1 when a host could not be collected (the others' rows are kept)."""
    extra = {"collect_out": os.path.abspath(out), **({"capture_path": capture_path} if capture_path else {})}
    rc, rows, log = run_playbook("collect", inventory, group, extra)
    lines = ["| device | rows | from (UTC) | to (UTC) | nodes | bundles | rows/s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        got = [ln for ln in r["detail"].splitlines()[2:] if ln.startswith("|")] if r["result"] != "FAILED" else []
        lines += got or [f"| {_cell(r['host'])} | FAILED: {_cell(r['detail'] or 'no result')} | | | | | |"]
    print("\n".join(lines))
    if rc != 0 and all(r["device"] == "?" for r in rows):
        print(log[-2000:], file=sys.stderr)
    return 0 if rc == 0 and all(r["result"] != "FAILED" for r in rows) else 1


def status(inventory, group) -> int:
    """One row per host; 1 when a host cannot be reached or its releases do not verify as they are now."""
    rc, rows, log = run_playbook("status", inventory, group, {})
    print(table(rows, status=True))
    bad = [r["host"] for r in rows if _check(r).startswith("FAILED")]
    if bad:
        print(f"{len(bad)} host(s) not reached or whose releases do not verify now: {', '.join(bad)}", file=sys.stderr)
    return 0 if rc == 0 and not bad else 1
