"""The cgroup v2 side of `MemoryCgroup`, on a fake cgroupfs folder (this machine has v1): the
files it writes and reads are the kernel's (Documentation/admin-guide/cgroup-v2.rst)."""

from __future__ import annotations

import pytest

from edgecaffe.experiment import limits
from edgecaffe.experiment.limits import LimitError, MemoryCgroup


@pytest.fixture
def fake_v2(tmp_path, monkeypatch):
    root = tmp_path / "cgroup"
    parent = root / "user.slice" / "session-1.scope"
    parent.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (parent / "cgroup.subtree_control").write_text("")
    monkeypatch.setattr(limits, "CGROUP_ROOT", root)
    monkeypatch.setattr(limits, "own_cgroup", lambda controller: "user.slice/session-1.scope")
    monkeypatch.setattr(limits.os, "geteuid", lambda: 0)
    return parent


def test_v2_paths_limits_usage_and_stats(fake_v2):
    cgroup = MemoryCgroup(512 << 20, 1 << 30, name="edgecaffe-1-1")
    assert cgroup.version == 2 and cgroup.path == fake_v2 / "edgecaffe-1-1"
    cgroup.__enter__()
    try:
        # The parent hands the memory controller down before the child is made.
        assert (fake_v2 / "cgroup.subtree_control").read_text() == "+memory"
        assert (cgroup.path / "memory.max").read_text() == str(512 << 20)
        assert (cgroup.path / "memory.swap.max").read_text() == str(1 << 30)
        assert cgroup.usage_path == cgroup.path / "memory.current"
        (cgroup.path / "memory.current").write_text("12345\n")
        assert cgroup.usage_bytes() == 12345
        (cgroup.path / "memory.peak").write_text("400000000\n")
        (cgroup.path / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\n")
        stats = cgroup.stats()
        assert stats["peak_bytes"] == 400000000 and stats["oom_kills"] == 1
        assert stats["limit_hits"] == 7 and stats["cgroup_version"] == 2
        cgroup.join()
        assert (cgroup.path / "cgroup.procs").read_text().strip().isdigit()
    finally:
        for file in cgroup.path.iterdir():  # a real cgroupfs removes these with the folder
            file.unlink()
        cgroup.__exit__(None, None, None)
    assert not cgroup.path.exists()


def test_v2_controller_already_enabled_is_left_alone(fake_v2):
    (fake_v2 / "cgroup.subtree_control").write_text("cpu memory\n")
    cgroup = MemoryCgroup(64 << 20, name="edgecaffe-1-2")
    with cgroup:
        assert (fake_v2 / "cgroup.subtree_control").read_text() == "cpu memory\n"
        for file in cgroup.path.iterdir():
            file.unlink()


def test_v2_controller_that_cannot_be_enabled_is_a_clear_error(fake_v2):
    (fake_v2 / "cgroup.subtree_control").unlink()
    (fake_v2 / "cgroup.subtree_control").mkdir()  # writing it fails
    with pytest.raises(LimitError, match="cannot enable the memory controller in .*"
                       "cgroup.subtree_control"):
        MemoryCgroup(64 << 20, name="edgecaffe-1-3").__enter__()


def test_v2_cgroup_goes_where_the_no_internal_process_rule_allows(fake_v2):
    """A login shell's scope holds processes, so no child of it can have the memory
    controller: the cgroup is made in the nearest ancestor without processes (the slice),
    with the controller enabled from the root down to it, and cleanup looks there too."""
    from edgecaffe import leftovers

    (fake_v2 / "cgroup.procs").write_text("1234\n4321\n")
    root, slice_ = fake_v2.parent.parent, fake_v2.parent
    (slice_ / "cgroup.procs").write_text("")
    (slice_ / "cgroup.subtree_control").write_text("")
    (root / "cgroup.subtree_control").write_text("cpu\n")
    cgroup = MemoryCgroup(64 << 20, name="edgecaffe-1-4")
    assert cgroup.path == slice_ / "edgecaffe-1-4"
    with cgroup:
        assert (root / "cgroup.subtree_control").read_text() == "+memory"
        assert (slice_ / "cgroup.subtree_control").read_text() == "+memory"
        assert (fake_v2 / "cgroup.subtree_control").read_text() == ""  # the busy scope: untouched
        for file in cgroup.path.iterdir():
            file.unlink()
    assert leftovers.v2_parent(root, "/user.slice/session-1.scope") == slice_
    (slice_ / "cgroup.procs").write_text("99\n")  # processes everywhere: the mount's root
    assert leftovers.v2_parent(root, "user.slice/session-1.scope") == root
    assert leftovers.v2_parent(root, "") == root
