#!/usr/bin/env bash
# Build the emulated aarch64 device environment into $1 (default build/aarch64), once:
#   qemu/usr/bin/qemu-aarch64          Debian trixie's qemu-user (QEMU 10, static): bookworm's 7.2
#                                      shows the guest the host's /proc/cpuinfo (onnxruntime
#                                      segfaults) and miscomputes int8 with its default SVE CPU
#   sysroot-<ver>/                     python<ver>-minimal + libpython<ver>-stdlib + their library
#                                      closure for arm64, unpacked with dpkg -x (no chroot)
#   sysroot-<ver>/usr/local/lib/python<ver>/dist-packages
#                                      the real aarch64 wheels from PyPI (numpy, onnxruntime,
#                                      ai-edge-litert, paho-mqtt, pyserial, pytest), pip --platform;
#                                      system-wide, as `pip install` on a Pi puts them, so a venv
#                                      made on the emulated device (flash) does not see them
#   python<ver>                        a host-side launcher: qemu with QEMU_LD_PREFIX; the guest
#                                      sees it as sys.executable, so subprocesses (and a venv's
#                                      python, a copy of it) run emulated too, without binfmt_misc
# <ver> is 3.11 (Raspberry Pi OS bookworm) and 3.13 (trixie). Only Debian's archive and PyPI are
# reached; apt runs with a private state folder, so the host's apt configuration is untouched.
set -euo pipefail
OUT=$(realpath -m "${1:-build/aarch64}")
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
mkdir -p "$OUT"

apt_for() {   # apt_for SUITE ARCH apt-get-args...: apt with a private state under $OUT/apt/SUITE-ARCH
  local suite=$1 arch=$2; shift 2
  local d="$OUT/apt/$suite-$arch"
  mkdir -p "$d/lists/partial" "$d/cache/archives/partial" "$d/etc/preferences.d" "$d/etc/apt.conf.d"
  echo "deb [arch=$arch signed-by=$KEYRING] $MIRROR $suite main" > "$d/etc/sources.list"
  touch "$d/status"
  "$@" -q -o Dir::State="$d" -o Dir::State::Lists="$d/lists" -o Dir::State::status="$d/status" \
    -o Dir::Cache="$d/cache" -o Dir::Etc::SourceList="$d/etc/sources.list" -o Dir::Etc::SourceParts=/dev/null \
    -o Dir::Etc::Preferences="$d/etc/preferences" -o Dir::Etc::PreferencesParts="$d/etc/preferences.d" \
    -o APT::Architecture="$arch" -o APT::Architectures="$arch" -o Debug::NoLocking=1
}

fetch_unpack() {   # fetch_unpack SUITE ARCH DEST PKG...: the packages and their Depends closure, dpkg -x'd
  local suite=$1 arch=$2 dest=$3; shift 3
  apt_for "$suite" "$arch" apt-get update >/dev/null
  local pkgs
  pkgs=$(apt_for "$suite" "$arch" apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
           --no-breaks --no-replaces --no-enhances --no-pre-depends "$@" | grep -v '^ ' | grep -v '^<' | sort -u)
  local dl="$OUT/apt/$suite-$arch/debs"
  mkdir -p "$dl" "$dest"
  (cd "$dl" && apt_for "$suite" "$arch" apt-get download $pkgs >/dev/null 2>"$dl.err") \
    || { grep -v unsandboxed "$dl.err" >&2; exit 1; }
  for deb in "$dl"/*.deb; do dpkg -x "$deb" "$dest"; done
  for d in bin sbin lib; do      # trixie's packages are merged-/usr: base-files would make these links
    [ -e "$dest/$d" ] || ln -s "usr/$d" "$dest/$d"
  done
}

if [ ! -x "$OUT/qemu/usr/bin/qemu-aarch64" ]; then
  apt_for trixie amd64 apt-get update >/dev/null
  mkdir -p "$OUT/qemu-deb" && (cd "$OUT/qemu-deb" && apt_for trixie amd64 apt-get download qemu-user >/dev/null)
  dpkg -x "$OUT"/qemu-deb/qemu-user_*.deb "$OUT/qemu"
  find "$OUT/qemu" ! -type d ! -name qemu-aarch64 -delete      # 450 MB of other targets
  rm -rf "$OUT/qemu-deb"
fi
"$OUT/qemu/usr/bin/qemu-aarch64" --version | head -1

WHEELS="numpy==2.4.6 onnxruntime==1.32.0 ai-edge-litert==2.3.0 paho-mqtt==2.2.0 pyserial==3.5 pytest==9.2.0"   # as measured
TAGS="--platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 --platform manylinux_2_27_aarch64 --platform manylinux_2_28_aarch64"
for spec in bookworm:3.11 trixie:3.13; do
  suite=${spec%%:*} ver=${spec##*:}
  root="$OUT/sysroot-$ver"
  if [ ! -f "$root/usr/lib/python$ver/ensurepip/__init__.py" ]; then
    rm -rf "$root" "$OUT/apt/$suite-arm64/debs"
    fetch_unpack "$suite" arm64 "$root" "python$ver-minimal" "libpython$ver-stdlib" "python$ver-venv" libstdc++6
  fi
  site="$root/usr/local/lib/python$ver/dist-packages"
  if [ ! -f "$site/.installed" ]; then
    rm -rf "$site"
    python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore --target "$site" $TAGS \
      --python-version "$ver" --implementation cp --abi "cp${ver/./}" --only-binary=:all: $WHEELS
    touch "$site/.installed"
  fi
  cat > "$OUT/python$ver" <<EOF
#!/bin/sh
# python$ver for aarch64 under user-mode QEMU (CPU model from QEMU_CPU, default cortex-a72 = Pi 4)
export QEMU_LD_PREFIX="$root" QEMU_CPU="\${QEMU_CPU:-cortex-a72}"
exec "$OUT/qemu/usr/bin/qemu-aarch64" -0 "\$0" "$root/usr/bin/python$ver" "\$@"
EOF
  chmod +x "$OUT/python$ver"
  "$OUT/python$ver" -c "import platform, numpy; print('python', platform.python_version(), platform.machine(), 'numpy', numpy.__version__)"
done
