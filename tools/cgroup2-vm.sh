#!/bin/bash
# Run ONE command in a throw-away KVM guest that has cgroup v2 only, and return its exit code.
#
#   sudo tools/cgroup2-vm.sh [--cgroup PATH] [--disk SIZE] -- COMMAND [ARG...]
#
# Why: a host whose kernel binds the memory controller to cgroup v1 cannot test the v2 code of
# `edgecaffe.experiment.limits` for real. The guest boots the host's Debian kernel
# (linux-image-amd64) with `cgroup_no_v1=all systemd.unified_cgroup_hierarchy=1`, mounts the
# host's root filesystem READ-ONLY over virtio-9p with a tmpfs overlay on top (every write the
# command makes is thrown away at power-off), mounts cgroup2 on /sys/fs/cgroup, runs COMMAND as
# root in the host's current directory and powers off. The command's output goes to stdout.
#
#   --cgroup PATH     run COMMAND inside the cgroup PATH (e.g. user.slice/session-1.scope), with
#                     the memory controller enabled in its ancestors, as systemd sets up a login
#                     shell; default: the root cgroup
#   --disk SIZE       /tmp and /var/tmp on an ext4 disk of SIZE (a sparse temp file) instead of
#                     tmpfs: swap files can be made there (swapon refuses tmpfs/overlay files) and
#                     files have a page cache that can be dropped, as on a host
# Environment: CG2VM_MEM (guest RAM, 2G), CG2VM_CPUS (2), CG2VM_TIMEOUT (seconds, 1800),
# CG2VM_KERNEL (/boot/vmlinuz-*, newest), CG2VM_ACCEL (auto, kvm or tcg: see below),
# CG2VM_DEBUG=1 (show kernel messages).
# Exit code: COMMAND's; 125 when the guest did not report one (boot failure, timeout).
# Needs: root (for /dev/kvm and to read all of /), qemu-system-x86, linux-image-amd64,
# busybox-static. The initramfs (busybox + the modules below, from /lib/modules) is built in
# a temp folder at each run and deleted with it.
set -euo pipefail

cgroup="" disk_size=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --cgroup) cgroup="$2"; shift 2 ;;
        --disk) disk_size="$2"; shift 2 ;;
        --) shift; break ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) break ;;
    esac
done
[[ $# -gt 0 ]] || { echo "usage: $0 [--cgroup PATH] [--disk SIZE] -- COMMAND..." >&2; exit 2; }

kernel="${CG2VM_KERNEL:-$(ls /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n 1)}"
release="${kernel##*/vmlinuz-}"
for need in qemu-system-x86_64 busybox cpio modprobe; do
    command -v "$need" >/dev/null || { echo "cgroup2-vm: $need is not installed" >&2; exit 125; }
done
[[ -r "$kernel" && -d "/lib/modules/$release" ]] || {
    echo "cgroup2-vm: no kernel in /boot with modules (install linux-image-amd64)" >&2; exit 125; }
# KVM when it can run a stock kernel. kvm_pvm (a software hypervisor of some cloud guests, which
# provides /dev/kvm without VMX/SVM) only runs PVM-built guest kernels: a stock kernel hangs
# before its first message there, so such hosts use TCG (emulation, several times slower).
accel="${CG2VM_ACCEL:-auto}"
if [[ "$accel" == auto ]]; then
    accel=kvm; [[ -w /dev/kvm && ! -d /sys/module/kvm_pvm ]] || accel=tcg
fi
case "$accel" in
    kvm) accel_args=(-enable-kvm -cpu host,-arch-capabilities) ;;
    tcg) accel_args=(-accel tcg,thread=multi -cpu max) ;;
    *) echo "cgroup2-vm: CG2VM_ACCEL must be auto, kvm or tcg" >&2; exit 2 ;;
esac

work="$(mktemp -d /tmp/cgroup2-vm.XXXXXX)"
qemu_pid=""
cleanup() {
    [[ -n "$qemu_pid" ]] && kill "$qemu_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The initramfs: busybox, the modules (in dependency order, from modprobe) and /init.
init="$work/initramfs"
mkdir -p "$init/bin" "$init/mods" "$work/io"
cp "$(command -v busybox)" "$init/bin/busybox"
modules=(virtio_pci 9pnet_virtio 9p overlay)
[[ -n "$disk_size" ]] && modules+=(virtio_blk ext4)
for module in "${modules[@]}"; do
    modprobe -S "$release" --show-depends "$module"
done | awk '$1 == "insmod" && !seen[$2]++ {print $2}' | while read -r path; do
    name="$(basename "$path")"
    case "$name" in *.xz) xz -dc "$path" > "$init/mods/${name%.xz}"; name="${name%.xz}" ;;
                    *.zst) zstd -qdc "$path" > "$init/mods/${name%.zst}"; name="${name%.zst}" ;;
                    *) cp "$path" "$init/mods/$name" ;; esac
    echo "$name" >> "$init/mods/order"
