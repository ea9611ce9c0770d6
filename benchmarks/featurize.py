"""Featurizer throughput: DeepImageFeaturizer vs raw Keras vs the reference pandas-UDF recipe.

Same images, same process, every variant warmed up once, then timed:
  (a)  raw Keras on already-decoded uint8 arrays in this process (TF's default threads = all cores): the
       limit of this hardware as the brief defines it. `model.predict` and a `predict_on_batch` loop are
       both timed; the faster is (a).
  (a2) raw Keras in one process per core, 1 TF thread each (how Spark local[n] runs Python workers), on
       the same decoded arrays: the limit for the Spark layout.
  (b)  the Databricks reference recipe ("model inference with pandas UDFs"): a scalar-iterator pandas_udf
       that rebuilds the model from broadcast weights in every task, decodes each batch and calls
       `model.predict`, returning float arrays.
  (c)  DeepImageFeaturizer end to end from file bytes (binaryFile folder -> features) in Spark local[2].
  (c2) optional: the same worker code behind a plain iterator pandas UDF instead of predict_batch_udf.
Optionally (--cache-dir) the feature cache: a first run and a second run over the same images.

Timing: after the warm-up, `--repeat R` rounds run every variant once each, interleaved, and the fastest
round per variant is kept — on a shared machine, load changes by the minute, and interleaving exposes
every variant to the same quiet and busy spells. Last line:
`ratio_vs_raw=<c/a> ratio_vs_pandas_udf=<c/b> ...` (images/s).

    python benchmarks/featurize.py --data ../shared/data/ozturk --backbone ResNet50 --limit 256 --repeat 3
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from common import setup_logging  # benchmarks/ is on sys.path when run as a script

log = logging.getLogger("benchmarks.featurize")
EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".gif", ".webp"}


def pick_files(data: Path, limit: int) -> list[Path]:
    """`limit` files spread evenly over the sorted listing, so every class folder is represented."""
    files = sorted(p for p in data.rglob("*") if p.is_file() and p.suffix.lower() in EXTS)
    if not files:
        raise SystemExit(f"no image files under {data}")
    if limit >= len(files):
        return files
    idx = np.linspace(0, len(files) - 1, limit).round().astype(int)
    return [files[i] for i in idx]


def interleaved(variants: dict[str, Callable[[], float | None]], rounds: int) -> dict[str, float]:
    """Warm every variant up once, then time `rounds` interleaved rounds; best seconds per variant.

    A variant may return its own measured seconds (the process pool does); else wall time is used.
    """
    for name, fn in variants.items():
        log.info("warm-up %s", name)
        fn()
    best = dict.fromkeys(variants, float("inf"))
    for r in range(rounds):
        for name, fn in variants.items():
            t = time.perf_counter()
            own = fn()
            dt = own if own is not None else time.perf_counter() - t
            best[name] = min(best[name], dt)
            log.info("round %d %s: %.2fs (load %.2f)", r + 1, name, dt, os.getloadavg()[0])
    return best


def raw_model(backbone: str, weights_path: Path):
    from xray_spark.features.backbones import get_backbone

    bb = get_backbone(backbone)
    model = bb.build(weights=None)
    model.load_weights(str(weights_path))
    return bb, model


def _raw_worker(backbone: str, weights_path: str, x: np.ndarray, batch_size: int, barrier, commands,
                out) -> None:
    """A persistent process with 1 TF thread: on each command, sync with its peers and time one pass."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    bb, model = raw_model(backbone, Path(weights_path))
    while commands.get() == "run":
        barrier.wait()
        t = time.perf_counter()
        for i in range(0, len(x), batch_size):
            model.predict_on_batch(bb.preprocess(x[i:i + batch_size]))
        out.put(time.perf_counter() - t)


class RawProcessPool:
    """(a2) raw Keras split over `procs` processes x 1 TF thread; run() returns the slowest worker's time."""

    def __init__(self, backbone: str, weights_path: Path, x: np.ndarray, batch_size: int, procs: int) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.barrier, self.out = ctx.Barrier(procs), ctx.Queue()  # kept alive: children unpickle it
        self.commands = [ctx.Queue() for _ in range(procs)]
        self.workers = [
            ctx.Process(target=_raw_worker,
                        args=(backbone, str(weights_path), share, batch_size, self.barrier, q, self.out))
            for share, q in zip(np.array_split(x, procs), self.commands, strict=True)
        ]
        for w in self.workers:
            w.start()

    def run(self) -> float:
        for q in self.commands:
            q.put("run")
        return max(self.out.get() for _ in self.workers)

    def close(self) -> None:
        for q in self.commands:
            q.put("stop")
        for w in self.workers:
            w.join()


