"""Fine-tuning throughput: 2 Spark barrier workers vs one plain Keras `fit` process, and bf16 vs fp32.

Why: the fine-tune issue's "must show": the training images/s of the distributed fine-tune (Spark barrier
tasks, one TensorFlow worker each, MultiWorkerMirroredStrategy) over one plain Keras `fit` process on the
same images and the same cores (goal >= 0.8), and what the bf16 policy does to training speed here.

One run, the arms one after the other on the same training rows, model, weights file, global batch and
optimizer (ResNet50 from seeded random weights: the same compute as ImageNet weights):
  barrier  the training part of `xray-spark finetune` (run.fit_finetune: shards, barrier stage, the
           workers' custom MultiWorkerMirroredStrategy loop) in Spark local[2] with 2 workers, after the
           package's ingest; its export and MLflow run are left out (untimed work either way). Each worker:
           1 TensorFlow thread. Images/s: what the chief reports per epoch (history `images_per_second`:
           the training loop only, per-batch decode included, validation not).
  fit      this file with `--fit-child`: one process, TensorFlow intra-op threads = the cores the workers
           use (2), the training rows read from the shards the barrier arm wrote, decoded once before `fit`
           (as a user would) through the same path (finetune.data.decode_batch + Backbone.preprocess),
           trainer.build_model / make_optimizer, `model.fit`, epochs timed by a callback.
  bf16     the same fit process under the mixed_bfloat16 policy (trainer.precision_policy('bf16')), on the
           first --bf16-images training rows (default: one global batch) for --bf16-epochs (default 2:
           warm-up + one measured): where bf16 is emulated (no AMX/AVX512-BF16) it trains an order of
           magnitude slower than fp32, and the whole fit would take longer than everything else together.
           Its fp32 side is the fit arm above (rows/s; there the last batch of an epoch may be partial).
           Both fit processes also report their CPU seconds per image (all threads, a steady epoch) and
           `ratio_bf16_vs_fp32_cpu`: on a shared machine these move much less with other people's load
           than wall time (the arms run one after the other, so a load change between them moves the
           wall-time ratio).
Same work in every arm: augmentation and class weights are off (plain `fit` has neither; in the barrier
arm they cost milliseconds per image), precision is fixed to fp32 outside the bf16 arm (`auto` would pick
bf16 on a CPU with native bf16, and the arms would differ), and early stopping cannot cut the epochs.

Steady epochs: every arm's first epoch traces and optimises the training graph (tens of seconds for
ResNet50), so images/s is taken from epochs 2..E only (--epochs >= 2; the default 3 gives two), and of those
the fastest: the arms run one after the other, each for minutes, so they cannot be interleaved as in
featurize.py; other people's load only ever slows an epoch down, and the fastest epoch is the best estimate
of what an arm does on its own (every epoch is printed too).

Counting: the barrier workers all run the largest shard's number of steps (collectives need the same
count), so the smaller shard cycles through some of its rows again within an epoch: each epoch computes
steps x global batch rows, more than there are training images. The trainer's `images_per_second` counts
the training images (each once per epoch) over the training-loop seconds, not those extra rows, and the
fit arm counts the same way, so `ratio_barrier_vs_fit` (the goal) compares like with like and charges the
barrier arm for its extra rows. `barrier_rows_per_s` / `ratio_barrier_vs_fit_rows`: every row computed,
i.e. the compute rate without that waste; on a few dozen images it weighs a lot, at scale it is about the
shards' size difference plus a partial batch per epoch.

    python benchmarks/finetune.py                         # 64 Ozturk images, 3 epochs, unfreeze all
    python benchmarks/finetune.py --images 128 --epochs 4 --unfreeze 0 --skip-bf16

`--unfreeze all` (the default, as in the config) measures what fine-tuning really costs: every backbone
layer trains. `--unfreeze 0` (head only: roughly inference cost) is for a quick look.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import cpu_line, setup_logging  # benchmarks/ is on sys.path when run as a script

log = logging.getLogger("benchmarks.finetune")
REPO = Path(__file__).resolve().parents[1]
TASK = "multiclass"


def ozturk_dir() -> Path:
    """The downscaled Ozturk folder of the shared data: $XRAY_SPARK_TEST_DATA/ozturk, else
    ../shared/data/ozturk next to the repository (as the tests find it)."""
    env = os.environ.get("XRAY_SPARK_TEST_DATA")
    return (Path(env) if env else REPO.parent / "shared" / "data") / "ozturk"


def steady_rate(rows: int, seconds: list[float]) -> float:
    """Images/s of the fastest steady epoch (all but the first, which traces the graph)."""
    return rows / min(seconds[1:])


def cpu_per_img(fit: dict) -> float:
    """A fit process's CPU seconds per image, its most frugal steady epoch."""
    return 1 / steady_rate(fit["rows"], fit["cpu_seconds"])