done

cat > "$init/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin && mkdir -p /proc /sys /dev
mount -t proc proc /proc && mount -t sysfs sys /sys && mount -t devtmpfs dev /dev
for m in $(cat /mods/order); do insmod "/mods/$m" 2>/dev/null; done
arg() { sed -n "s/.*cg2vm\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
mkdir -p /lower /rw /new /io
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose,ro hostroot /lower
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 io /io
mount -t tmpfs -o mode=755 rw /rw && mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /new || {
    echo "cg2vm: overlay failed" > /dev/console; poweroff -f; }
mount -t proc proc /new/proc && mount -t sysfs sys /new/sys && mount -t devtmpfs dev /new/dev
mkdir -p /new/dev/pts /new/dev/shm
mount -t devpts devpts /new/dev/pts && mount -t tmpfs shm /new/dev/shm
mount -t tmpfs -o mode=1777 tmp /new/tmp && mount -t tmpfs run /new/run
mount -t cgroup2 cgroup2 /new/sys/fs/cgroup
if [ -e /dev/vda ]; then
    mount -t ext4 /dev/vda /new/var/tmp && mkdir -p -m 1777 /new/var/tmp/tmp
    mount --bind /new/var/tmp/tmp /new/tmp
fi
leaf="$(arg cgroup)"
if [ -n "$leaf" ]; then  # as systemd does: the controller handed down to the leaf's parent
    dir=/new/sys/fs/cgroup
    for part in $(echo "$leaf" | tr / ' '); do
        echo +memory > "$dir/cgroup.subtree_control"; dir="$dir/$part"; mkdir -p "$dir"
    done
    echo $$ > "$dir/cgroup.procs"
fi
chroot /new /bin/bash -c "$(cat /io/cmd)" < /dev/null
echo $? > /io/rc
sync; umount /io; poweroff -f
INIT
chmod +x "$init/init"
(cd "$init" && find . | cpio -o -H newc --quiet | gzip -1) > "$work/initrd.gz"

# The command, run by bash in the guest's view of the host: same folder, a clean environment.
{
    printf 'cd %q || exit 125\n' "$PWD"
    printf 'export HOME=/root LANG=C.UTF-8 TERM=dumb PATH=%q\n' "$PATH"
    env | grep -E '^(EDGECAFFE_|VIRTUAL_ENV=|PYTHON)' | while IFS='=' read -r key value; do
        printf 'export %s=%q\n' "$key" "$value"; done
    printf 'exec'; printf ' %q' "$@"; printf '\n'
} > "$work/io/cmd"

disk=()
if [[ -n "$disk_size" ]]; then
    truncate -s "$disk_size" "$work/disk.img"
    mkfs.ext4 -q -F "$work/disk.img"
    disk=(-drive "file=$work/disk.img,format=raw,if=virtio,cache=unsafe")
fi
quiet="quiet loglevel=1"; [[ "${CG2VM_DEBUG:-}" == 1 ]] && quiet=""
append="console=ttyS0 panic=-1 $quiet cgroup_no_v1=all systemd.unified_cgroup_hierarchy=1"
[[ -n "$cgroup" ]] && append="$append cg2vm.cgroup=$cgroup"

timeout "${CG2VM_TIMEOUT:-1800}" qemu-system-x86_64 "${accel_args[@]}" \
    -m "${CG2VM_MEM:-2G}" -smp "${CG2VM_CPUS:-2}" -nographic -no-reboot -nic none \
    -kernel "$kernel" -initrd "$work/initrd.gz" -append "$append" \
    -fsdev "local,id=root,path=/,security_model=none,readonly=on,multidevs=remap" \
    -device virtio-9p-pci,fsdev=root,mount_tag=hostroot \
    -fsdev "local,id=io,path=$work/io,security_model=none" \
    -device virtio-9p-pci,fsdev=io,mount_tag=io \
    "${disk[@]}" < /dev/null > >(sed -u 's/\r$//') &
qemu_pid=$!  # timeout's: it passes a TERM on to qemu
wait "$qemu_pid" || true
qemu_pid=""
if [[ ! -s "$work/io/rc" ]]; then
    echo "cgroup2-vm: the guest reported no exit code (boot failure or timeout)" >&2
    exit 125
fi
exit "$(cat "$work/io/rc")"
