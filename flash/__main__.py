"""`python -m flash {deploy,rollback,status,wheel,fleet}`: put a bundle live on a device, safely;
`deploy --shadow` then `promote`: a candidate proven on the device's live data first;
`collect`: bring what the devices captured back as a Parquet dataset."""
from __future__ import annotations

import argparse
import os
import shlex
import sys

from runtime.args import number, prog

from .deploy import ENGINE_PINS, FlashError, build_wheels, deploy
from .device import Device, DeviceError, is_local
from .promote import MARGIN, MIN_SCORED, Rule, promote


def _add_fleet(sub) -> None:
    """The `fleet` subcommand's arguments."""
    f = sub.add_parser("fleet", help="deploy, roll back or show many devices through Ansible (flash/fleet.yml)")
    f.add_argument("action", choices=("deploy", "rollback", "status", "collect"))
    f.add_argument("--inventory", required=True, help="an Ansible inventory (INI or YAML)")
    f.add_argument("--group", default="all", help="inventory group to act on")
    f.add_argument("--bundle", help="the bundle to deploy")
    f.add_argument("--install-runtime", action="store_true")
    f.add_argument("--engine", choices=sorted(ENGINE_PINS), default="litert")
    f.add_argument("--allow-downgrade", action="store_true", help="flash a bundle created before the live release")
    f.add_argument("--strategy", choices=("live", "shadow"), default="live",
                   help="shadow: each batch gets the bundle as shadow, then `flash promote` by the live score, or halts")
    f.add_argument("--min-scored", type=number("--min-scored", int, 1, 1e9), default=MIN_SCORED, help="shadow: periods scored on every step")
    f.add_argument("--margin", type=number("--margin", float, 0, 10), default=MARGIN, help="shadow: the promote rule's margin per step")
    f.add_argument("--shadow-timeout", type=number("--shadow-timeout", float, 0, 1e9), default=3600.0, metavar="SECONDS",
                   help="shadow: the longest a host waits for its periods scored (then refused, shadow removed)")
    f.add_argument("--serial", help="batches, e.g. '1,10%%,100%%' (default: one canary, then 10%%, then the rest)")
    f.add_argument("--out", help="collect: the dataset folder")
    f.add_argument("--capture-path", help="collect: capture.db on each device, relative to its root")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog("python -m flash"), description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("deploy")
    d.add_argument("bundle", nargs="?", help="the bundle (or, with --bundle, the device)")
    d.add_argument("--bundle", dest="bundle_flag", help="the bundle, when the device is given first")
    d.add_argument("--shadow", action="store_true", help="point <root>/shadow at it, not current: serve scores it "
                                                         "beside the live model until `flash promote`")
    pr = sub.add_parser("promote", help="switch current to the shadow when its live score beats the live model's")
    pr.add_argument("target", nargs="?", metavar="DEVICE", help="user@host[:port], an ssh config alias, or /path")
    pr.add_argument("--min-scored", type=number("--min-scored", int, 1, 1e9), default=MIN_SCORED, help="periods scored on every horizon step "
                                                                      f"(default {MIN_SCORED})")
    pr.add_argument("--margin", type=number("--margin", float, 0, 10), default=MARGIN, help="the most the candidate may be worse at any step "
                                                                 f"(default {MARGIN:g}, i.e. {MARGIN * 100:g}%%)")
    pr.add_argument("--discard", action="store_true", help="when refused, remove the shadow")
    pr.add_argument("--allow-downgrade", action="store_true",
                    help="promote a shadow created before the live release (refused otherwise, as a deploy is)")
    pr.add_argument("--wait", type=number("--wait", float, 0, 1e9), default=0.0, metavar="SECONDS",
                    help="first wait up to SECONDS for --min-scored periods on every step")
    c = sub.add_parser("collect", help="the rows a device captured (serve --capture) since the last collect, "
                                       "into a Parquet dataset partitioned by device and node")
    c.add_argument("target", nargs="?", metavar="DEVICE", help="user@host[:port], an ssh config alias, or /path")
    c.add_argument("--out", required=True, help="the dataset folder (created; collect again to add the new rows)")
    c.add_argument("--name", help="the device's name in the dataset (default: its host, or the folder's name)")
    c.add_argument("--capture-path", help="capture.db on the device, relative to --root (default state/capture.db)")
    c.add_argument("--batch-rows", type=number("--batch-rows", int, 1, 10_000_000), default=200_000, help="rows per verified batch (one ssh connection each)")
    for s in (d, sub.add_parser("rollback"), sub.add_parser("status"), c, pr):
        s.add_argument("--device", required=s not in (c, pr, d), help="user@host[:port], an ssh config alias, or /path")
        s.add_argument("--root", help="folder on the device: ssh devices relative to the login's home (default "
                                      "$DEVICE_ROOT or gru-edge); folder devices a folder inside the path (default: the path)")
        s.add_argument("--ssh-args", help="ssh options, one string split like a shell (what flash/fleet.yml maps an "
                                          "Ansible inventory's connection variables to); the device is then always "
                                          "an ssh destination, never a folder")
    d.add_argument("--install-runtime", action="store_true", help="install the runtime from a wheel into <root>/venv")
    d.add_argument("--engine", choices=sorted(ENGINE_PINS), default="litert")
    d.add_argument("--allow-downgrade", action="store_true", help="flash a bundle created before the live release")
    sub.add_parser("wheel", help="build dist/gru_edge_runtime-*.whl (the device install) and dist/gru_edge-*.whl")
    _add_fleet(sub)
    return p