# ------------------------------------------------------------------------------------ fit (child process)


def fit_child(spec: dict) -> dict:
    """One plain Keras `fit` process on the barrier arm's training rows; returns seconds per epoch."""
    from xray_spark.features.worker import configure_tf_threads

    configure_tf_threads(int(spec["threads"]))  # before TensorFlow starts its pools
    import keras
    import numpy as np

    from xray_spark.features.backbones import get_backbone
    from xray_spark.features.engines import cpu_flags
    from xray_spark.finetune.config import FinetuneConfig
    from xray_spark.finetune.data import decode_batch, read_shard
    from xray_spark.finetune.trainer import build_model, make_optimizer, precision_policy

    cfg = FinetuneConfig(**spec["finetune"])
    bb = get_backbone(spec["backbone"])
    shards = [read_shard(spec["data_root"], "train", rank) for rank in range(int(spec["workers"]))]
    contents = [c for shard_contents, _ in shards for c in shard_contents]
    y = np.concatenate([labels for _, labels in shards])
    if spec.get("rows"):
        contents, y = contents[:spec["rows"]], y[:spec["rows"]]
    t = time.perf_counter()
    x = bb.preprocess(decode_batch(contents, bb.input_size))
    decode_s = time.perf_counter() - t
    policy = precision_policy(spec["precision"], cpu_flags())
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(cfg.seed)
    model = build_model(bb, spec["weights_path"], int(spec["n_classes"]), cfg.unfreeze)
    model.compile(optimizer=make_optimizer(cfg), loss="sparse_categorical_crossentropy")
    seconds: list[float] = []
    cpu: list[float] = []  # this process's CPU seconds (all threads): much less sensitive to others' load

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.t0)
            cpu.append(time.process_time() - self.c0)
            log.info("fit %s epoch %d: %.1fs, %.2f images/s, loss %.4f (load %.1f)", policy, epoch + 1,
                     seconds[-1], len(y) / seconds[-1], (logs or {}).get("loss", float("nan")),
                     os.getloadavg()[0])

    model.fit(x, y, batch_size=int(spec["batch"]), epochs=int(spec["epochs"]), shuffle=True, verbose=0,
              callbacks=[EpochTimer()])
    return {"policy": policy, "rows": len(y), "seconds": seconds, "cpu_seconds": cpu,
            "decode_img_per_s": len(y) / decode_s}


