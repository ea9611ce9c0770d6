"""The TensorFlow worker of `KerasImageFileEstimator.fit`: one process per barrier task (`python -m
xray_spark.finetune.keras_image_file_worker PAYLOAD.json`, started by distributed.py with TF_CONFIG set).

What differs from trainer.py's loop: the model is the user's saved Keras model as it is (no backbone, no new
head), compiled with the user's `kerasOptimizer` and `kerasLoss`, and its input is what the user's image
loader returns for each file of this worker's shard (keras_image_file.py wrote the shards). What is the same:
the MultiWorkerMirroredStrategy steps with all-reduced gradients (Keras 3's `fit` fails under it, see
trainer.py), the same number of steps on every worker (`batch_indices`), per-epoch checkpoints written by the
chief (`Checkpoints`, resumed when the run key matches), the chief saving the final model atomically, and the
watch on the parent task.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as pads

from xray_spark.features.image_loaders import call_loader, import_loader
from xray_spark.features.worker import configure_tf_threads
from xray_spark.finetune.checkpoints import Checkpoints
from xray_spark.finetune.data import batch_indices
from xray_spark.finetune.trainer import CHECKPOINTS, MODEL_FILE, _exit_with_parent
from xray_spark.logs import setup_logging

log = logging.getLogger("xray_spark.finetune")


def read_file_shard(root: str, rank: int) -> tuple[list[str], list[bytes], np.ndarray]:
    """(uris, contents, labels float32) of shard `rank`, in URI order (deterministic)."""
    folder = Path(root) / f"shard={rank}"
    table = pads.dataset(str(folder), format="parquet").to_table(columns=["uri", "label", "content"])
    table = table.sort_by("uri")
    labels = np.asarray(table.column("label").to_pylist(), dtype=np.float32)
    return table.column("uri").to_pylist(), table.column("content").to_pylist(), labels


def payload_loader(p: dict[str, Any]) -> Any:
    """The user's loader: imported by name, or unpickled (the driver pickled a callable with cloudpickle)."""
    if p.get("loader_name"):
        return import_loader(p["loader_name"])
    return pickle.loads(base64.b64decode(p["loader_pickle"]))  # noqa: S301 - our own driver wrote it


def loss_per_sample(name: str) -> Any:
    """`kerasLoss` as a function returning one loss per sample (a Loss object's unreduced `call`)."""
    import keras  # lazy: loads TensorFlow, needed only in the worker process

    loss = keras.losses.get(name)
    return loss.call if isinstance(loss, keras.losses.Loss) else loss


class _FileWorker:
    """One worker: its shard, the user's model and optimizer, the compiled step."""

    def __init__(self, p: dict[str, Any]) -> None:
        import keras  # lazy: loads TensorFlow, needed only in the worker process
        import tensorflow as tf  # lazy: loads TensorFlow, needed only in the worker process

        self.p, self.tf = p, tf
        self.rank, self.world = int(p["rank"]), int(p["world"])
        self.chief = self.rank == 0
        self.batch = int(p["per_worker_batch"])
        self.strategy = tf.distribute.MultiWorkerMirroredStrategy()  # reads TF_CONFIG; before any other op
        keras.utils.set_random_seed(int(p["seed"]))
        self.uris, self.contents, self.labels = read_file_shard(p["data_root"], self.rank)
        self.loader = payload_loader(p)
        with self.strategy.scope():
            self.model = keras.saving.load_model(p["weights_path"], compile=False)
            self.model.compile(optimizer=keras.optimizers.get(p["optimizer"]), loss=p["loss"])
            self.model.optimizer.build(self.model.trainable_variables)
        self.loss_fn = loss_per_sample(p["loss"])
        self.ckpt = Checkpoints(Path(p["out_dir"]) / CHECKPOINTS, chief=self.chief)
        self._train_step = tf.function(self._train_step_fn)
        self._sync = tf.function(self._sync_fn)

    def _train_step_fn(self, x, y):
        def replica(x, y):
            with self.tf.GradientTape() as tape:
                out = self.model(x, training=True)
                loss = self.tf.reduce_sum(self.loss_fn(y, out)) / (self.batch * self.world)
            variables = self.model.trainable_variables
            self.model.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
            return loss
        return self.strategy.reduce("SUM", self.strategy.run(replica, args=(x, y)), axis=None)

    def _sync_fn(self):
        """A collective no-op: no worker passes it before all reach it (as trainer.py's)."""
        return self.strategy.reduce("SUM", self.strategy.run(lambda: self.tf.constant(1.0)), axis=None)

    def inputs(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = np.stack([call_loader(self.loader, self.uris[i], bytes(self.contents[i])) for i in idx])
        return images, self.labels[idx]

    def run(self) -> dict[str, Any]:
        state = self.ckpt.state()
        start, history = 0, []
        if state is not None and state.get("run_key") == self.p["run_key"]:
            self.model.load_weights(str(self.ckpt.weights_path(state["weights"])))
            start, history = int(state["epoch"]), list(state["history"])
        steps, epochs = int(self.p["steps"]), int(self.p["epochs"])
        for epoch in range(start, epochs):
            t0, total = time.perf_counter(), 0.0
            rng = np.random.default_rng([int(self.p["seed"]), self.rank, epoch])
            for idx, _ in batch_indices(len(self.labels), self.batch, rng, steps):  # shuffled, cycling
                x, y = self.inputs(idx)
                total += float(self._train_step(x, y))
            history.append({"epoch": epoch + 1, "loss": total / steps, "seconds": time.perf_counter() - t0})
            self.ckpt.save(self.model, {"epoch": epoch + 1, "history": history, "run_key": self.p["run_key"]},
                           best=False)
            self._sync()  # the chief's checkpoint is complete before any worker goes on
            if self.chief:
                log.info("epoch %d/%d: loss %.4f (%d workers)", epoch + 1, epochs, total / steps, self.world)
        self._save_model()
        return {"rank": self.rank, "start_epoch": start, "history": history if self.chief else None}


    def _save_model(self) -> None:
        """Every worker saves (it may read distributed variables); only the chief's file is kept."""
        target = Path(self.p["out_dir"]) / MODEL_FILE
        if not self.chief:
            with tempfile.TemporaryDirectory(prefix="xray-kif-nonchief-") as scratch:
                self.model.save(str(Path(scratch) / MODEL_FILE))
            return
        tmp = target.with_name(f".tmp-{os.getpid()}-{MODEL_FILE}")
        self.model.save(str(tmp))
        os.replace(tmp, target)


def main(argv: list[str]) -> int:
    payload = json.loads(Path(argv[0]).read_text())
    _exit_with_parent(int(payload["parent_pid"]))
    setup_logging(logging.INFO, sys.stderr)
    configure_tf_threads(int(payload["threads"]))
    result = _FileWorker(payload).run()
    Path(payload["result_path"]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