def fleet(a) -> int:
    from . import fleet as fl
    if a.action == "collect":
        if not a.out:
            raise FlashError("fleet collect needs --out DIR")
        return fl.collect(a.inventory, a.group, a.out, a.capture_path)
    if a.action == "deploy":
        if not a.bundle:
            raise FlashError("fleet deploy needs --bundle")
        serial = [int(v) if v.isdigit() else v for v in a.serial.split(",")] if a.serial else None
        shadow = {"min_scored": a.min_scored, "margin": a.margin, "shadow_timeout": a.shadow_timeout} \
            if a.strategy == "shadow" else None
        return fl.deploy(a.inventory, a.group, a.bundle, a.install_runtime, a.engine, serial, a.allow_downgrade, shadow)
    return fl.rollback(a.inventory, a.group) if a.action == "rollback" else fl.status(a.inventory, a.group)


def ssh_args(text: str | None) -> list[str] | None:
    """--ssh-args split like a shell (as Ansible splits ansible_ssh_common_args); None when not given."""
    if text is None:
        return None
    try:
        return shlex.split(text)
    except ValueError as e:
        raise FlashError(f"--ssh-args {text!r} cannot be split like a shell line: {e}") from None


def _one_device(positional: str | None, flag: str | None, cmd: str = "collect", usage: str = "--out DIR") -> str:
    if bool(positional) == bool(flag):
        raise FlashError(f"{cmd} needs one device: python -m flash {cmd} DEVICE {usage} (or --device DEVICE)")
    return positional or flag


def _deploy_args(a) -> None:
    """`deploy BUNDLE --device D` or `deploy D --bundle BUNDLE`: a.bundle and a.device, both given once."""
    if a.bundle_flag:
        a.device = _one_device(a.bundle, a.device, "deploy", "--bundle BUNDLE")
        a.bundle = a.bundle_flag
    elif not (a.bundle and a.device):
        raise FlashError("deploy needs a bundle and a device: python -m flash deploy BUNDLE --device DEVICE "
                         "(or deploy DEVICE --bundle BUNDLE)")


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    if a.cmd == "wheel":
        print(*build_wheels(), sep="\n")
        return 0
    try:
        if a.cmd == "fleet":
            return fleet(a)
        if a.cmd in ("collect", "promote"):
            a.device = _one_device(a.target, a.device, a.cmd, "--out DIR" if a.cmd == "collect" else "")
        if a.cmd == "deploy":
            _deploy_args(a)
        root = a.root or (None if is_local(a.device) else os.environ.get("DEVICE_ROOT"))
        dev = Device(a.device, root, ssh_args=ssh_args(a.ssh_args))
        if a.cmd == "collect":
            from .collect import main_collect
            return main_collect(dev, a.out, a.name, a.capture_path, a.batch_rows)
        if a.cmd == "deploy":
            print(deploy(a.bundle, dev, a.install_runtime, a.engine, a.allow_downgrade, a.shadow))
            return 0
        if a.cmd == "promote":
            rc, text = promote(dev, Rule(a.min_scored, a.margin), a.discard, a.wait, a.allow_downgrade)
            print(text)
            return rc
        r = dev.command(a.cmd, timeout=120)
        print(r.stdout, end="")
        if r.returncode != 0:
            print(f"error: {a.cmd} on {dev.spec}: {r.stderr.strip()}", file=sys.stderr)
        return r.returncode
    except (FlashError, DeviceError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
