"""A device reached over OpenSSH (`user@host[:port]`, any ~/.ssh/config alias) or a local folder.

Everything on the device is done by one POSIX sh script (DEVICE_SCRIPT) passed as ssh's remote
command, with uploads as a tar stream on the same connection: the device needs sh, tar,
sha256sum and Python, nothing else (and ssh-keygen where it requires signed bundles). Layout:

    releases/<bundle-id>/   one folder per flashed bundle
    current  -> releases/<bundle-id>    the live release (symlink switched atomically)
    previous -> releases/<bundle-id>    kept for `rollback`
    shadow   -> releases/<bundle-id>    a candidate `serve` scores beside `current` (deploy --shadow)
    state/                  serve's state: shadow_score.json (what `promote` reads), promoted, serve.pid
    venv/                   the runtime, when installed by flash (FLASH_RUNTIME=1)
    allowed_signers         optional: only bundles signed by these keys are accepted
    .deploy.lock            held (flock, or an mkdir lock with the holder's pid) by every change

The script trusts nothing it is given: it checks the bundle id's form, extracts into a fresh
temporary folder, refuses anything but plain files there, checks the checksums, the signature
policy (runtime/trust.py, on the device) and the manifest's own id, refuses a bundle created
before the live one (unless allow-downgrade), runs `runtime verify`, and only then puts the
verified upload at releases/<id> (replacing whatever folder was there) and switches `current`.
Nothing is trusted later either: `status` re-checks `current` and `previous` as they are now,
and `rollback` re-checks `previous` before switching to it.
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
ROOT="$(pwd -P)"
RPY="$ROOT/venv/bin/python"; [ -x "$RPY" ] || RPY="$PY"
die() { echo "$2" >&2; exit "$1"; }
switch() {  # switch <link> <target>: atomic symlink replacement (rename over the old link)
  ln -sfn "$2" "$1.new" && mv -T "$1.new" "$1"
}
valid_id() { case "$1" in ''|*[!0-9a-f]*) return 1 ;; esac; [ ${#1} -eq 16 ]; }
lock() {    # one change at a time: flock where present, else an mkdir lock holding our pid
  if command -v flock >/dev/null 2>&1 && [ -z "${GRU_EDGE_NO_FLOCK:-}" ]; then
    exec 9>>.deploy.lock || exit 10
    flock -n 9 || die 11 "another deploy is running on this device ($ROOT/.deploy.lock is held): try again when it has finished"
    return 0
  fi
  if ! mkdir .deploy.lock.d 2>/dev/null; then
    HOLDER="$(cat .deploy.lock.d/pid 2>/dev/null || true)"
    if [ -z "$HOLDER" ] || kill -0 "$HOLDER" 2>/dev/null; then
      die 11 "another deploy is running on this device (pid ${HOLDER:-starting}; lock $ROOT/.deploy.lock.d): try again when it has finished"
    fi
    rm -rf .deploy.lock.d; mkdir .deploy.lock.d 2>/dev/null || die 11 "another deploy is running on this device"
  fi
  echo $$ > .deploy.lock.d/pid
  trap 'rm -rf "$ROOT/.deploy.lock.d"' EXIT
}
trust() {  # trust <release> [--not-older-than <live>]: runtime/trust.py's check, by its exit status; WHY = its last line
  WHY="$("$RPY" -m runtime.trust "$@" 2>&1)"; RC=$?
  WHY="$(printf '%s\n' "$WHY" | tail -n 1)"
  [ "$RC" -eq 0 ] && return 0
  WHY="${WHY#FAILED: }"
  return 1
}
signed_only() {  # signatures=required|optional: an allowed_signers there in any form (a dangling link too) requires
  if [ -e allowed_signers ] || [ -L allowed_signers ]; then echo "signatures=required"; else echo "signatures=optional"; fi
}
same_files() {  # same_files <a> <b>: the same plain files with the same bytes; DIFF names what differs
  DIFF=""           # (the report and plots a flash before 2026-12-08 sent are no difference)
  for f in $(ls -A "$1"); do [ -f "$2/$f" ] && [ ! -L "$2/$f" ] && cmp -s "$1/$f" "$2/$f" || DIFF="$DIFF $f"; done
  for f in $(ls -A "$2"); do
    case "$f" in REPORT.md|*.png) [ -f "$2/$f" ] && [ ! -L "$2/$f" ] && continue ;; esac
    [ -e "$1/$f" ] || DIFF="$DIFF +$f"
  done
  [ -z "$DIFF" ]
}
place() {  # place <tmp> <id>: the verified upload becomes releases/<id> (NOTE: what was replaced)
  NOTE=""
  if [ ! -d "releases/$2" ]; then
    mv "releases/$1" "releases/$2" || die 5 "cannot move the upload into releases/$2"
  elif same_files "releases/$1" "releases/$2"; then
    rm -rf "releases/$1"          # flashed before and unchanged since: the same bytes as the verified upload
  else                            # never switch to a folder that was not just verified: replace it
    NOTE="; releases/$2 on the device differed from the verified upload ($(echo $DIFF)) and was replaced with it"
    mv "releases/$2" "releases/$1.old" && mv "releases/$1" "releases/$2" || die 5 "cannot replace releases/$2"
    rm -rf "releases/$1.old"
  fi
}
prune() {   # keep the live, the previous and the shadow release only
  KEEP_CUR="$(readlink current 2>/dev/null || true)"; KEEP_PREV="$(readlink previous 2>/dev/null || true)"
  KEEP_SH="$(readlink shadow 2>/dev/null || true)"
  for d in releases/*; do
    [ "$d" = "$KEEP_CUR" ] || [ "$d" = "$KEEP_PREV" ] || [ "$d" = "$KEEP_SH" ] || rm -rf "$d"
  done
}
reload() {  # tell a running serve (state/serve.pid) to pick up current and shadow again
  P="$(cat state/serve.pid 2>/dev/null || true)"
  case "$P" in ''|*[!0-9]*) return 0 ;; esac
  if grep -q runtime "/proc/$P/cmdline" 2>/dev/null; then kill -HUP "$P" 2>/dev/null && echo "serve $P reloads"; fi
  return 0
}
drop_shadow() {  # the shadow link and its scores go; its release too unless live or previous
  rm -f shadow state/shadow_score.json state/shadow-scores.npz state/shadow-state.npz
}
activate() {  # activate <tmp> <id> [shadow]: the verified upload becomes releases/<id>, then current (or shadow) points at it
  CUR="$(readlink current 2>/dev/null || true)"
  place "$1" "$2"
  if [ "${3:-}" = shadow ]; then
    [ "$CUR" != "releases/$2" ] || die 15 "$2 is already live: nothing to shadow"
    [ "$(readlink shadow 2>/dev/null || true)" = "releases/$2" ] || rm -f state/shadow_score.json state/shadow-scores.npz state/shadow-state.npz
    switch shadow "releases/$2" || exit 5
    prune; echo "shadow$NOTE"; reload; return 0
  fi
  if [ "$CUR" = "releases/$2" ]; then echo "already live$NOTE"; return 0; fi
  if [ -n "$CUR" ] && [ -d "$CUR" ]; then switch previous "$CUR" || exit 5; fi
  switch current "releases/$2" || exit 5
  prune
  echo "live$NOTE"
}
case "$CMD" in
check)
  # the architecture of the device's Python (an emulated or 32-bit userland can differ from uname -m)
  echo "arch=$("$PY" -c 'import platform, struct; m = platform.machine(); print("armv7l" if m == "aarch64" and struct.calcsize("P") == 4 else m)' 2>/dev/null || uname -m)"
  echo "free_kb=$(df -Pk . | awk 'NR==2 {print $4}')"
  echo "python=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo none)"
  echo "runtime=$("$RPY" -c 'import numpy, runtime.trust; print("ok")' 2>/dev/null || echo missing)"
  echo "current=$(readlink current 2>/dev/null || true)"
  echo "previous=$(readlink previous 2>/dev/null || true)"
  signed_only
  ;;
receive)    # receive <id> <nonce> [allow-downgrade|-] [shadow] < tar: the whole deploy of one bundle, under the lock
  ID="$1"; NONCE="$2"; ALLOW="${3:-}"; MODE="${4:-}"
  valid_id "$ID" || die 2 "refusing bundle id '$ID': expected 16 lowercase hex digits"
  case "$NONCE" in ''|*[!0-9a-z]*) die 2 "bad upload name" ;; esac
  lock
  rm -rf releases/.tmp-*          # uploads cut off earlier: never live, and no deploy is running now
  TMP=".tmp-$ID-$NONCE"; T="releases/$TMP"
  mkdir "$T" || exit 10
  trap 'rm -rf "$ROOT/$T" "$ROOT/$T.old" "$ROOT/.deploy.lock.d"' EXIT
  tar -C "$T" --no-same-owner -xf - || die 9 "the upload was cut off or is not a tar stream"
  [ -z "$(find "$T" -mindepth 1 ! -type f | head -n 1)" ] || die 3 "the upload holds something other than plain files (a folder or link): refused"
  ( cd "$T" && sha256sum -c --quiet SHA256SUMS ) || die 3 "checksum mismatch on the device"
  trust "$T" || die 8 "$WHY"      # manifest, id, checksums, and the signature where allowed_signers requires it
  GOT="$("$RPY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["bundle_id"])' "$T/manifest.json" 2>/dev/null || true)"
  [ "$GOT" = "$ID" ] || die 3 "the uploaded manifest's bundle id is '$GOT', not $ID"
  if [ "$ALLOW" != allow-downgrade ] && [ -d current ]; then
    trust "$T" --not-older-than current || die 12 "$WHY"
  fi
  "$RPY" -m runtime verify "$T" || die 4 "runtime verify failed on the device"
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $ID ok" > last_verify.new && mv last_verify.new last_verify
  activate "$TMP" "$ID" "$MODE"
  trap 'rm -rf "$ROOT/.deploy.lock.d"' EXIT
  ;;
rollback)   # to previous (once verified live, so older is allowed), after checking it again as it is now
  lock
  CUR="$(readlink current 2>/dev/null || true)"; PREV="$(readlink previous 2>/dev/null || true)"
  [ -n "$PREV" ] && [ -d "$PREV" ] || die 6 "no previous release to roll back to"
  valid_id "${PREV#releases/}" && [ "$PREV" = "releases/${PREV#releases/}" ] || \
    die 14 "refusing to roll back to $PREV: outside releases/ (flash only ever links a release there)"
  trust previous || die 14 "refusing to roll back to $PREV: it does not verify: $WHY"
  switch current "$PREV" && switch previous "$CUR" || exit 5
  echo "current=$PREV"
  ;;
shadow-score)  # the shadow's id and the comparison serve keeps (state/shadow_score.json)
  echo "current=$(readlink current 2>/dev/null || echo none)"
  echo "shadow=$(readlink shadow 2>/dev/null || echo none)"
  echo "promoted=$(cat state/promoted 2>/dev/null || echo none)"
  echo "score=$(cat state/shadow_score.json 2>/dev/null || echo none)"
  ;;
promote)    # promote <id> <live-mae> <margin> [allow-downgrade|-]: the shadow <id> goes live (previous keeps the old), after checking it again
  ID="$1"; MAE="$2"; MARGIN="${3:-0.02}"; ALLOW="${4:-}"
  valid_id "$ID" || die 2 "refusing bundle id '$ID': expected 16 lowercase hex digits"
  case "$MAE$MARGIN" in *[!0-9.e+-]*) die 2 "refusing a live MAE or margin that is no number" ;; esac
  lock
  CUR="$(readlink current 2>/dev/null || true)"
  [ "$(readlink shadow 2>/dev/null || true)" = "releases/$ID" ] || die 6 "the shadow is not $ID (it changed since its score was read)"
  trust "releases/$ID" || die 14 "refusing to promote releases/$ID: it does not verify: $WHY"
  if [ "$ALLOW" != allow-downgrade ] && [ -d current ]; then
    trust "releases/$ID" --not-older-than current || die 12 "$WHY"
  fi
  if [ -n "$CUR" ] && [ -d "$CUR" ]; then switch previous "$CUR" || exit 5; fi
  switch current "releases/$ID" || exit 5
  mkdir -p state && echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) ${ID} ${CUR#releases/} ${MAE} ${MARGIN}" > state/promoted.new && mv state/promoted.new state/promoted
  drop_shadow; prune
  echo "current=releases/$ID"; reload
  ;;
discard)    # the shadow goes (its release too, unless live or previous)
  lock
  SH="$(readlink shadow 2>/dev/null || true)"
  [ -n "$SH" ] || die 6 "no shadow to discard"
  drop_shadow; prune
  echo "discarded=$SH"; reload
  ;;
status)     # checks current and previous as they are now (checksums, signature), not the last stored verify
  echo "current=$(readlink current 2>/dev/null || echo none)"
  echo "previous=$(readlink previous 2>/dev/null || echo none)"
  echo "releases=$(ls releases 2>/dev/null | tr '\n' ' ')"
  signed_only
  echo "runtime_version=$("$RPY" -c 'from importlib.metadata import version; print(version("gru-edge"))' 2>/dev/null || echo none)"
  echo "last_verify=$(cat last_verify 2>/dev/null || echo never)"
  echo "shadow=$(readlink shadow 2>/dev/null || echo none)"
  echo "promoted=$(cat state/promoted 2>/dev/null || echo none)"
  echo "rolled_back=$(cat state/rolled_back 2>/dev/null || echo none)"
  BAD=""
  for L in current previous; do
    [ -e "$L" ] || [ -L "$L" ] || continue
    if trust "$L"; then echo "check_$L=$WHY"; else echo "check_$L=FAILED: $WHY"; BAD="$BAD $L"; fi
  done
  if [ -e current ]; then "$RPY" -m runtime info current 2>&1 || true; fi
  [ -z "$BAD" ] || die 13 "not verified as it is now:$BAD (see the check_ lines); flash its signed bundle again to replace it"
  ;;
install-runtime)  # install-runtime <extra> < tar of wheels: a venv from them, offline, under the lock
  case "$1" in onnx|litert|legacy) ;; *) die 2 "unknown engine extra '$1'" ;; esac
  lock
  rm -rf wheelhouse && mkdir wheelhouse && tar -C wheelhouse --no-same-owner -xf - || die 9 "the wheel upload was cut off"
  [ -x "$ROOT/venv/bin/python" ] || "$PY" -m venv "$ROOT/venv" || die 7 "cannot create a venv with $PY (install python3-venv)"
  "$ROOT/venv/bin/python" -m pip install -q --no-index --find-links "$ROOT/wheelhouse" --upgrade --force-reinstall "gru-edge-runtime[$1]" || exit 7
  ;;
*) die 2 "unknown device command $CMD" ;;
esac
'''


class DeviceError(RuntimeError):
    """The device could not be reached or refused a step; the message says which."""


def is_local(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~"))


class Device:
    """`spec` is user@host[:port] (or a ~/.ssh/config alias), or a local path for an SD card/folder.

    `root`: the folder on the device (ssh: relative to the login's home; default gru-edge). For a
    local folder the spec is the base and a relative `root` lies inside it. `ssh_args`: ssh options
    (an Ansible inventory's connection settings, flash/fleet.yml); given, the device is always reached
    over ssh, whatever its name looks like.
    """

    def __init__(self, spec: str, root: str | None = None, python: str | None = None, ssh_args: list | None = None):
        if not spec or spec.startswith("-") or any(c.isspace() for c in spec):
            raise DeviceError(f"device {spec!r} is not user@host[:port], an ssh alias or a /path "
                              "(it must not start with '-' or contain spaces)")
        # ssh_args (the fleet's inventory connection settings) make the spec an ssh destination, never a folder
        self.spec, self.local, self.ssh_args = spec, is_local(spec) and ssh_args is None, list(ssh_args or [])
        if self.local:
            base = os.path.abspath(os.path.expanduser(spec))
            if root and os.path.isabs(root):
                raise DeviceError(f"--root {root} is absolute; for a folder device it is a folder inside {spec}")
            self.root = os.path.join(base, root) if root else base
        else:
            self.root = root or "gru-edge"
        # A local folder is verified with this machine's runtime; a remote device with its python3.
        self.python = python or os.environ.get("FLASH_DEVICE_PYTHON") or (sys.executable if self.local else "python3")
        self.host, self.port = spec, None
        if not self.local and spec.count(":") == 1 and spec.rsplit(":", 1)[-1].isdigit():   # not an IPv6 address
            self.host, port = spec.rsplit(":", 1)
            self.port = int(port)

    def _command(self, command: str, args) -> list[str]:
        words = [self.root, command, self.python, *args]
        if self.local:
            return ["sh", "-c", DEVICE_SCRIPT, "gru-edge-device", *words]
        # ssh keeps the first value of each option: the inventory's settings come before flash's defaults
        cmd = [os.environ.get("FLASH_SSH", "ssh"), "-o", "BatchMode=yes", *self.ssh_args,
               "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}", "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"]
        if os.environ.get("FLASH_SSH_CONFIG"):
            cmd += ["-F", os.environ["FLASH_SSH_CONFIG"]]
        if self.port:
            cmd += ["-p", str(self.port)]
        remote = "sh -c " + shlex.quote(DEVICE_SCRIPT) + " gru-edge-device " + " ".join(shlex.quote(w) for w in words)
        return cmd + ["--", self.host, remote]     # '--': the destination can never be read as an option

    def command(self, command: str, *args: str, upload: list | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        """Run one DEVICE_SCRIPT command, optionally with a tar stream of `upload` on its stdin.

        upload: [(folder, [names...]), ...] put into one tar stream, names relative to each folder.
        Raises DeviceError if the device cannot be reached or the command does not finish in time.
        """
        tar = None
        if upload:
            argv = ["tar", "-cf", "-"]
            for folder, names in upload:
                if any(not n or n.startswith("-") for n in names):     # never an option to tar
                    raise DeviceError(f"refusing to send {folder}: a file name starts with '-'")
                argv += ["-C", folder, *names]
            tar = subprocess.Popen(argv, stdout=subprocess.PIPE)
        try:
            p = subprocess.run(self._command(command, args), stdin=tar.stdout if tar else subprocess.DEVNULL,
                               capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"device {self.spec}: '{command}' did not finish within {timeout:.0f} s") from None
        finally:
            if tar:
                tar.stdout.close()
                tar.wait()
        if p.returncode == 255 and not self.local:
            why = (p.stderr.strip().splitlines() or ["ssh failed"])[-1]
            raise DeviceError(f"cannot reach device {self.spec}: {why}")
        return p