def iterator_udf_variant(backbone: str, ship_name: str, batch_size: int):
    """(c2) the same worker code behind a plain iterator pandas UDF instead of predict_batch_udf."""
    from pyspark.sql.functions import pandas_udf

    from xray_spark.features.featurizer import UDF_RETURN
    from xray_spark.features.worker import WorkerFeaturizer

    @pandas_udf(UDF_RETURN)
    def featurize(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        worker = WorkerFeaturizer(backbone, ship_name)
        for series in batches:
            arr = series.to_numpy()
            outs = [worker.featurize_bytes(arr[i:i + batch_size]) for i in range(0, len(arr), batch_size)]
            feats = np.concatenate([o["features"] for o in outs])
            yield pd.DataFrame({"features": list(feats), "error": np.concatenate([o["error"] for o in outs]),
                                "engine": np.concatenate([o["engine"] for o in outs])})

    return featurize.asNondeterministic()


def reference_pandas_udf(spark, backbone: str, weights_path: Path):
    """(b) The reference recipe: scalar-iterator pandas UDF, model rebuilt from broadcast weights per task."""
    from pyspark.sql.functions import pandas_udf

    from xray_spark.features.backbones import get_backbone

    bb, model = raw_model(backbone, weights_path)
    bc_weights = spark.sparkContext.broadcast(model.get_weights())
    name = bb.name

    def model_fn():
        m = get_backbone(name).build(weights=None)
        m.set_weights(bc_weights.value)
        return m

    def featurize_series(m, content: pd.Series) -> pd.Series:
        from xray_spark.data.decode import decode_for_model

        b = get_backbone(name)
        arr = np.stack([decode_for_model(bytes(c), b.input_size) for c in content])
        preds = m.predict(b.preprocess(arr), verbose=0)
        return pd.Series([p.flatten() for p in preds])

    @pandas_udf("array<float>")
    def featurize_udf(content_iter: Iterator[pd.Series]) -> Iterator[pd.Series]:
        m = model_fn()
        for content in content_iter:
            yield featurize_series(m, content)

    return featurize_udf


def cache_timings(spark, payloads: list[bytes], backbone: str, weights: str, batch_size: int,
                  root: str) -> tuple[float, float]:
    """Seconds for a first featurize_to_cache run and a second (fully cached) run, results materialised."""
    from xray_spark.features.cache import featurize_to_cache_run

    folder = Path(tempfile.mkdtemp(prefix="featcache-", dir=root))
    rows = [(hashlib.sha256(b).hexdigest(), bytearray(b)) for b in payloads]
    images = spark.createDataFrame(rows, "sha256 string, content binary")
    times = []
    for _ in range(2):
        t = time.perf_counter()
        df, run = featurize_to_cache_run(spark, images, backbone, weights, str(folder), batch_size=batch_size)
        df.write.format("noop").mode("overwrite").save()
        times.append(time.perf_counter() - t)
        log.info("cache run: computed %d of %d in %.2fs", run.computed, run.requested, times[-1])
    shutil.rmtree(folder, ignore_errors=True)
    return times[0], times[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--backbone", default="ResNet50")
    p.add_argument("--limit", type=int, default=128)
    p.add_argument("--weights", default="none")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--partitions", type=int, default=0,
                   help="input partitions (default: a multiple of the cores, <= 256 images each)")
    p.add_argument("--repeat", type=int, default=1,
                   help="interleaved timed rounds after the warm-up (best kept)")
    p.add_argument("--master", default="local[2]")
    p.add_argument("--conf", action="append", default=[], metavar="K=V", help="extra Spark conf, repeatable")
    p.add_argument("--skip-reference", action="store_true", help="skip (b), the reference recipe")
    p.add_argument("--skip-processes", action="store_true",
                   help="skip (a2), raw Keras in one process per core")
    p.add_argument("--iterator-variant", action="store_true", help="also time (c2), an iterator pandas UDF")
    p.add_argument("--cache-dir",
                   help="also time featurize_to_cache twice (first run, cached run) under this dir")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging()

    from xray_spark.config import load_config
    from xray_spark.data.decode import decode_for_model
    from xray_spark.features.cache import IMAGES_PER_TASK
    from xray_spark.features.featurizer import DeepImageFeaturizer
    from xray_spark.features.weights import resolve_weights, ship_weights
    from xray_spark.session import get_spark, parse_conf_pairs
    from xray_spark.spark_io import balanced_partitions

    files = pick_files(args.data, args.limit)
    payloads = [f.read_bytes() for f in files]
    n = len(files)
    log.info("%d images, %.1f MB, load %.2f", n, sum(map(len, payloads)) / 1e6, os.getloadavg()[0])
    spark = get_spark(load_config(), master=args.master, conf=parse_conf_pairs(args.conf),
                      app_name="bench-featurize")
    cores = spark.sparkContext.defaultParallelism
    parts = args.partitions or balanced_partitions(n, cores, IMAGES_PER_TASK)
    resolved = resolve_weights(args.backbone, args.weights, spark=spark)

    bb, model = raw_model(args.backbone, resolved.local_path)
    t = time.perf_counter()
    x = np.stack([decode_for_model(b, bb.input_size) for b in payloads])
    decode_ips = n / (time.perf_counter() - t)

    # read a folder, as real jobs do: a list of N explicit paths makes Spark run a file-listing job per read
    staged = Path(tempfile.mkdtemp(prefix="bench-featurize-"))
    for i, f in enumerate(files):
        shutil.copyfile(f, staged / f"{i:05d}{f.suffix.lower()}")

    def source():
        return spark.read.format("binaryFile").load(str(staged)).repartition(parts)

    def spark_run(column_fn) -> Callable[[], None]:
        return lambda: source().select(column_fn().alias("f")).write.format("noop").mode("overwrite").save()

    def predict() -> None:
        model.predict(bb.preprocess(x), batch_size=args.batch_size, verbose=0)

    def on_batch() -> None:
        for i in range(0, n, args.batch_size):
            model.predict_on_batch(bb.preprocess(x[i:i + args.batch_size]))

    variants: dict[str, Callable[[], float | None]] = {
        "a_predict": predict,
        "a_on_batch": on_batch,
    }
    pool = None
    if not args.skip_processes:
        pool = RawProcessPool(args.backbone, resolved.local_path, x, args.batch_size, cores)
        variants["a2"] = pool.run
    if not args.skip_reference:
        ref = reference_pandas_udf(spark, args.backbone, resolved.local_path)
        variants["b"] = spark_run(lambda: ref("content"))
    featurizer = DeepImageFeaturizer(modelName=args.backbone, weights=args.weights, batchSize=args.batch_size)
    variants["c"] = lambda: featurizer.transform(source()).write.format("noop").mode("overwrite").save()
    if args.iterator_variant:
        it_udf = iterator_udf_variant(args.backbone, ship_weights(spark, resolved), args.batch_size)
        variants["c2"] = spark_run(lambda: it_udf("content"))

    try:
        best = interleaved(variants, max(1, args.repeat))
    finally:
        if pool:
            pool.close()
        shutil.rmtree(staged, ignore_errors=True)
    ips = {k: n / v for k, v in best.items()}
    nan = float("nan")
    a = max(ips["a_predict"], ips["a_on_batch"])
    a2, b, c, c2 = ips.get("a2", nan), ips.get("b", nan), ips["c"], ips.get("c2", nan)

    cache_line = ""
    if args.cache_dir:
        first, second = cache_timings(spark, payloads, args.backbone, args.weights, args.batch_size,
                                      args.cache_dir)
        cache_line = (f" cache_first_s={first:.2f} cache_second_s={second:.2f} "
                      f"cache_speedup={first / second:.1f}")

    env = spark.sparkContext.environment
    print(f"\nbackbone={args.backbone} images={n} batch={args.batch_size} partitions={parts} "
          f"arrow_batch={spark.conf.get('spark.sql.execution.arrow.maxRecordsPerBatch')} "
          f"task_cpus={spark.conf.get('spark.task.cpus', '1')} "
          f"tf_threads_env={env.get('XRAY_SPARK_TF_THREADS') or env.get('TF_NUM_INTRAOP_THREADS')} "
          f"rounds={max(1, args.repeat)} decode_only={decode_ips:.0f}img/s load_now={os.getloadavg()[0]:.2f}")
    rows = [
        ("(a) raw keras model.predict, 1 process", ips["a_predict"]),
        ("(a) raw keras predict_on_batch, 1 process", ips["a_on_batch"]),
        (f"(a2) raw keras, {cores} processes x 1 thread", a2),
        ("(b) reference pandas UDF (Spark)", b),
        ("(c) DeepImageFeaturizer (Spark, from bytes)", c),
        ("(c2) iterator pandas UDF variant", c2),
    ]
    print(f"{'variant':<46}{'img/s':>10}")
    for label, value in rows:
        print(f"{label:<46}{value:>10.2f}")
    print(f"ratio_vs_raw={c / a:.3f} ratio_vs_pandas_udf={c / b:.3f} raw_ips={a:.2f} pandas_udf_ips={b:.2f} "
          f"featurizer_ips={c:.2f} ratio_vs_raw_processes={c / a2:.3f} raw_processes_ips={a2:.2f}"
          f"{cache_line}")


if __name__ == "__main__":
    main()
