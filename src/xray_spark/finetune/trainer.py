"""The TensorFlow worker of a fine-tune: one process per barrier task (`python -m xray_spark.finetune.trainer
PAYLOAD.json`, started by distributed.py with TF_CONFIG set).

Why a custom loop and not `model.fit`: Keras 3's fit fails under MultiWorkerMirroredStrategy (its symbolic
build reduces the first data batch across workers; keras-team/keras#20585, reproduced with Keras 3.15 /
TF 2.21), while `strategy.run` steps with a Keras optimizer work and all-reduce the gradients. The loop also
lets every worker feed its own shard with exactly the same number of steps (collectives need that).

Per epoch: train `steps` batches (augmented, class-weighted, masked padding), then the exact validation loss
over the held-out fold (sums all-reduced), the loss on one fixed unaugmented training batch (the chief's, for
the "does it learn" check), a checkpoint (chief writes), early stopping on validation loss. At the end the
best weights are restored, each worker scores its share of the test fold (local, no collective), and the
chief saves the final model. The model takes `Backbone.preprocess`ed input, exactly as the featurizer feeds
the frozen backbone.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from xray_spark.features.backbones import Backbone, get_backbone
from xray_spark.features.engines import cpu_flags, has_native_bf16
from xray_spark.features.worker import configure_tf_threads
from xray_spark.finetune.augment import augment_batch
from xray_spark.finetune.checkpoints import Checkpoints, best_name
from xray_spark.finetune.config import FinetuneConfig, unfreeze_count
from xray_spark.finetune.data import batch_indices, decode_batch, read_shard
from xray_spark.logs import setup_logging

log = logging.getLogger("xray_spark.finetune")

MODEL_FILE = "model.keras"
PROGRESS_SECONDS = 60.0  # a progress line within an epoch at most this often (an epoch can take many minutes)
CHECKPOINTS = "checkpoints"


def precision_policy(setting: str, flags: frozenset[str] | set[str]) -> str:
    """Keras dtype policy: bf16 where asked, or on `auto` where the CPU computes bf16 natively (AMX /
    AVX512-BF16: elsewhere bf16 is emulated and slower than fp32); fp16 GPUs are not handled yet."""
    if setting == "bf16" or (setting == "auto" and has_native_bf16(flags)):
        return "mixed_bfloat16"
    return "float32"


def build_model(bb: Backbone, weights_path: str, n_classes: int, unfreeze: int | str) -> Any:
    """Backbone (weights file loaded) + a new softmax head; only the last `unfreeze` backbone layers train.

    The head computes in float32 whatever the policy, so the softmax and the loss stay accurate in bf16.
    """
    import keras  # lazy: loads TensorFlow, needed only in the worker process

    base = bb.build(weights=None)
    base.load_weights(weights_path)
    count = unfreeze_count(unfreeze)
    if count is not None:
        first = len(base.layers) - count
        for i, layer in enumerate(base.layers):
            layer.trainable = i >= first
    inputs = keras.Input((bb.input_size, bb.input_size, 3), name="image")
    outputs = keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name="head")(base(inputs))
    return keras.Model(inputs, outputs, name=f"{bb.name}_finetuned")


def make_optimizer(cfg: FinetuneConfig) -> Any:
    import keras  # lazy: loads TensorFlow, needed only in the worker process

    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(cfg.learning_rate, momentum=0.9)
    if cfg.optimizer == "adamw":
        return keras.optimizers.AdamW(cfg.learning_rate)
    return keras.optimizers.Adam(cfg.learning_rate)


def _exit_with_parent(parent_pid: int) -> None:
    """The Spark task that started us may be killed (a lost executor, a cancelled job): then stop too, so no
    orphan keeps the cores or a collective waiting."""
    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(3)
            time.sleep(1.0)
    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


class _Worker:
    """The state of one worker process: its shards, the model, the compiled steps."""

    def __init__(self, p: dict[str, Any]) -> None:
        import keras  # lazy: loads TensorFlow, needed only in the worker process
        import tensorflow as tf  # lazy: loads TensorFlow, needed only in the worker process

        self.p, self.tf = p, tf
        self.cfg = FinetuneConfig(**p["finetune"])
        self.rank, self.world = int(p["rank"]), int(p["world"])
        self.chief = self.rank == 0
        self.bb = get_backbone(p["backbone"])
        self.batch = int(p["per_worker_batch"])
        self.global_batch = self.batch * self.world
        self.class_weights = np.asarray(p["class_weights"], dtype=np.float32)
        self.n_train = int(p["n_train"])  # training images over all shards (the driver's count)
        self.strategy = tf.distribute.MultiWorkerMirroredStrategy()  # reads TF_CONFIG; before any other op
        self.policy = precision_policy(self.cfg.precision, cpu_flags())
        keras.mixed_precision.set_global_policy(self.policy)
        keras.utils.set_random_seed(self.cfg.seed)  # same head init everywhere (MWMS also syncs it)
        self.data = {role: read_shard(p["data_root"], role, self.rank) for role in ("train", "val", "test")}
        with self.strategy.scope():
            self.model = build_model(self.bb, p["weights_path"], len(p["labels"]), self.cfg.unfreeze)
            self.model.compile(optimizer=make_optimizer(self.cfg), loss="sparse_categorical_crossentropy")
            self.model.optimizer.build(self.model.trainable_variables)
        self.loss_fn = keras.losses.SparseCategoricalCrossentropy(reduction=None)
        self.ckpt = Checkpoints(Path(p["out_dir"]) / CHECKPOINTS, chief=self.chief)
        self._train_step = tf.function(self._train_step_fn)
        self._eval_step = tf.function(self._eval_step_fn)
        self._sync = tf.function(self._sync_fn)

    # ---------------------------------------------------------------------------------- compiled steps

    def _train_step_fn(self, x, y, w):
        def replica(x, y, w):
            with self.tf.GradientTape() as tape:
                probs = self.model(x, training=True)
                loss = self.tf.reduce_sum(self.loss_fn(y, probs) * w) / self.global_batch
            variables = self.model.trainable_variables
            self.model.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
            return loss
        return self.strategy.reduce("SUM", self.strategy.run(replica, args=(x, y, w)), axis=None)

    def _eval_step_fn(self, x, y, mask):
        def replica(x, y, mask):
            probs = self.model(x, training=False)
            correct = self.tf.cast(self.tf.argmax(probs, axis=-1, output_type=self.tf.int32) == y, "float32")
            return self.tf.stack([self.tf.reduce_sum(self.loss_fn(y, probs) * mask),
                                  self.tf.reduce_sum(correct * mask), self.tf.reduce_sum(mask)])
        return self.strategy.reduce("SUM", self.strategy.run(replica, args=(x, y, mask)), axis=None)

    def _sync_fn(self):
        """A collective no-op: no worker passes it before all reach it (e.g. the chief's checkpoint files
        exist before any worker reads them)."""
        return self.strategy.reduce("SUM", self.strategy.run(lambda: self.tf.constant(1.0)), axis=None)

    # ------------------------------------------------------------------------------------------ batches

    def _inputs(self, role: str, idx: np.ndarray, augment: bool, rng: np.random.Generator | None):
        contents, labels = self.data[role]
        if not len(labels):
            size = self.bb.input_size
            return np.zeros((len(idx), size, size, 3), np.float32), np.zeros(len(idx), np.int32)
        images = decode_batch([contents[i] for i in idx], self.bb.input_size)
        if augment and rng is not None:
            images = augment_batch(images, rng, self.cfg)
        return self.bb.preprocess(images), labels[idx]

    def train_epoch(self, epoch: int) -> tuple[float, float]:
        """Mean weighted training loss over the epoch, and images/s (all workers, decoding included; real
        images only: every training image is seen once per epoch, the padding that evens out the shards is
        not counted). The chief logs a progress line about once a minute."""
        rng = np.random.default_rng([self.cfg.seed, self.rank, epoch])
        total, t0 = 0.0, time.perf_counter()
        shown = t0
        n, steps = len(self.data["train"][1]), int(self.p["steps"])
        for step, (idx, mask) in enumerate(batch_indices(n, self.batch, rng, steps), start=1):
            x, y = self._inputs("train", idx, self.cfg.augment, rng)
            w = mask * (self.class_weights[y] if self.cfg.class_weights else 1.0)
            total += float(self._train_step(x, y, w.astype(np.float32)))
            now = time.perf_counter()
            if self.chief and now - shown >= PROGRESS_SECONDS and step < steps:
                shown = now
                log.info("epoch %d/%d: step %d/%d, loss %.4f so far, %.1f images/s", epoch + 1,
                         int(self.p["epochs"]), step, steps, total / step,
                         self.n_train * step / steps / (now - t0))
        return total / steps, self.n_train / (time.perf_counter() - t0)

    def loss_and_accuracy(self, role: str) -> tuple[float, float, int]:
        """(mean loss, accuracy, images) over a whole role, exactly (padding masked), across all workers."""
        sums = np.zeros(3)
        n = len(self.data[role][1])
        for idx, mask in batch_indices(n, self.batch, None, int(self.p[f"{role}_steps"])):
            x, y = self._inputs(role, idx, False, None)
            sums += np.asarray(self._eval_step(x, y, mask.astype(np.float32)), dtype=np.float64)
        return float(sums[0] / max(sums[2], 1)), float(sums[1] / max(sums[2], 1)), int(sums[2])

    def fixed_batch_loss(self) -> float | None:
        """Loss on this worker's first training batch, unaugmented (local: no collective)."""
        contents, labels = self.data["train"]
        if not len(labels):
            return None
        idx = np.arange(min(len(labels), self.batch))
        x, y = self._inputs("train", idx, False, None)
        return float(np.mean(self.loss_fn(y, self.model(x, training=False))))

    def confusion(self, role: str) -> list[list[int]]:
        """Confusion counts (true x predicted) of this worker's share of `role` (local: no collective)."""
        k = len(self.p["labels"])
        out = np.zeros((k, k), dtype=np.int64)
        contents, labels = self.data[role]
        for start in range(0, len(labels), self.batch):
            idx = np.arange(start, min(start + self.batch, len(labels)))
            x, y = self._inputs(role, idx, False, None)
            pred = np.argmax(np.asarray(self.model(x, training=False)), axis=-1)
            np.add.at(out, (y, pred), 1)
        return out.tolist()

    # ---------------------------------------------------------------------------------------------- run

    def run(self) -> dict[str, Any]:
        state = self.ckpt.state()
        start, history, best_val, bad, best_epoch = 0, [], float("inf"), 0, None
        if state is not None:
            self.model.load_weights(str(self.ckpt.weights_path(state["weights"])))
            start, history = int(state["epoch"]), list(state["history"])
            best_val, bad = float(state["best_val"]), int(state["bad_epochs"])
            best_epoch = state.get("best_epoch")
            if self.chief:
                log.info("resuming from the checkpoint after epoch %d (optimizer step %d)", start,
                         int(self.model.optimizer.iterations.numpy()))
        initial_fixed = self.fixed_batch_loss()
        epochs = int(self.p["epochs"])
        stopped = bad >= self.cfg.patience
        for epoch in range(start, epochs):
            if stopped:
                break
            t_epoch = time.perf_counter()
            loss, ips = self.train_epoch(epoch)
            val_loss, val_acc, _ = self.loss_and_accuracy("val")
            improved = val_loss < best_val
            best_val, bad = (val_loss, 0) if improved else (best_val, bad + 1)
            best_epoch = epoch + 1 if improved else best_epoch
            record = {"epoch": epoch + 1, "loss": loss, "val_loss": val_loss, "val_accuracy": val_acc,
                      "images_per_second": ips, "fixed_batch_loss": self.fixed_batch_loss(),
                      "optimizer_step": int(self.model.optimizer.iterations.numpy()),
                      "seconds": time.perf_counter() - t_epoch}
            history.append(record)
            self.ckpt.save(self.model, {"epoch": epoch + 1, "history": history, "best_val": best_val,
                                        "bad_epochs": bad, "best_epoch": best_epoch,
                                        "run_key": self.p["run_key"]}, best=improved)
            self._sync()  # the chief has written the checkpoint files: the others may now read them
            stopped = bad >= self.cfg.patience
            if self.chief:
                log.info("epoch %d/%d: loss %.4f, val loss %.4f, val accuracy %.3f, %.1f images/s "
                         "(%d workers)%s", epoch + 1, epochs, loss, val_loss, val_acc, ips, self.world,
                         "; early stop" if stopped else "")
        if best_epoch is not None:  # every worker knows it: the validation loss is all-reduced
            self.model.load_weights(str(self.ckpt.weights_path(best_name(best_epoch))))
        result = {"rank": self.rank, "start_epoch": start, "initial_fixed_batch_loss": initial_fixed,
                  "test_confusion": self.confusion("test"), "policy": self.policy}
        self._save_model()
        if self.chief:
            result["history"] = history
        return result

    def _save_model(self) -> None:
        """Every worker saves (it may read distributed variables); only the chief's file is kept."""
        if self.chief:
            target = Path(self.p["out_dir"]) / MODEL_FILE
            tmp = target.with_name(f".tmp-{os.getpid()}-{MODEL_FILE}")
            self.model.save(str(tmp))
            os.replace(tmp, target)
            return
        with tempfile.TemporaryDirectory(prefix="xray-ft-nonchief-") as scratch:
            self.model.save(str(Path(scratch) / MODEL_FILE))


def main(argv: list[str]) -> int:
    payload = json.loads(Path(argv[0]).read_text())
    _exit_with_parent(int(payload["parent_pid"]))
    setup_logging(logging.INFO, sys.stderr)
    configure_tf_threads(int(payload["threads"]))
    result = _Worker(payload).run()
    Path(payload["result_path"]).write_text(json.dumps(result))
    return 0



if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
