#!/usr/bin/env bash
# Runs the fast part of the test suite in a Debian arm64 (aarch64) root under qemu-user
# emulation, so the arm64 build of every dependency (numpy, protobuf, Pillow, PyYAML, ...) is
# exercised before a Raspberry Pi finds a problem. Slow: expect an hour or more on 2 cores,
# which is why .ci/run does not call it.
#
#   sudo tools/arm64/run-tests.sh [--clean] [pytest args...]
#
# Needs root and the Debian packages debootstrap and qemu-user-static
# (apt-get install debootstrap qemu-user-static). The root is kept in $ARM64_ROOT
# (default /var/tmp/edgecaffe-arm64) so a second run skips the bootstrap; --clean removes it
# first. The log of each run goes to $ARM64_LOG (default ./arm64-tests.log) as well as stdout.
# Default pytest selection: -m "not slow and not nsfw" (the nsfw package's weights are not
# installed in the root).
set -euo pipefail

ROOT=${ARM64_ROOT:-/var/tmp/edgecaffe-arm64}
SUITE=${ARM64_SUITE:-bookworm}
MIRROR=${ARM64_MIRROR:-http://deb.debian.org/debian}
HERE=$(cd "$(dirname "$0")/../.." && pwd)
LOG=${ARM64_LOG:-$PWD/arm64-tests.log}

if [[ ${1:-} == --clean ]]; then CLEAN=1; shift; else CLEAN=0; fi
PYTEST_ARGS=("$@")
[[ ${#PYTEST_ARGS[@]} -eq 0 ]] && PYTEST_ARGS=(-q -m "not slow and not nsfw" -p no:cacheprovider)

exec > >(tee -a "$LOG") 2>&1
say() { echo "[arm64 $(date -u +%H:%M:%S)] $*"; }

[[ $(id -u) -eq 0 ]] || { echo "run as root (debootstrap and chroot need it)" >&2; exit 2; }
for tool in debootstrap qemu-aarch64-static; do
    command -v "$tool" >/dev/null || {
        echo "missing $tool: apt-get install debootstrap qemu-user-static" >&2; exit 2; }
done

# The kernel runs aarch64 binaries through qemu only when binfmt_misc knows the format. Register
# it (with the F flag: the interpreter is opened now, so the root needs no copy) only if absent,
# and undo what this script did on exit.
BINFMT=/proc/sys/fs/binfmt_misc
MOUNTED_BINFMT=0; REGISTERED=0; MOUNTS=()
cleanup() {
    for ((i=${#MOUNTS[@]}-1; i>=0; i--)); do umount -l "${MOUNTS[i]}" 2>/dev/null || true; done
    if [[ $REGISTERED -eq 1 ]]; then echo -1 > "$BINFMT/edgecaffe-aarch64" || true; fi
    if [[ $MOUNTED_BINFMT -eq 1 ]]; then umount "$BINFMT" || true; fi
}
trap cleanup EXIT
if [[ ! -e $BINFMT/register ]]; then mount -t binfmt_misc binfmt_misc "$BINFMT"; MOUNTED_BINFMT=1; fi
if ! grep -qs aarch64 "$BINFMT"/*/interpreter 2>/dev/null && ! grep -qs enabled "$BINFMT/qemu-aarch64"; then
    magic='\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00'
    mask='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff'
    echo ":edgecaffe-aarch64:M::$magic:$mask:$(command -v qemu-aarch64-static):F" > "$BINFMT/register"
    REGISTERED=1
    say "registered qemu-aarch64-static with binfmt_misc (undone on exit)"
fi

if [[ $CLEAN -eq 1 ]]; then say "removing $ROOT"; rm -rf --one-file-system "$ROOT"; fi
if [[ ! -x $ROOT/usr/bin/python3 ]]; then
    say "debootstrap --arch=arm64 --foreign $SUITE into $ROOT"
    rm -rf --one-file-system "$ROOT"
    debootstrap --arch=arm64 --foreign --variant=minbase \
        --include=python3,python3-venv,python3-pip,ca-certificates "$SUITE" "$ROOT" "$MIRROR"
    cp "$(command -v qemu-aarch64-static)" "$ROOT/usr/bin/"
    say "second stage (runs arm64 binaries under qemu)"
    chroot "$ROOT" /debootstrap/debootstrap --second-stage
fi
say "root: $(chroot "$ROOT" uname -m) $(chroot "$ROOT" python3 --version)"

bind() { mount --bind "$1" "$ROOT$2"; MOUNTS+=("$ROOT$2"); }
mount -t proc proc "$ROOT/proc"; MOUNTS+=("$ROOT/proc")
bind /dev /dev
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
# A host whose pip trusts an extra CA (PIP_CERT, e.g. a proxy's) passes it on to the root.
# The root gets a clean environment (the host's PIP_* settings name host paths).
CLEAN_ENV=(env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
           LANG=C.UTF-8 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180)
if [[ -n ${PIP_CERT:-} && -f $PIP_CERT ]]; then
    cp "$PIP_CERT" "$ROOT/etc/host-pip-ca.crt"; CLEAN_ENV+=(PIP_CERT=/etc/host-pip-ca.crt)
fi

# The project as committed plus the working tree's changes, without the host's venv or caches.
say "copying the project from $HERE"
rm -rf "$ROOT/opt/edgecaffe" && mkdir -p "$ROOT/opt/edgecaffe"
tar -C "$HERE" --exclude=.venv --exclude=.git --exclude='__pycache__' --exclude='*.egg-info' \
    --exclude=.pytest_cache --exclude=.ruff_cache -cf - . | tar -C "$ROOT/opt/edgecaffe" -xf -

say "pip install -e .[test] (arm64 wheels from PyPI)"
"${CLEAN_ENV[@]}" chroot "$ROOT" /bin/sh -c 'set -e; cd /opt/edgecaffe
    [ -x /opt/venv/bin/python ] || python3 -m venv /opt/venv
    /opt/venv/bin/pip install -q --upgrade pip
    /opt/venv/bin/pip install -q -e ".[test]"
    /opt/venv/bin/python - <<EOF
import platform, numpy, google.protobuf, PIL, yaml
print("machine", platform.machine(), "numpy", numpy.__version__, "protobuf",
      google.protobuf.__version__, "Pillow", PIL.__version__, "PyYAML", yaml.__version__)
numpy.show_config()
EOF'

say "pytest ${PYTEST_ARGS[*]}"
set +e
# The ${ARGS[@]@Q} expansion quotes each argument for the inner shell.
"${CLEAN_ENV[@]}" chroot "$ROOT" /bin/sh -c "cd /opt/edgecaffe && /opt/venv/bin/python -m pytest ${PYTEST_ARGS[*]@Q}"
rc=$?
set -e
say "pytest exit status $rc"
exit $rc
