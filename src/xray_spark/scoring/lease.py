"""One scoring run per (output folder, model) at a time, on any Hadoop filesystem: a lease with a heartbeat.

Why a lease and not a lock: object stores, DBFS/Volumes and HDFS have no `flock`, and a lock that nobody
releases (a killed driver) must end by itself. Layout:
```
OUTPUT/_leases/<model key>/000000000007.json   the current lease: the highest generation wins
OUTPUT/_leases/<model key>/.lock               local disks only: an OS flock held beside the lease
```
Acquire: read the highest generation g. If its holder is alive (not released, renewed less than `ttl` ago),
give up (LeaseHeld, exit 75: try again later). Otherwise create generation g+1 *if absent* - of two runs
that both saw g expire, one creates g+1 and the other finds it exists. Where create-if-absent is not atomic
(object stores), the winner re-reads its file after `settle` seconds and must still find its own run id.
While the run works, a heartbeat thread rewrites the file every ttl/4. Before each commit the run checks
that its generation is still the highest, still its own, and renewed within ttl/2 (`check`); a run that
stalled past its lease finds a higher generation and stops (LeaseLost) instead of committing beside the
run that took over. On release the file is deleted.

Local disks keep the OS flock as a fast path: the kernel drops it when its process dies (even kill -9),
so a run that gets the flock knows that a lease written by a flock-holding run is dead now, without waiting
out its ttl. A lease written through another scheme (e.g. `dbfs:/` while this run sees `/dbfs/`) is honoured
until it expires.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import socket
import threading
import time
from dataclasses import asdict, dataclass, replace
from typing import Protocol

from xray_spark import paths
from xray_spark.errors import TransientError
from xray_spark.spark_io import HadoopFS

log = logging.getLogger(__name__)

_GENERATION = re.compile(r"^(\d{12})\.json$")


class LeaseHeld(TransientError):
    """Another run holds the lease: nothing was done; try again later (exit 75)."""


class LeaseLost(TransientError):
    """This run's lease ended (taken over after a stall, or renewals failed): stop before committing."""


@dataclass(frozen=True)
class LeaseInfo:
    """What a lease file holds. `renewed_at` is the holder's wall clock (hosts are assumed NTP-synced to well
    within a ttl)."""

    generation: int
    run_id: str
    host: str
    pid: int
    local_lock: bool  # the holder also holds the output's OS flock (local disks)
    renewed_at: float
    ttl: float

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str | None, generation: int, modified_at: float, ttl: float) -> LeaseInfo:
        """Parse a lease file; an unreadable one (caught mid-rewrite) counts as renewed when it was
        last modified, by an unknown holder."""
        try:
            data = json.loads(text or "")
            return LeaseInfo(generation=generation, run_id=str(data["run_id"]), host=str(data["host"]),
                             pid=int(data["pid"]), local_lock=bool(data["local_lock"]),
                             renewed_at=float(data["renewed_at"]), ttl=float(data["ttl"]))
        except (ValueError, KeyError, TypeError):
            return LeaseInfo(generation, "unknown", "unknown", -1, False, modified_at, ttl)

    def describe(self, now: float) -> str:
        return (f"run {self.run_id} on {self.host} pid {self.pid}, renewed {now - self.renewed_at:.0f}s ago, "
                f"expires after {self.ttl:.0f}s without renewal")


def holder_alive(current: LeaseInfo | None, now: float, *, have_local_lock: bool) -> bool:
    """Is `current` still someone's lease? With our own flock held, a flock-holding writer is dead."""
    if current is None:
        return False
    if have_local_lock and current.local_lock:
        return False
    return now <= current.renewed_at + current.ttl


class _Files(Protocol):
    def names(self, folder: str) -> list[str]: ...
    def read(self, uri: str) -> tuple[str | None, float]: ...
    def create_new(self, uri: str, text: str) -> bool: ...
    def write(self, uri: str, text: str) -> None: ...
    def delete(self, uri: str) -> None: ...


