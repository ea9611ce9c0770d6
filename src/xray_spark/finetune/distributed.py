"""Barrier-mode launcher: one Spark task per training worker, each starting one TensorFlow worker process.

Why barrier mode: MultiWorkerMirroredStrategy needs every worker up at once and each one's address before
any starts (TF_CONFIG); a barrier stage schedules all tasks together (or none) and `allGather` swaps the
addresses. Why a child process per task rather than TensorFlow inside the Python worker: Spark reuses Python
workers, and TensorFlow's collective runtime can be configured once per process only, before any other
TensorFlow call — a second fine-tune (a resume) in a reused worker would fail. The child also gets the
task's cores as its thread caps. If the task dies, the child notices its parent is gone and exits.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xray_spark.features.weights import executor_weights_path

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

CHILD_MODULE = "xray_spark.finetune.trainer"


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
        proc = subprocess.Popen([sys.executable, "-m", CHILD_MODULE, str(payload_file)], env=env,
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
        addresses = [json.loads(m)["address"] for m in ctx.allGather(json.dumps({"address": me}))]
        threads = max(1, int(ctx.cpus()))
        env = {**os.environ, "TF_CONFIG": json.dumps(tf_config(addresses, rank)),
               "TF_NUM_INTRAOP_THREADS": str(threads), "TF_NUM_INTEROP_THREADS": "1"}
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
    rdd = sc.parallelize(range(workers), workers)
    out = rdd.barrier().mapPartitions(_barrier_task(payload)).collect()
    return sorted((json.loads(r) for r in out), key=lambda r: r["rank"])
