"""Training data for fine-tuning: the driver writes shards, each worker reads only its own.

Why this shape: the driver must not collect images. One Spark job writes (sha256, label index, role, shard,
content) for the train folds as Parquet partitioned by role (train | val | test) and shard = a hash of the
content's sha256 modulo the number of workers; barrier task `rank` then opens `role=*/shard=rank` with
pyarrow and decodes lazily, one batch at a time, through the featurizer's own decode path
(`decode_for_model`). Grouped split: the test fold stays the test fold; the lowest-numbered other fold is
held out for validation (early stopping); the remaining folds train. The test rows are sharded the same way,
so each worker can score its part after training.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow.dataset as pads

from xray_spark import paths
from xray_spark.config import Config
from xray_spark.data.decode import decode_for_model
from xray_spark.data.images import image_contents
from xray_spark.errors import UserError
from xray_spark.tasks import Task

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

ROLES = ("train", "val", "test")


@dataclass(frozen=True)
class ShardPlan:
    """What the driver wrote: where, and per (role, shard, label) counts (small aggregates only)."""

    root: str  # local folder of the Parquet dataset
    workers: int
    val_fold: int
    counts: dict[str, list[list[int]]]  # role -> [shard][label index] -> images

    def n(self, role: str, shard: int | None = None) -> int:
        rows = self.counts[role] if shard is None else [self.counts[role][shard]]
        return int(sum(sum(r) for r in rows))

    def class_counts(self, role: str) -> list[int]:
        return [int(sum(col)) for col in zip(*self.counts[role], strict=True)]

    def largest_shard(self, role: str) -> int:
        return max(self.n(role, s) for s in range(self.workers))


def class_weights(counts: list[int]) -> list[float]:
    """Inverse-frequency weights n / (k * n_c), so each class contributes equally to the loss; a class with
    no training images gets 0 (it has nothing to weight)."""
    total, k = sum(counts), len(counts)
    return [total / (k * c) if c else 0.0 for c in counts]


def steps_for(n: int, per_worker_batch: int) -> int:
    return max(1, -(-n // per_worker_batch))


def write_shards(spark: SparkSession, images: DataFrame, summary: dict, cfg: Config, task: Task,
                 out_dir: str, workers: int) -> ShardPlan:
    """Write (or reuse) the shards under OUT/finetune-data/<key>: the key covers the split, the task and the
    number of workers, so a resumed run reads exactly the rows its checkpoint was trained on."""
    from pyspark.sql import functions as F  # lazy: pyspark only on the driver

    test_fold_rows = images.where("status = 'ok' AND split = 'test'").select("fold").distinct().collect()
    train_folds = sorted(r["fold"] for r in images.where("status = 'ok' AND split = 'train'")
                         .select("fold").distinct().collect())
    if len(train_folds) < 2 or not test_fold_rows:
        raise UserError("fine-tuning needs a test fold and at least 2 train folds (one is held out for early "
                        "stopping); add images or raise split.folds")
    val_fold = train_folds[0]
    key = hashlib.sha256(json.dumps([summary.get("split", {}).get("hash", ""), summary.get("ingest_key", ""),
                                     task.name, workers, val_fold]).encode()).hexdigest()[:16]
    root = Path(paths.local_path(out_dir)) / "finetune-data" / key
    plan_file = root / "plan.json"
    if plan_file.is_file():
        plan = ShardPlan(**json.loads(plan_file.read_text()))
        log.info("reusing fine-tune shards %s", key)
        return plan
    label_index = F.create_map(*[x for i, lab in enumerate(task.labels) for x in (F.lit(lab), F.lit(i))])
    rows = (images.where(F.col("status") == "ok").where(F.col("label").isin(list(task.labels)))
            .select("sha256", label_index[F.col("label")].alias("label"),
                    F.when(F.col("split") == "test", "test").when(F.col("fold") == val_fold, "val")
                    .otherwise("train").alias("role"))
            .dropDuplicates(["sha256"]))
    contents = image_contents(spark, summary, cfg).dropDuplicates(["sha256"])
    shard = (F.conv(F.substring("sha256", 1, 8), 16, 10).cast("long") % workers).cast("int")
    data = rows.join(contents, "sha256").withColumn("shard", shard)
    data.repartition("role", "shard").write.mode("overwrite").partitionBy("role", "shard").parquet(
        str((root / "parquet").resolve().as_uri()))
    counts = {role: [[0] * task.n_classes for _ in range(workers)] for role in ROLES}
    for r in (spark.read.parquet(str((root / "parquet").resolve().as_uri()))
              .groupBy("role", "shard", "label").count().collect()):
        counts[r["role"]][r["shard"]][r["label"]] = int(r["count"])
    plan = ShardPlan(root=str(root), workers=workers, val_fold=int(val_fold), counts=counts)
    if plan.n("train") == 0 or plan.n("val") == 0:
        raise UserError(f"no {task.name} images in the train or validation folds of this split")
    plan_file.write_text(json.dumps(plan.__dict__))
    return plan


def read_shard(root: str, role: str, rank: int) -> tuple[list[bytes], np.ndarray]:
    """Worker side: the (content, label) rows of one role and shard, in sha256 order (deterministic)."""
    folder = Path(root) / "parquet" / f"role={role}" / f"shard={rank}"
    if not folder.is_dir():
        return [], np.zeros(0, dtype=np.int32)
    table = pads.dataset(str(folder), format="parquet").to_table(columns=["sha256", "label", "content"])
    table = table.sort_by("sha256")
    return table.column("content").to_pylist(), np.asarray(table.column("label").to_numpy(), dtype=np.int32)


def decode_batch(contents: list[bytes], size: int) -> np.ndarray:
    """(N, size, size, 3) uint8 through the featurizer's decode path (ingest already kept only decodable
    images, so an error here is a real failure, not a row to skip)."""
    out = np.empty((len(contents), size, size, 3), dtype=np.uint8)
    for i, data in enumerate(contents):
        out[i] = decode_for_model(bytes(data), size)
    return out


def batch_indices(n: int, batch: int, rng: np.random.Generator | None,
                  steps: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """`steps` batches of `batch` row indices over n rows, with a 0/1 mask per position.

    Every worker runs the same number of steps (collective ops would otherwise wait forever): a shorter
    shard cycles (reshuffled each pass when `rng` is given); with rng None (validation, test) one pass is
    made and the tail is padded with masked rows.
    """
    if rng is None:
        for s in range(steps):
            idx = np.arange(s * batch, (s + 1) * batch)
            mask = (idx < n).astype(np.float32)
            yield np.minimum(idx, max(n - 1, 0)), mask  # callers skip decoding when n == 0
        return
    if n == 0:  # an empty shard still takes part in every step, with nothing but masked rows
        for _ in range(steps):
            yield np.zeros(batch, dtype=np.int64), np.zeros(batch, dtype=np.float32)
        return
    order = rng.permutation(n)
    pos = 0
    for _ in range(steps):
        take = []
        while len(take) < batch:
            if pos == n:
                order, pos = rng.permutation(n), 0
            k = min(batch - len(take), n - pos)
            take.extend(order[pos:pos + k])
            pos += k
        yield np.asarray(take), np.ones(batch, dtype=np.float32)