class _LocalFiles:
    """Local disk: O_EXCL makes create-if-absent atomic; rewrites go through a rename (never half-read)."""

    def names(self, folder: str) -> list[str]:
        local = paths.local_path(folder)
        return os.listdir(local) if local.is_dir() else []

    def read(self, uri: str) -> tuple[str | None, float]:
        local = paths.local_path(uri)
        try:
            return local.read_text(encoding="utf-8"), local.stat().st_mtime
        except FileNotFoundError:
            return None, 0.0

    def create_new(self, uri: str, text: str) -> bool:
        local = paths.local_path(uri)
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        return True

    def write(self, uri: str, text: str) -> None:
        local = paths.local_path(uri)
        tmp = local.with_name(f".{local.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, local)

    def delete(self, uri: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            paths.local_path(uri).unlink()


class _HadoopFiles:
    """Any Hadoop scheme: create(overwrite=false) is atomic on HDFS; elsewhere `settle` covers the race."""

    def __init__(self, fs: HadoopFS) -> None:
        self.fs = fs

    def names(self, folder: str) -> list[str]:
        return self.fs.list_names(folder)

    def read(self, uri: str) -> tuple[str | None, float]:
        if not self.fs.exists(uri):
            return None, 0.0
        try:
            return self.fs.read_text(uri), self.fs.modified_at(uri)
        except Exception as exc:  # deleted between the two calls
            if "FileNotFoundException" in str(exc):
                return None, 0.0
            raise

    def create_new(self, uri: str, text: str) -> bool:
        return self.fs.create_new(uri, text)

    def write(self, uri: str, text: str) -> None:
        self.fs.write_text(uri, text)

    def delete(self, uri: str) -> None:
        self.fs.delete(uri)


class Lease:
    """The lease of one run on `OUTPUT/_leases/<key>/` (see the module docstring for the protocol)."""

    def __init__(self, fs: HadoopFS, output_root: str, key: str, run_id: str, *, ttl: float,
                 settle: float) -> None:
        if ttl <= 0:
            raise ValueError("lease ttl must be positive")
        self.folder = paths.join(output_root, f"_leases/{key}")
        self.run_id, self.ttl = run_id, ttl
        self.local = paths.local_or_none(self.folder)
        self.files: _Files = _LocalFiles() if self.local is not None else _HadoopFiles(fs)
        self.settle = 0.0 if self.local is not None else settle
        self.info: LeaseInfo | None = None
        self._lock_fd: int | None = None
        self._renewed = 0.0  # time.monotonic() of the last successful write
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # this run's own reads never see its heartbeat's rewrite half done (Hadoop's create(overwrite)
        # truncates first; a torn read of our own file would look like a lost lease)
        self._io = threading.Lock()

    # ---------------------------------------------------------------------------------------------- reading

    def _path(self, generation: int) -> str:
        return paths.join(self.folder, f"{generation:012d}.json")

    def _generations(self) -> list[int]:
        return sorted(int(m.group(1)) for n in self.files.names(self.folder) if (m := _GENERATION.match(n)))

    def current(self) -> LeaseInfo | None:
        """The highest generation's lease, or None when there is none."""
        gens = self._generations()
        if not gens:
            return None
        text, modified = self.files.read(self._path(gens[-1]))
        if text is None:  # released between listing and reading
            return None
        return LeaseInfo.from_json(text, gens[-1], modified, self.ttl)

    # ------------------------------------------------------------------------------------------- lifecycle

    def acquire(self) -> None:
        """Take the lease or raise LeaseHeld; start the heartbeat."""
        if self.local is not None:
            self._take_local_lock()
        try:
            current = self.current()
            now = time.time()
            if holder_alive(current, now, have_local_lock=self._lock_fd is not None):
                raise LeaseHeld(f"another scoring run holds the lease on {self.folder} "
                                f"({current.describe(now)}); try again later")
            generation = (current.generation if current else 0) + 1
            info = LeaseInfo(generation, self.run_id, socket.gethostname(), os.getpid(),
                             self._lock_fd is not None, now, self.ttl)
            if not self.files.create_new(self._path(generation), info.to_json()):
                raise LeaseHeld(f"another scoring run took the lease on {self.folder} at the same moment; "
                                "try again later")
            self.info, self._renewed = info, time.monotonic()
            if self.settle:
                time.sleep(self.settle)
                self.check()
            if current is not None:
                log.info("took over the expired lease of %s", current.describe(now))
            for old in self._generations():
                if old < generation:
                    self.files.delete(self._path(old))
        except BaseException:
            self.info = None
            self._release_local_lock()
            raise
        self._thread = threading.Thread(target=self._heartbeat, name="score-lease", daemon=True)
        self._thread.start()

    def check(self) -> None:
        """Raise LeaseLost unless this run still holds the lease with at least half its ttl to go."""
        if self.info is None:
            raise LeaseLost("this run holds no lease")
        if self._lost:
            raise LeaseLost(self._lost)
        self._check_owner()
        with self._io:
            text, _ = self.files.read(self._path(self.info.generation))
        if text is None or LeaseInfo.from_json(text, 0, 0.0, self.ttl).run_id != self.run_id:
            raise LeaseLost(f"lease file {self._path(self.info.generation)} is no longer this run's")
        if time.monotonic() - self._renewed > self.ttl / 2:
            raise LeaseLost(f"lease on {self.folder} not renewed for over {self.ttl / 2:.0f}s")

    def release(self) -> None:
        """Stop the heartbeat and delete this run's lease file (only if it is still this run's)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            if self.info is not None:  # the heartbeat has stopped: no rewrite can be under way
                text, _ = self.files.read(self._path(self.info.generation))
                if text is not None and LeaseInfo.from_json(text, 0, 0.0, self.ttl).run_id == self.run_id:
                    self.files.delete(self._path(self.info.generation))
        finally:
            self.info = None
            self._release_local_lock()

    @contextlib.contextmanager
    def held(self):
        self.acquire()
        try:
            yield self
        finally:
            self.release()

    # -------------------------------------------------------------------------------------------- internals

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                self._check_owner()
                renewed = replace(self.info, renewed_at=time.time())
                with self._io:
                    self.files.write(self._path(renewed.generation), renewed.to_json())
                self.info, self._renewed = renewed, time.monotonic()
            except LeaseLost as exc:
                self._lost = str(exc)
                log.warning("%s", exc)
                return
            except Exception as exc:  # an outage: keep trying; check() fails once ttl/2 has passed
                log.warning("could not renew the lease on %s: %s", self.folder, exc)

    def _check_owner(self) -> None:
        """LeaseLost if another run took a higher generation (renewing then would revive a dead lease)."""
        gens = self._generations()
        if self.info is None or not gens or gens[-1] != self.info.generation:
            raise LeaseLost(f"the lease on {self.folder} was taken over (generation "
                            f"{gens[-1] if gens else 'none'}): this run stalled past its lease")

    def _take_local_lock(self) -> None:
        assert self.local is not None
        self.local.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.local / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            current = self.current()
            holder = current.describe(time.time()) if current else "starting up"
            raise LeaseHeld(f"another scoring run holds the lease on {self.folder} ({holder}); "
                            "try again later") from None
        self._lock_fd = fd

    def _release_local_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None
