"""One writer per run directory: an advisory ``fcntl.flock`` on ``RUN_DIR/.regrow.lock``.

The lock file holds the holder's PID, host and command while it is held and is removed
on release, so a finished run directory carries no trace of it. The kernel drops a
``flock`` when its process dies (even by ``kill -9``), so a lock file left behind by a
dead writer is stale by construction: the next writer takes the lock and rewrites the
file. A second live writer is refused at once (no waiting) with the holder named.

The lock file is unlinked on release, so an acquirer re-checks after locking that the
path still names the inode it locked (else another writer may hold a newer file).
Advisory locks need a local filesystem (or NFSv4 with lock support).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Optional

LOCK_NAME = ".regrow.lock"


class RunLocked(ValueError):
    """Another live process holds the run directory."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process (no holder recorded yet)"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"PID {info.get('pid')} on host {info.get('host')} ({info.get('command', '?')}, since {since})"


class RunLock:
    """``with RunLock(run_dir, "train"):`` — exclusive, non-blocking; raises :class:`RunLocked`."""

    def __init__(self, run_dir: os.PathLike, command: str = "regrow", read_only_ok: bool = False):
        self.dir = Path(run_dir)
        # a reader (export) of a directory it cannot write: no writer can work there either
        self.read_only_ok = read_only_ok
        self.path = self.dir / LOCK_NAME
        self.command = command
        self.fd: Optional[int] = None
        self.created = False  # the lock made the directory: removed again if left empty
        self.stale: Optional[str] = None  # holder of a dead writer's lock file we took over

    def acquire(self) -> "RunLock":
        self.created = not self.dir.exists()
        while True:
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:
                if self.read_only_ok and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                    return self  # nobody can write here: read without a lock
                raise ValueError(f"cannot create the lock file {self.path} ({e.strerror}); "
                                 "the run directory must be writable") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunLocked(f"run directory {self.dir} is in use by {_holder(self.path)}; "
                                "wait for it to finish (one writer per run directory)") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder released and unlinked it meanwhile: lock the new file
        if os.fstat(fd).st_size:
            self.stale = _holder(self.path)  # left by a writer that died holding it
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                "command": self.command, "argv": sys.argv}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)  # still ours: nobody else can hold it while we do
        except FileNotFoundError:
            pass
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None
        if self.created:
            try:
                self.dir.rmdir()  # a run that failed its checks leaves no empty directory
            except OSError:
                pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
