"""One writer per run directory: RunLock refuses a live holder by name, recovers a dead one's."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from regrow.train.lock import LOCK_NAME, RunLock, RunLocked

HOLD = textwrap.dedent("""
    import sys, time
    from regrow.train.lock import RunLock
    lock = RunLock(sys.argv[1], "holder-test").acquire()
    print("locked", flush=True)
    time.sleep(60)
""")


def hold(run_dir):
    """A live process holding the lock of ``run_dir`` (caller kills it)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_writer_is_refused_naming_the_holder(tmp_path):
    proc = hold(tmp_path / "run")
    try:
        with pytest.raises(RunLocked, match=rf"in use by PID {proc.pid} on host {socket.gethostname()}.*holder-test"):
            RunLock(tmp_path / "run").acquire()
    finally:
        proc.kill()
        proc.wait()
    # the holder died by SIGKILL: its lock file stays, but the lock is free and taken over
    assert (tmp_path / "run" / LOCK_NAME).exists()
    lock = RunLock(tmp_path / "run", "next").acquire()
    assert lock.stale is not None and f"PID {proc.pid}" in lock.stale
    info = json.loads((tmp_path / "run" / LOCK_NAME).read_text())
    assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
    lock.release()
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_release_leaves_no_trace_and_removes_a_directory_it_made(tmp_path):
    with RunLock(tmp_path / "new"):
        assert (tmp_path / "new" / LOCK_NAME).exists()
    assert not (tmp_path / "new").exists()  # made for the lock and left empty: gone
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "keep.txt").write_text("x")
    with RunLock(tmp_path / "old") as lock:
        assert lock.stale is None
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == ["keep.txt"]


def test_a_lock_is_not_reentrant_across_instances(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunLocked, match=f"PID {os.getpid()}"):
            RunLock(tmp_path).acquire()
    with RunLock(tmp_path):  # free again after release
        pass


def test_a_read_only_directory_is_readable_without_a_lock_but_not_writable(tmp_path, monkeypatch):
    import errno

    real_open = os.open

    def read_only(path, flags, *a):
        if str(path).endswith(LOCK_NAME):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *a)

    monkeypatch.setattr(os, "open", read_only)
    with RunLock(tmp_path, "export", read_only_ok=True) as lock:
        assert lock.fd is None
    with pytest.raises(ValueError, match="cannot create the lock file .*Read-only file system.*must be writable"):
        RunLock(tmp_path, "train").acquire()
