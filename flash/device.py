"""A device reached over OpenSSH (`user@host[:port]`, any ~/.ssh/config alias) or a local folder.

Everything on the device is done by one POSIX sh script (DEVICE_SCRIPT) sent on ssh's stdin, and
uploads are a tar stream over one ssh connection: the device needs sh, tar, sha256sum and
Python, nothing else. Device layout under its root:

    releases/<bundle-id>/   one folder per flashed bundle
    current  -> releases/<bundle-id>    the live release (symlink switched atomically)
    previous -> releases/<bundle-id>    kept for `rollback`
    venv/                   the runtime, when installed by flash (FLASH_RUNTIME=1)
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys

CONNECT_TIMEOUT_S = 10

DEVICE_SCRIPT = r'''
set -u
ROOT="$1"; CMD="$2"; PY="$3"; shift 3
mkdir -p "$ROOT/releases" || exit 10
cd "$ROOT" || exit 10
RPY="$ROOT/venv/bin/python"; [ -x "$RPY" ] || RPY="$PY"
switch() {  # switch <link> <target>: atomic symlink replacement (rename over the old link)
  ln -sfn "$2" "$1.new" && mv -T "$1.new" "$1"
}
case "$CMD" in
check)
  rm -rf releases/.tmp-*          # uploads cut off by an earlier failure: never live, drop them
  echo "arch=$(uname -m)"
  echo "free_kb=$(df -Pk . | awk 'NR==2 {print $4}')"
  echo "python=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo none)"
  echo "runtime=$("$RPY" -c 'import numpy, runtime; print("ok")' 2>/dev/null || echo missing)"
  echo "current=$(readlink current 2>/dev/null || true)"
  echo "previous=$(readlink previous 2>/dev/null || true)"
  ;;
verify)     # verify <tmp>: checksums of what arrived, then the golden vectors through the runtime
  ( cd "releases/$1" && sha256sum -c --quiet SHA256SUMS ) || { echo "checksum mismatch on the device" >&2; exit 3; }
  "$RPY" -m runtime verify "releases/$1" || { echo "runtime verify failed on the device" >&2; exit 4; }
  ;;
activate)   # activate <tmp> <id>: move the checked upload into place, then switch current
  TMP="$1"; ID="$2"; CUR="$(readlink current 2>/dev/null || true)"
  if [ "$CUR" = "releases/$ID" ]; then rm -rf "releases/$TMP"; echo "already live"; exit 0; fi
  rm -rf "releases/$ID" && mv "releases/$TMP" "releases/$ID" || exit 5
  if [ -n "$CUR" ]; then switch previous "$CUR" || exit 5; fi
  switch current "releases/$ID" || exit 5
  KEEP_PREV="$(readlink previous 2>/dev/null || true)"
  for d in releases/*; do   # keep the live and the previous release only
    [ "$d" = "releases/$ID" ] || [ "$d" = "$KEEP_PREV" ] || rm -rf "$d"
  done
  ;;
discard)    # discard <tmp>
  rm -rf "releases/$1"
  ;;
rollback)
  CUR="$(readlink current 2>/dev/null || true)"; PREV="$(readlink previous 2>/dev/null || true)"
  [ -n "$PREV" ] && [ -d "$PREV" ] || { echo "no previous release to roll back to" >&2; exit 6; }
  switch current "$PREV" && switch previous "$CUR" || exit 5
  echo "current=$PREV"
  ;;
status)
  echo "current=$(readlink current 2>/dev/null || echo none)"
  echo "previous=$(readlink previous 2>/dev/null || echo none)"
  echo "releases=$(ls releases 2>/dev/null | tr '\n' ' ')"
  if [ -e current ]; then "$RPY" -m runtime info current 2>&1 || true; fi
  ;;
install-runtime)  # install-runtime <extra>: a venv from the uploaded wheelhouse, offline
  [ -x "$ROOT/venv/bin/python" ] || "$PY" -m venv "$ROOT/venv" || { echo "cannot create a venv with $PY (install python3-venv)" >&2; exit 7; }
  "$ROOT/venv/bin/python" -m pip install -q --no-index --find-links "$ROOT/wheelhouse" --upgrade --force-reinstall "gru-edge[$1]" || exit 7
  ;;
*) echo "unknown device command $CMD" >&2; exit 2 ;;
esac
'''


class DeviceError(RuntimeError):
    """The device could not be reached or refused a step; the message says which."""


class Device:
    """`spec` is user@host[:port] (or a ~/.ssh/config alias), or a local path for an SD card/folder."""

    def __init__(self, spec: str, root: str | None = None, python: str | None = None):
        self.spec = spec
        self.local = spec.startswith(("/", "./", "~"))
        self.root = os.path.expanduser(spec) if self.local else (root or "gru-edge")
        # A local folder is verified with this machine's runtime; a remote device with its python3.
        self.python = python or os.environ.get("FLASH_DEVICE_PYTHON") or (sys.executable if self.local else "python3")
        self.host, self.port = spec, None
        if not self.local and spec.rsplit(":", 1)[-1].isdigit():
            self.host, port = spec.rsplit(":", 1)
            self.port = int(port)

    def _prefix(self) -> list[str]:
        if self.local:
            return []
        cmd = [os.environ.get("FLASH_SSH", "ssh"), "-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}",
               "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"]
        if os.environ.get("FLASH_SSH_CONFIG"):
            cmd += ["-F", os.environ["FLASH_SSH_CONFIG"]]
        if self.port:
            cmd += ["-p", str(self.port)]
        return cmd + [self.host]

    def _wrap(self, remote: str) -> list[str]:
        return ["sh", "-c", remote] if self.local else self._prefix() + [remote]

    def run(self, command: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """Run one DEVICE_SCRIPT command; raises DeviceError if the device cannot be reached."""
        remote = "sh -s -- " + " ".join(shlex.quote(a) for a in (self.root, command, self.python, *args))
        try:
            p = subprocess.run(self._wrap(remote), input=DEVICE_SCRIPT, capture_output=True, text=True,
                               timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"device {self.spec}: '{command}' did not finish within {timeout:.0f} s") from None
        if p.returncode == 255 and not self.local:
            why = (p.stderr.strip().splitlines() or ["ssh failed"])[-1]
            raise DeviceError(f"cannot reach device {self.spec}: {why}")
        return p

    def upload(self, local_dir: str, remote_rel: str, timeout: float = 600) -> None:
        """Copy a folder's contents to <root>/<remote_rel> as one tar stream."""
        dest = shlex.quote(f"{self.root}/{remote_rel}")
        remote = f"mkdir -p {dest} && tar -C {dest} -xf -"
        tar = subprocess.Popen(["tar", "-C", local_dir, "-cf", "-", "."], stdout=subprocess.PIPE)
        try:
            p = subprocess.run(self._wrap(remote), stdin=tar.stdout, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            tar.kill()
            raise DeviceError(f"device {self.spec}: copy to {remote_rel} timed out") from None
        finally:
            tar.stdout.close()
            tar.wait()
        if p.returncode != 0:
            why = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
            raise DeviceError(f"copy to {self.spec}:{remote_rel} failed: {why}")
