"""Barrier-mode launcher: one Spark task per training worker, each starting one TensorFlow worker process.

Why barrier mode: MultiWorkerMirroredStrategy needs every worker up at once and each one's address before
any starts (TF_CONFIG); a barrier stage schedules all tasks together (or none) and `allGather` swaps the
addresses. Why a child process per task rather than TensorFlow inside the Python worker: Spark reuses Python
workers, and TensorFlow's collective runtime can be configured once per process only, before any other
TensorFlow call — a second fine-tune (a resume) in a reused worker would fail. The child also gets the
task's cores as its thread caps. If the task dies, the child notices its parent is gone and exits.

On a cluster every worker reads its shard from, and the chief writes checkpoints and the model to, the
fine-tune's folder: that folder must be one every executor sees at the same path (a `/dbfs` or `/Volumes`
mount on Databricks, NFS, or the one host of a small standalone cluster). The driver leaves a token there and
each task checks it before any training starts, so a folder that is only on the driver's disk fails in
seconds with one line instead of training on missing shards.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xray_spark.features.weights import executor_weights_path

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

CHILD_MODULE = "xray_spark.finetune.trainer"  # payload['child_module'] may name another training loop
TOKEN_FILE = ".shared-token"


class NotShared(RuntimeError):
    """The fine-tune folder is not visible at the same path on every executor."""


def leave_token(folder: Path) -> str:
    """Write a fresh random token into `folder` (the driver does this before the barrier stage)."""
    folder.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    (folder / TOKEN_FILE).write_text(token)
    return token


def sees_token(folder: str, token: str) -> bool:
    """Whether this process sees the token the driver left in `folder`."""
    try:
        return (Path(folder) / TOKEN_FILE).read_text() == token
    except OSError:
        return False


def child_env(base: dict[str, str], tf_config_json: str, threads: int) -> dict[str, str]:
    """The TensorFlow child's environment: TF_CONFIG, thread caps, and this worker's import path (on a cluster
    the package may come from --py-files, which Spark puts on the Python worker's sys.path only)."""
    path = [p for p in sys.path if p]
    return {**base, "TF_CONFIG": tf_config_json, "TF_NUM_INTRAOP_THREADS": str(threads),
            "TF_NUM_INTEROP_THREADS": "1", "PYTHONPATH": os.pathsep.join(path)}


def tf_config(addresses: list[str], rank: int) -> dict[str, Any]:
    """TF_CONFIG for worker `rank` of a cluster whose workers listen at `addresses` (host:port, rank order).
    Worker 0 is the chief: it writes checkpoints and the final model."""
    return {"cluster": {"worker": list(addresses)}, "task": {"type": "worker", "index": rank}}


def free_port(host: str) -> int:
    """A port free on this host right now (the OS picks it; the worker binds it moments later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _task_host(ctx: Any) -> str:
    """This task's executor host, as the other tasks reach it (local mode: the loopback address)."""
    address = ctx.getTaskInfos()[ctx.partitionId()].address
    host = address.rsplit(":", 1)[0] if address else ""
    return host or "127.0.0.1"


def run_worker_process(payload: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """Run the TensorFlow worker with `payload` (JSON) and return its result JSON; its log lines go to this
    task's stderr. A non-zero exit is an error carrying the child's last log lines."""
    with tempfile.TemporaryDirectory(prefix="xray-ft-") as tmp:
        payload_file, result_file = Path(tmp) / "payload.json", Path(tmp) / "result.json"
        payload_file.write_text(json.dumps({**payload, "result_path": str(result_file),
                                            "parent_pid": os.getpid()}))
        child = payload.get("child_module", CHILD_MODULE)  # e.g. keras_image_file_worker.py
        proc = subprocess.Popen([sys.executable, "-m", child, str(payload_file)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        tail: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stderr.write(line)
            tail = [*tail[-19:], line.rstrip()]
        if proc.wait() != 0:
            raise RuntimeError(f"fine-tune worker {payload['rank']} exited with code {proc.returncode}: "
                               + " | ".join(tail[-5:]))
        return json.loads(result_file.read_text())


def _barrier_task(payload: dict[str, Any]):
    def run(_: Iterator[Any]) -> Iterator[str]:
        from pyspark import BarrierTaskContext  # lazy: only inside the barrier task

        ctx = BarrierTaskContext.get()
        rank = ctx.partitionId()
        host = _task_host(ctx)
        me = f"{host}:{free_port(host)}"
        shared = sees_token(payload["out_dir"], payload["shared_token"])
        gathered = [json.loads(m) for m in ctx.allGather(json.dumps({"address": me, "shared": shared}))]
        if not all(g["shared"] for g in gathered):  # every task returns (none is left in a collective)
            blind = sorted({g["address"].rsplit(":", 1)[0] for g in gathered if not g["shared"]})
            yield json.dumps({"rank": rank, "not_shared": blind})
            return
        addresses = [g["address"] for g in gathered]
        threads = max(1, int(ctx.cpus()))
        env = child_env(dict(os.environ), json.dumps(tf_config(addresses, rank)), threads)
        weights = payload["weights_path"]
        if payload.get("weights_ship_name"):
            weights = executor_weights_path(payload["weights_ship_name"])
        result = run_worker_process({**payload, "rank": rank, "world": len(addresses), "threads": threads,
                                     "weights_path": weights}, env)
        ctx.barrier()  # every worker finished (none is left waiting on a collective) before any returns
        yield json.dumps(result)
    return run


def run_barrier(spark: SparkSession, workers: int, payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Run `workers` TensorFlow workers as one barrier stage; returns each rank's small result, rank order."""
    sc = spark.sparkContext
    token = leave_token(Path(payload["out_dir"]))
    rdd = sc.parallelize(range(workers), workers)
    out = rdd.barrier().mapPartitions(_barrier_task({**payload, "shared_token": token})).collect()
    results = sorted((json.loads(r) for r in out), key=lambda r: r["rank"])
    blind = results[0].get("not_shared")
    if blind is not None:
        raise NotShared(f"{payload['out_dir']} is not visible on the executors of host(s) "
                        f"{', '.join(blind)}: fine-tuning needs an --out folder every executor sees at the "
                        "same path (a /dbfs or /Volumes path on Databricks, NFS, or a single-host cluster)")
    return results
