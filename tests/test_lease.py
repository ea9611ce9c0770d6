"""The scoring lease: one run per (output, model) on any filesystem, expiry, takeover, and no commit after a
lost lease. Local disk (O_EXCL + flock) and a Hadoop viewfs mount over /tmp (Hadoop create, no flock)."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from conftest import viewfs
from xray_spark.errors import EXIT_RETRY, TransientError, is_transient
from xray_spark.models.loading import ModelRef
from xray_spark.scoring.lease import Lease, LeaseHeld, LeaseInfo, LeaseLost, holder_alive
from xray_spark.scoring.store import LEDGER_SCHEMA, OutputStore
from xray_spark.spark_io import HadoopFS


def _lease(spark, root: str, run_id: str, ttl: float = 60.0, settle: float = 0.0) -> Lease:
    return Lease(HadoopFS(spark), root, "m-1", run_id, ttl=ttl, settle=settle)


def _plant(folder: Path, generation: int, *, local_lock: bool, age: float, ttl: float = 60.0) -> Path:
    """A lease file as another run would have left it, renewed `age` seconds ago."""
    folder.mkdir(parents=True, exist_ok=True)
    info = LeaseInfo(generation, "other-run", "elsewhere", 4242, local_lock, time.time() - age, ttl)
    path = folder / f"{generation:012d}.json"
    path.write_text(info.to_json())
    return path


def test_holder_alive_rules():
    now = 1000.0
    live = LeaseInfo(3, "r", "h", 1, False, now - 10, 60)
    assert holder_alive(live, now, have_local_lock=False)
    assert not holder_alive(LeaseInfo(3, "r", "h", 1, False, now - 61, 60), now, have_local_lock=False)
    assert not holder_alive(None, now, have_local_lock=False)
    # our flock proves a flock-holding writer dead; a writer through another scheme is honoured
    assert not holder_alive(LeaseInfo(3, "r", "h", 1, True, now - 10, 60), now, have_local_lock=True)
    assert holder_alive(live, now, have_local_lock=True)
    # a file caught mid-rewrite counts as renewed at its modification time
    torn = LeaseInfo.from_json('{"run_id": "x", "ho', 5, now - 5, 60)
    assert torn.run_id == "unknown" and holder_alive(torn, now, have_local_lock=False)


@pytest.mark.parametrize("scheme", ["local", "viewfs"])
def test_second_run_is_refused_until_the_first_releases(spark, tmp_path, scheme):
    root = str(tmp_path) if scheme == "local" else viewfs(str(tmp_path))
    a, b = _lease(spark, root, "run-a"), _lease(spark, root, "run-b")
    with a.held():
        with pytest.raises(LeaseHeld, match="run-a") as refused:
            b.acquire()
        assert is_transient(refused.value) and isinstance(refused.value, TransientError)
        a.check()  # the refused run did not disturb the holder
    assert not list((tmp_path / "_leases" / "m-1").glob("*.json"))  # released = deleted
    with b.held():
        b.check()


def test_local_takeover_of_a_dead_flock_holder_is_immediate(spark, tmp_path):
    folder = tmp_path / "_leases" / "m-1"
    _plant(folder, 7, local_lock=True, age=1)  # renewed a second ago, but nobody holds the flock: killed
    lease = _lease(spark, str(tmp_path), "run-b")
    with lease.held():
        assert lease.info is not None and lease.info.generation == 8
        assert sorted(p.name for p in folder.glob("*.json")) == ["000000000008.json"]


def test_without_flock_a_lease_is_honoured_until_it_expires(spark, tmp_path):
    folder = tmp_path / "_leases" / "m-1"
    _plant(folder, 3, local_lock=False, age=5, ttl=60)
    with pytest.raises(LeaseHeld, match="other-run"):
        _lease(spark, viewfs(str(tmp_path)), "run-b").acquire()
    # also on a local disk: a lease written through another scheme carries no flock promise
    with pytest.raises(LeaseHeld, match="other-run"):
        _lease(spark, str(tmp_path), "run-b").acquire()
    _plant(folder, 3, local_lock=False, age=61, ttl=60)  # its heartbeat stopped over a ttl ago
    lease = _lease(spark, viewfs(str(tmp_path)), "run-b", settle=0.2)
    with lease.held():
        assert lease.info is not None and lease.info.generation == 4
        assert json.loads((folder / "000000000004.json").read_text())["run_id"] == "run-b"
        assert not (folder / "000000000003.json").exists()


def test_heartbeat_renews_and_a_stalled_run_that_was_taken_over_cannot_commit(spark, tmp_path):
    ref = ModelRef(uri="/models/m", load_uri="/models/m", kind="path", name="m", version="path",
                   mlflow_format=False)
    store = OutputStore(spark, viewfs(str(tmp_path / "out")), ref)
    rows = spark.createDataFrame([("viewfs://v/x.png", "s1", "m", "path", "/models/m", 1,
                                   datetime.now(timezone.utc), "d")], LEDGER_SCHEMA).drop("score_date")
    with store.leased(ttl=4.0, settle=0.0) as lease:  # ttl well above a Spark commit on a loaded machine
        assert lease.info is not None
        first = lease.info.renewed_at
        time.sleep(1.5)  # > ttl/4: at least one heartbeat
        lease.check()
        assert lease.info.renewed_at > first  # the heartbeat (every ttl/4) rewrote the lease
        assert store.commit(rows, datetime.now(timezone.utc)) is not None  # holder commits

        # another run takes over (as after this run stalled past its ttl)
        folder = tmp_path / "out" / "_leases" / ref.file_key()
        _plant(folder, lease.info.generation + 1, local_lock=False, age=0)
        with pytest.raises(LeaseLost, match="taken over"):
            store.commit(rows, datetime.now(timezone.utc))
        assert len(list((tmp_path / "out").glob("score_date=*/*.parquet"))) == 1  # nothing published
    # release left the other run's lease alone
    assert [p.name for p in folder.glob("*.json")] == [f"{lease_gen(folder):012d}.json"]
    assert EXIT_RETRY == 75


class _TruncatingFiles:
    """Local files rewritten the way Hadoop's create(overwrite) does: empty first, the text a moment later."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def write(self, uri: str, text: str) -> None:
        path = Path(uri.removeprefix("file:"))
        path.write_text("")
        time.sleep(0.03)
        path.write_text(text)