def run_fit(spec: dict, precision: str, **changes) -> dict:
    """fit_child in a fresh process (TensorFlow's thread settings and the policy are per process)."""
    spec = {**spec, **changes, "precision": precision}
    log.info("plain Keras fit, %s, %d threads, %s training rows, %d epochs (load %.1f)", precision,
             spec["threads"], spec.get("rows") or "all", spec["epochs"], os.getloadavg()[0])
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--fit-child", json.dumps(spec)],
                          stdout=subprocess.PIPE, text=True, check=False)  # stderr: its progress lines
    if proc.returncode != 0:
        raise SystemExit(f"the fit process ({precision}) exited {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------ barrier arm


def run_barrier_arm(args: argparse.Namespace, data: Path, work: Path) -> tuple[dict, dict]:
    """Ingest the data folder, then `fit_finetune` with barrier workers; returns its training facts and the
    spec the fit arms need."""
    from xray_spark.config import load_config
    from xray_spark.data.images import load_or_ingest
    from xray_spark.features.backbones import get_backbone
    from xray_spark.features.weights import resolve_weights
    from xray_spark.finetune.data import steps_for, write_shards
    from xray_spark.finetune.run import fit_finetune
    from xray_spark.session import get_spark
    from xray_spark.tasks import get_task

    cfg = load_config()
    ft = cfg.finetune
    ft.unfreeze, ft.epochs, ft.patience = args.unfreeze, args.epochs, args.epochs + 1
    ft.augment, ft.class_weights, ft.precision = False, False, "fp32"
    if args.batch_size:
        ft.batch_size = args.batch_size
    task = get_task(TASK)
    spark = get_spark(cfg, master=args.master, app_name="bench-finetune")
    try:
        out = str(work / "out")
        log.info("barrier arm: ingest, then %d workers, master %s (load %.1f)", args.workers, args.master,
                 os.getloadavg()[0])
        images, summary, _ = load_or_ingest(spark, str(data), out, cfg)
        t = time.perf_counter()
        m = fit_finetune(spark, cfg, images, summary, task, args.backbone, "none", out, args.workers,
                         args.epochs)
        log.info("barrier training done in %.0fs (shards, workers' start, epochs, test share, model save)",
                 time.perf_counter() - t)
        plan = write_shards(spark, images, summary, cfg, task, out, args.workers)  # reused: the rows trained
        per_worker = int(m["per_worker_batch"])
        threads = args.workers * int(spark.conf.get("spark.task.cpus", "1"))
        fit_spec = {
            "backbone": m["backbone"], "data_root": plan.root, "workers": args.workers,
            "weights_path": str(resolve_weights(get_backbone(args.backbone).name, "none").local_path),
            "n_classes": len(m["labels"]), "finetune": m["finetune"], "batch": per_worker * args.workers,
            "epochs": args.epochs, "threads": threads,
            "barrier_rows": steps_for(plan.largest_shard("train"), per_worker) * per_worker * args.workers,
            "shard_sizes": [plan.n("train", s) for s in range(args.workers)],
        }
    finally:
        spark.stop()
    return m, fit_spec


# ------------------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, help="image folder with class sub-folders (default: the shared "
                   "Ozturk folder, $XRAY_SPARK_TEST_DATA/ozturk or ../shared/data/ozturk)")
    p.add_argument("--images", type=int, default=64, help="images taken from it, spread over every class "
                   "(the split then trains on ~60%%: 20%% test, 20%% validation)")
    p.add_argument("--epochs", type=int, default=3, help="per arm; the first is warm-up (>= 2)")
    p.add_argument("--unfreeze", default="all", help="'all' or how many last backbone layers train")
    p.add_argument("--batch-size", type=int, default=0, help="global batch (default: finetune.batch_size)")
    p.add_argument("--backbone", default="ResNet50")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--master", default="local[2]")
    p.add_argument("--skip-bf16", action="store_true", help="skip the bf16 fit arm")
    p.add_argument("--bf16-images", type=int, default=0,
                   help="training rows of the bf16 arm (default: one global batch; emulated bf16 is slow)")
    p.add_argument("--bf16-epochs", type=int, default=2, help="bf16 arm epochs; the first is warm-up (>= 2)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (ingest, shards, model)")
    p.add_argument("--fit-child", metavar="JSON", help=argparse.SUPPRESS)  # one fit process
    args = p.parse_args(argv)
    if not args.fit_child:
        from xray_spark.finetune.config import unfreeze_count

        if min(args.epochs, args.bf16_epochs) < 2 or args.images < 1 or args.workers < 1:
            p.error("--epochs and --bf16-epochs must be >= 2 (the first is warm-up); --images and --workers "
                    ">= 1")
        raw = args.unfreeze.strip().lower()
        try:
            args.unfreeze = raw if raw == "all" else int(raw)
            unfreeze_count(args.unfreeze)
        except ValueError:
            p.error(f"--unfreeze must be 'all' or a number of layers >= 0, got {raw!r}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging()
    if args.fit_child:
        print(json.dumps(fit_child(json.loads(args.fit_child))), flush=True)
        return
    source = args.data or ozturk_dir()
    if not source.is_dir():
        print(f"no image data at {source}: set XRAY_SPARK_TEST_DATA, place the shared data at ../shared/data "
              "or pass --data DIR (class sub-folders)", file=sys.stderr)
        raise SystemExit(2)
    from small_run import build_folder  # benchmarks/ is on sys.path when run as a script

    from xray_spark.features.engines import cpu_flags, has_native_bf16

    print(cpu_line(), flush=True)
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    try:
        data = build_folder(source, work / "data", args.images)
        m, spec = run_barrier_arm(args, data, work)
        fp32 = run_fit(spec, "fp32")
        bf16 = None if args.skip_bf16 else run_fit(spec, "bf16", rows=args.bf16_images or spec["batch"],
                                                   epochs=args.bf16_epochs)
    finally:
        if args.keep:
            log.info("work folder kept: %s", work)
        else:
            shutil.rmtree(work, ignore_errors=True)

    n_train, rows = int(m["n_train"]), spec["barrier_rows"]
    barrier_s = [n_train / h["images_per_second"] for h in m["history"]]  # chief's training-loop seconds
    barrier = steady_rate(n_train, barrier_s)
    barrier_rows = steady_rate(rows, barrier_s)
    fit = steady_rate(fp32["rows"], fp32["seconds"])
    assert fp32["rows"] == n_train, (fp32["rows"], n_train)
    per_worker = spec["batch"] // args.workers

    def epochs(seconds: list[float], count: int) -> str:
        return ",".join(f"{count / s:.2f}" for s in seconds)

    print(f"\nbackbone={m['backbone']} weights=none images={args.images} train_images={n_train} "
          f"train_shards={'+'.join(map(str, spec['shard_sizes']))} epochs={args.epochs} "
          f"steady=fastest_of_epochs_2..{args.epochs} unfreeze={args.unfreeze} global_batch={spec['batch']} "
          f"workers={args.workers}x{per_worker} fit_threads={spec['threads']} policy={m['policy']} "
          f"optimizer={m['finetune']['optimizer']} augment=off class_weights=off")
    print(f"barrier_img_per_s={barrier:.2f} barrier_epochs_img_per_s={epochs(barrier_s, n_train)} "
          f"barrier_rows_per_s={barrier_rows:.2f} barrier_rows_per_epoch={rows} (steps x global batch: "
          f"{rows - n_train} rows more than the {n_train} images, the smaller shard cycles)")
    print(f"fit_img_per_s={fit:.2f} fit_epochs_img_per_s={epochs(fp32['seconds'], fp32['rows'])} "
          f"fit_rows_per_epoch={fp32['rows']} decode_img_per_s={fp32['decode_img_per_s']:.0f}")
    print(f"ratio_barrier_vs_fit={barrier / fit:.3f} (goal >= 0.8; training images per second, each once per "
          f"epoch) barrier_img_per_s={barrier:.2f} fit_img_per_s={fit:.2f} "
          f"ratio_barrier_vs_fit_rows={barrier_rows / fit:.3f} (every row computed)")
    if bf16 is not None:
        b = steady_rate(bf16["rows"], bf16["seconds"])
        native = has_native_bf16(cpu_flags())
        note = ("native bf16 on this CPU" if native else
                "native_bf16=no: no AMX/AVX512-BF16 on this CPU, bf16 is emulated: this ratio is the cost "
                "of the emulation, not a bf16 speed-up")
        print(f"fit_fp32_img_per_s={fit:.2f} fit_bf16_img_per_s={b:.2f} ratio_bf16_vs_fp32={b / fit:.3f} "
              f"bf16_policy={bf16['policy']} bf16_rows_per_epoch={bf16['rows']} "
              f"fit_bf16_epochs_img_per_s={epochs(bf16['seconds'], bf16['rows'])} "
              f"cpu_s_per_img_fp32={cpu_per_img(fp32):.2f} cpu_s_per_img_bf16={cpu_per_img(bf16):.2f} "
              f"ratio_bf16_vs_fp32_cpu={cpu_per_img(fp32) / cpu_per_img(bf16):.3f} ({note})")
    print(f"wall_s={time.perf_counter() - started:.0f} load_end={os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
