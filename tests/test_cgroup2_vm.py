"""`--enforce-memory` under a real cgroup v2 kernel: tools/cgroup2-vm.sh boots a throw-away qemu
guest with cgroup v2 only (`cgroup_no_v1=all`), the host's root filesystem read-only, and runs
the cgroup tests and two real runs there from a login-like cgroup (`user.slice/.../session-1.scope`,
as systemd puts a shell), where the no-internal-process rule applies. Slow (minutes: TCG when
the host's /dev/kvm cannot run a stock kernel); skipped without root, /dev/kvm, qemu, a kernel
in /boot or busybox. See docs/experiments.md, "cgroup v2"."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "cgroup2-vm.sh"


def _why_not() -> str:
    if os.environ.get("EDGECAFFE_NO_VM"):  # e.g. a full run that has no 10 minutes for it
        return "EDGECAFFE_NO_VM is set"
    if os.geteuid() != 0:
        return "needs root"
    if not os.path.exists("/dev/kvm"):
        return "no /dev/kvm"
    for tool in ("qemu-system-x86_64", "busybox", "cpio", "mkfs.ext4", "modprobe"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install qemu-system-x86 busybox-static)"
    if not glob.glob("/boot/vmlinuz-*"):
        return "no kernel in /boot (apt-get install linux-image-amd64)"
    return ""


# Run in the guest by bash, in the checkout: which cgroup version, the cgroup tests, one run
# within its limit (with swap: memory.swap.max) and one over it.
GUEST = """
set -u
export EDGECAFFE_CACHE=/tmp/cache
{python} -c 'from edgecaffe.experiment.limits import MemoryCgroup as M
c = M(1 << 30); print("cgroup version", c.version, "parent", c.path.parent)'
{python} -m pytest -q -p no:cacheprovider --basetemp /tmp/pytest \
    tests/test_limits.py tests/test_cgroup_v2.py tests/test_leftovers.py
run() {{ {edgecaffe} experiment --networks TinyAlex,TinyResidual \
    --n-arrivals 2 --enforce-memory -o /tmp/out "$@"; echo "exit code $?"; }}
run --output-prefix fits --mem-limit 256M --swap 64M
run --output-prefix oom --mem-limit 24M
"""


@pytest.mark.slow
@pytest.mark.skipif(bool(_why_not()), reason=f"no cgroup v2 guest here: {_why_not()}")
def test_enforce_memory_under_real_cgroup_v2():
    command = GUEST.format(python=sys.executable,
                           edgecaffe=Path(sys.executable).parent / "edgecaffe")
    done = subprocess.run(
        [str(SCRIPT), "--disk", "2G", "--cgroup", "user.slice/user-0.slice/session-1.scope",
         "--", "bash", "-c", command],
        cwd=ROOT, capture_output=True, text=True, timeout=2400, check=False)
    out = done.stdout
    print(out)  # the guest's report: shown with -rA or -s
    assert done.returncode == 0, out[-3000:] + done.stderr[-2000:]
    # The v2 branch, in the slice (the session scope holds processes).
    assert "cgroup version 2 parent /sys/fs/cgroup/user.slice/user-0.slice\n" in out, out[-3000:]
    summary = re.search(r"^(\d+) passed.*$", out, re.MULTILINE)
    assert summary and not re.search(r"failed|error", summary.group(0)), out[-3000:]
    assert re.search(r"memory limit 256 MiB \(cgroup v2\), swap 64 MiB: peak \d+ MiB.*no OOM kill",
                     out), out[-3000:]
    fits, oom = re.findall(r"^exit code (\d+)$", out, re.MULTILINE)
    assert (fits, oom) == ("0", "1"), out[-3000:]
    assert "memory limit 24 MiB (cgroup v2)" in out and "OOM KILLED" in out, out[-3000:]
    assert "the OOM killer ended run oom" in out, out[-3000:]