def test_a_run_never_mistakes_its_own_heartbeat_rewrite_for_a_lost_lease(spark, tmp_path):
    lease = _lease(spark, str(tmp_path / "out"), "me", ttl=0.6)  # a heartbeat every 0.15 s
    lease.files = _TruncatingFiles(lease.files)
    with lease.held():
        deadline = time.monotonic() + 1.5
        checks = 0
        while time.monotonic() < deadline:
            lease.check()  # would raise "no longer this run's" on reading its own file half rewritten
            checks += 1
        assert lease.info is not None and checks > 50


def lease_gen(folder: Path) -> int:
    return max(int(p.stem) for p in folder.glob("*.json"))


def test_only_the_lease_holder_cleans_and_never_its_own_staging(spark, tmp_path):
    ref = ModelRef(uri="/models/m", load_uri="/models/m", kind="path", name="m", version="path",
                   mlflow_format=False)
    store = OutputStore(spark, str(tmp_path / "out"), ref)
    dead = tmp_path / "out" / "_tmp" / ref.file_key() / "20240101T000000-dead"
    dead.mkdir(parents=True)
    with pytest.raises(RuntimeError, match="needs the lease"):
        store.clean_stale()
    assert dead.exists()
    with store.leased(ttl=60, settle=0):
        (tmp_path / "out" / "_tmp" / ref.file_key() / store.run_id).mkdir(parents=True)
        assert store.clean_stale() == 1
        assert not dead.exists() and (tmp_path / "out" / "_tmp" / ref.file_key() / store.run_id).exists()
