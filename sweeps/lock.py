"""One driver per study: a lock in the study folder that holds on the file systems clusters share.

Two drivers on one study train the same configuration twice, tell Optuna contradictory things
and double the rows of ``results.parquet``. So a driver holds the study before it writes
anything to it and until it has exited, and a second one is refused naming the first.

Two mechanisms, because neither holds everywhere:

- an ``fcntl`` record lock on ``STUDY/driver.lock``: local file systems, NFS (v3 with lockd,
  v4), EFS and Lustre mounted with ``flock`` enforce it across hosts, and the kernel (or the
  NFS server's lease) releases it when its holder dies, however it dies;
- a lease, ``STUDY/driver.json``: host, pid, the pid's start time, since when, and a heartbeat
  its holder renews every ``HEARTBEAT_S``. It names the holder in a refusal, and where record
  locks are not supported (``ENOLCK``: NFS without lockd, Lustre without ``flock``) it alone
  decides: it is created with ``link(2)``, atomic on NFS, and taken over only from a holder
  that is provably dead: its pid is gone from this host, or, from another host, its heartbeat
  is older than ``STALE_AFTER_S``.

A lease that still looks alive is respected even when the record lock was free (a holder on a
host that does not enforce record locks), so a lease is never stolen on a guess.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from modaltune.atomic import write_json_atomic
from modaltune.errors import InputError
from modaltune.sweeps.layout import StudyLayout
from modaltune.units import duration_text

logger = logging.getLogger(__name__)

HEARTBEAT_S = 10.0
STALE_AFTER_S = 150.0  # as a progress record's writer (sweeps/progress.py)
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
_HELD = {errno.EAGAIN, errno.EACCES}


class StudyLockedError(InputError):
    """Another live driver holds the study; the message names it."""


def process_started(pid: int) -> float | None:
    """When ``pid`` started, in clock ticks since boot (Linux ``/proc``); None where unknown.
    With the pid, it tells a live holder from a later process that got its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return float(stat.rsplit(")", 1)[1].split()[19])


