"""Trust on the device: is this release what its owner signed, and not older than the live one?

A device root that holds `allowed_signers` (an OpenSSH allowed-signers file) requires every
release to carry `manifest.sig`, an OpenSSH signature over manifest.json (namespace
`gru-edge-bundle`, made by `export`/`quantize --sign`). manifest.json lists every artifact's
sha256, so checksums + signature cover every file flash sends (the manifest, its signature, the
artifacts and golden vectors it lists; the report and plots stay on the workstation). The check runs at deploy (flash's
device script), at load (`stream` and `serve` started from a device root), in `flash status`
and before a `flash rollback`, not only once at upload. Stdlib + runtime.bundle only; the
signature is checked by `ssh-keygen -Y find-principals` / `-Y verify`, as the device script does.

    >>> from runtime.trust import check_signature_at_load
    >>> check_signature_at_load("bundles/demo")      # not in a device root: nothing required
"""
from __future__ import annotations

import argparse
import os
import stat
import subprocess
import sys

from .bundle import (BUNDLE_ID, SIGNATURE_FILE, SIGNATURE_NAMESPACE, BundleError, check_artifact, check_golden,
                     read_manifest)

ALLOWED_SIGNERS = "allowed_signers"     # <root>/allowed_signers: this device requires signed bundles
RELEASES = "releases"                   # <root>/releases/<bundle-id>: the flashed releases (flash/device.py)


LINKS = ("current", "previous", "shadow")  # <root>/<link> -> releases/<bundle-id>


def device_root(path: str) -> str | None:
    """The device root `path` names as written (<root>/releases/<name> or <root>/current, previous,
    shadow), or where it resolves to (<root>/releases/<name>); None for a bundle elsewhere."""
    for p in (os.path.abspath(path), os.path.realpath(path)):
        parent, name = os.path.split(p.rstrip(os.sep))
        if os.path.basename(parent) == RELEASES:
            return os.path.dirname(parent)
        if name in LINKS and os.path.islink(p):
            return parent
    return None


def signature_policy(bundle: str) -> str | None:
    """The device root's allowed_signers file when `bundle` is in a device root (as named, or as
    resolved) and that root requires signatures; None otherwise (a bundle outside a device root).

    Fails closed: an allowed_signers that is there but no readable regular file (a dangling link, a
    folder) or that anyone may write to, and a release that resolves outside <root>/releases (a link
    to a folder elsewhere), are BundleErrors, not "nothing required"."""
    root = device_root(bundle)
    if root is None:
        return None
    signers = os.path.join(root, ALLOWED_SIGNERS)
    if not os.path.lexists(signers):
        return None
    try:
        st = os.stat(signers)
    except OSError as e:
        raise BundleError(f"{signers}: {e.strerror}: this device's list of signing keys is unreadable; "
                          "refusing every bundle until it is fixed") from None
    if not stat.S_ISREG(st.st_mode) or st.st_mode & stat.S_IWOTH:
        raise BundleError(f"{signers} is {'writable by anyone' if stat.S_ISREG(st.st_mode) else 'not a file'}: "
                          "refusing every bundle until it is a file only its owner can change (chmod 644)")
    real = os.path.realpath(bundle)
    if os.path.dirname(real) != os.path.realpath(os.path.join(root, RELEASES)):
        raise BundleError(f"{bundle} resolves to {real}, outside {os.path.join(root, RELEASES)}: this device "
                          "requires signed releases, and runs only those flash placed there")
    return signers


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
    earlier), or None. The live release's time is its manifest's, trusted where that manifest reads
    and its signature verifies (where the device requires one), whatever became of its artifacts; a
    live manifest that no longer does has no trusted time: None (a broken device can be reflashed)."""
    try:
        now = read_manifest(live).get("created", "")
        check_signature_at_load(live)
        then = read_manifest(bundle).get("created", "")
    except (BundleError, OSError):
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
    print(line if why is None else f"FAILED: {one_line(why)}")
    return 0 if why is None else 1


def one_line(text: str) -> str:
    """`text` with what could break a line (a newline from a manifest's field name) escaped: the
    device script reads one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


if __name__ == "__main__":
    sys.exit(main())
