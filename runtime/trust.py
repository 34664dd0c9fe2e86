"""Trust on the device: is this release what its owner signed, and not older than the live one?

A device root that holds `allowed_signers` (an OpenSSH allowed-signers file) requires every
release to carry `manifest.sig`, an OpenSSH signature over manifest.json (namespace
`gru-edge-bundle`, made by `export`/`quantize --sign`). manifest.json lists every artifact's
sha256, so checksums + signature cover the whole bundle. The check runs at deploy (flash's
device script), at load (`stream` and `serve` started from a device root), in `flash status`
and before a `flash rollback`, not only once at upload. Stdlib + runtime.bundle only; the
signature is checked by `ssh-keygen -Y find-principals` / `-Y verify`, as the device script does.

    >>> from runtime.trust import check_signature_at_load
    >>> check_signature_at_load("bundles/demo")      # not in a device root: nothing required
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

from .bundle import (BUNDLE_ID, SIGNATURE_FILE, SIGNATURE_NAMESPACE, BundleError, check_artifact, check_golden,
                     read_manifest)

ALLOWED_SIGNERS = "allowed_signers"     # <root>/allowed_signers: this device requires signed bundles
RELEASES = "releases"                   # <root>/releases/<bundle-id>: the flashed releases (flash/device.py)


def signature_policy(bundle: str) -> str | None:
    """The device root's allowed_signers file when `bundle` resolves into `<root>/releases/<name>`
    and that root requires signatures; None otherwise (a bundle outside a device root)."""
    real = os.path.realpath(bundle)
    parent = os.path.dirname(real)
    if os.path.basename(parent) != RELEASES:
        return None
    signers = os.path.join(os.path.dirname(parent), ALLOWED_SIGNERS)
    return signers if os.path.isfile(signers) else None


def _ssh_keygen(args: list[str], stdin=None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["ssh-keygen", *args], stdin=stdin or subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=30)
    except FileNotFoundError:
        raise BundleError("ssh-keygen is not installed, and this device requires signed bundles: "
                          "install openssh-client") from None


def verify_signature(bundle: str, signers: str) -> str:
    """The principal whose key in `signers` signed bundle/manifest.json; raises BundleError naming why not."""
    sig = os.path.join(bundle, SIGNATURE_FILE)
    if not os.path.isfile(sig):
        raise BundleError(f"this device requires signed bundles ({signers}) and {bundle} has no {SIGNATURE_FILE}")
    found = _ssh_keygen(["-Y", "find-principals", "-s", sig, "-f", signers])
    who = found.stdout.strip().splitlines()[0] if found.returncode == 0 and found.stdout.strip() else ""
    if not who:
        raise BundleError(f"the bundle's signature ({sig}) is not by a key in {signers}")
    with open(os.path.join(bundle, "manifest.json"), "rb") as manifest:
        ok = _ssh_keygen(["-Y", "verify", "-f", signers, "-I", who, "-n", SIGNATURE_NAMESPACE, "-s", sig], manifest)
    if ok.returncode != 0:
        raise BundleError(f"the bundle's signature ({sig}) does not verify against {signers} "
                          "(manifest.json changed after signing?)")
    return who


def check_signature_at_load(bundle: str) -> str | None:
    """At start-up of `stream`/`serve`: the signer's principal when the bundle lives in a device
    root that requires signatures, None when nothing is required.

    Raises:
        BundleError: one line, when the signature is missing, by an unknown key, or void.
    """
    signers = signature_policy(bundle)
    return verify_signature(bundle, signers) if signers else None


def check_release(bundle: str) -> str:
    """A release re-checked as it is now: manifest and id, every artifact's and the golden
    vectors' sha256, and the signature where the device root requires one.

    Returns "ok" or "ok, signed by <principal>". Raises BundleError naming the first problem.
    """
    m = read_manifest(bundle)
    who = check_signature_at_load(bundle)
    real = os.path.realpath(bundle)
    folder = os.path.basename(real)
    if os.path.basename(os.path.dirname(real)) == RELEASES and BUNDLE_ID.fullmatch(folder) and folder != m["bundle_id"]:
        raise BundleError(f"release folder {folder} holds bundle {m['bundle_id']}: its manifest was edited "
                          "on the device (the id names the content)")
    for art in m["artifacts"]:
        check_artifact(bundle, art)
    check_golden(bundle, m)
    return f"ok, signed by {who}" if who else "ok"


def older_than_live(bundle: str, live: str) -> str | None:
    """Why `bundle` would be a downgrade from the `live` release (its signed `created` time is
    earlier), or None. A live release that no longer checks out has no trusted time: None."""
    try:
        check_release(live)
        then, now = read_manifest(bundle).get("created", ""), read_manifest(live).get("created", "")
    except BundleError:
        return None
    if str(then) < str(now):
        name, live_name = (os.path.basename(os.path.realpath(b)) for b in (bundle, live))
        return (f"refusing a downgrade: {name} was created {then or 'at an unknown time'}, "
                f"before the live release {live_name} ({now}); "
                "flash it with --allow-downgrade if that is meant")
    return None


def main(argv=None) -> int:
    """`python -m runtime.trust RELEASE [--not-older-than LIVE]`: one line, "ok..." (exit 0) or
    "FAILED: why" (exit 1); what flash's device script runs for deploy, status and rollback."""
    p = argparse.ArgumentParser(prog="python -m runtime.trust", description=main.__doc__)
    p.add_argument("release")
    p.add_argument("--not-older-than", metavar="LIVE", help="also refuse a release created before LIVE")
    a = p.parse_args(argv)
    try:
        line = check_release(a.release)
        why = older_than_live(a.release, a.not_older_than) if a.not_older_than else None
    except BundleError as e:
        line, why = None, str(e)
    except OSError as e:
        line, why = None, f"{a.release}: {e.strerror}: {e.filename}"
    print(line if why is None else f"FAILED: {why}")
    return 0 if why is None else 1


if __name__ == "__main__":
    sys.exit(main())