def process_alive(pid: int, started: float | None) -> bool:
    """Whether ``pid`` on this host is still the process that started at ``started``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process of that pid
        pass
    now_started = process_started(pid)
    return started is None or now_started is None or now_started == started


@dataclass(frozen=True)
class Lease:
    """Who drives the study (``STUDY/driver.json``)."""

    host: str
    pid: int
    pid_started: float | None
    since: float
    heartbeat: float
    token: str

    def alive(self, now: float | None = None) -> bool:
        """Provably dead only when its pid is gone from this host, or its heartbeat went stale."""
        if self.host == socket.gethostname():
            return process_alive(self.pid, self.pid_started)
        return (time.time() if now is None else now) - self.heartbeat <= STALE_AFTER_S

    def describe(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"pid {self.pid} on {self.host}, driving it since {since} (heartbeat {duration_text(now - self.heartbeat)} ago)"


def read_lease(path: Path) -> Lease | None:
    """The lease at ``path``, or None when there is none (or it is unreadable: written
    atomically, it is torn only by a damaged disk, and then it proves nothing)."""
    try:
        return Lease(**json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        logger.warning("ignoring the unreadable lease %s: %s", path, exc)
        return None


def live_driver(layout: StudyLayout) -> Lease | None:
    """The lease of the driver holding the study, if it is alive."""
    lease = read_lease(layout.driver_lease)
    return lease if lease is not None and lease.alive() else None


def refuse_if_driven(layout: StudyLayout) -> None:
    """Refuse early, before any expensive check, when a live driver holds the study."""
    lease = live_driver(layout)
    if lease is not None:
        raise _locked(layout, lease)


def _locked(layout: StudyLayout, lease: Lease | None) -> StudyLockedError:
    holder = lease.describe() if lease is not None else f"another process holds {layout.driver_lock} (it wrote no lease)"
    return StudyLockedError(
        f"{layout.root} is being run by another driver: {holder}; a study takes one driver at a time: "
        "wait for it to end (`modaltune status` shows how far it is) or stop it, then run again"
    )


class StudyLock:
    """Held from ``acquire()`` to ``release()``; renews its lease in a daemon thread meanwhile.

    ``on_lost`` is called (from that thread) if the lease on disk stops naming this driver,
    which happens only when another driver judged it dead (a heartbeat stuck for longer than
    ``STALE_AFTER_S``): the study must then stop here."""

    def __init__(self, layout: StudyLayout, on_lost: Callable[[str], None] | None = None) -> None:
        self.layout = layout
        self.on_lost = on_lost
        self._fd: int | None = None
        self._lease: Lease | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def lease_path(self) -> Path:
        return self.layout.driver_lease

    def acquire(self) -> None:
        """Take the study or raise ``StudyLockedError`` naming its live driver."""
        self.layout.root.mkdir(parents=True, exist_ok=True)
        record_locked = self._lock_record()
        now = time.time()
        self._lease = Lease(socket.gethostname(), os.getpid(), process_started(os.getpid()), now, now, uuid.uuid4().hex)
        try:
            self._take_lease(record_locked)
        except BaseException:
            self._unlock_record()
            raise
        self._thread = threading.Thread(target=self._renew, name="study-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop renewing, remove the lease if it is still ours, release the record lock."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        current = read_lease(self.lease_path)
        if self._lease is not None and current is not None and current.token == self._lease.token:
            self.lease_path.unlink(missing_ok=True)
        self._unlock_record()

    def _lock_record(self) -> bool:
        """The fcntl lock; False where the file system does not support record locks."""
        self._fd = os.open(self.layout.driver_lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in _HELD:
                self._unlock_record()
                raise _locked(self.layout, self._holder()) from exc
            if exc.errno not in _UNSUPPORTED:
                self._unlock_record()
                raise
            logger.info(
                "%s: record locks are not supported here (%s); the lease alone keeps a second driver out", self.layout.root, exc.strerror
            )
            return False
        return True

    def _holder(self, wait_s: float = 5.0) -> Lease | None:
        """The live lease of whoever holds the record lock: it writes it just after taking the lock."""
        deadline = time.monotonic() + wait_s
        while (lease := read_lease(self.lease_path)) is None or not lease.alive():
            if time.monotonic() > deadline:
                return None
            time.sleep(0.1)
        return lease

    def _unlock_record(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the record lock
            self._fd = None

    def _take_lease(self, record_locked: bool) -> None:
        assert self._lease is not None
        for _ in range(3):
            previous = read_lease(self.lease_path)
            if previous is not None and previous.alive():
                raise _locked(self.layout, previous)
            if record_locked:  # no other driver can be taking it now
                write_json_atomic(self.lease_path, asdict(self._lease))
                return
            if self._link_lease(previous):
                return
        raise _locked(self.layout, read_lease(self.lease_path))

    def _link_lease(self, dead: Lease | None) -> bool:
        """Without record locks: create the lease with link(2), which fails if it exists, after
        moving a dead holder's lease aside (only one driver's rename of it succeeds)."""
        assert self._lease is not None
        if dead is not None or self.lease_path.exists():
            aside = self.lease_path.with_name(f".{self.lease_path.name}.dead-{self._lease.token}")
            try:
                os.rename(self.lease_path, aside)
            except FileNotFoundError:
                return False  # another driver moved it first: look again
            moved = read_lease(aside)
            if dead is not None and (moved is None or moved.token != dead.token):  # a live lease written meanwhile
                try:
                    os.link(aside, self.lease_path)
                except FileExistsError:
                    pass
                aside.unlink(missing_ok=True)
                return False
            aside.unlink(missing_ok=True)
        staged = self.lease_path.with_name(f".{self.lease_path.name}.{self._lease.token}")
        write_json_atomic(staged, asdict(self._lease))
        try:
            os.link(staged, self.lease_path)
        except FileExistsError:
            return False
        finally:
            staged.unlink(missing_ok=True)
        return True

    def _renew(self) -> None:
        assert self._lease is not None
        while not self._stop.wait(HEARTBEAT_S):
            current = read_lease(self.lease_path)
            if current is not None and current.token != self._lease.token:
                message = f"another driver took this study over ({current.describe()}); this one stops"
                logger.error("%s", message)
                if self.on_lost is not None:
                    self.on_lost(message)
                return
            self._lease = Lease(**(asdict(self._lease) | {"heartbeat": time.time()}))
            try:
                write_json_atomic(self.lease_path, asdict(self._lease))
            except OSError as exc:  # a full disk: the record lock still holds; retried next beat
                logger.warning("could not renew the lease %s: %s", self.lease_path, exc)

