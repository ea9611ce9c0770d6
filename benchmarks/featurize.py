"""Featurizer throughput per inference engine (default), or the featurizer vs raw Keras vs the pandas-UDF
recipe (`--recipes`).

Default section — engines. For each backbone and engine (Keras fp32, OpenVINO fp32, OpenVINO bf16, OpenVINO
int8), side by side in one run on the same images (weights none: same compute as ImageNet weights):
  bare   the engine in this process on already-decoded uint8 arrays (preprocess_input included), batches of
         --batch-size, threads = the cores Spark uses (TensorFlow intra-op / OpenVINO INFERENCE_NUM_THREADS);
  spark  DeepImageFeaturizer(engine=..., precision=...) from file bytes (binaryFile folder) in Spark
         local[cores]: one thread per Python worker, decode included.
Every variant is warmed up (models loaded, IR converted and cached), then `--repeat` interleaved rounds run,
the fastest kept. Per line: `img_per_s=` (bare), `ratio_vs_keras_fp32=` (bare, vs bare Keras fp32),
`cosine_min=` (per-image cosine vs bare Keras fp32 features, the worst image), `label_agreement=` (a
logistic regression fitted on Keras fp32 features of every other image with its class-folder label, then
applied to the rest from each engine's features: the share of predicted labels equal to Keras fp32's; goal
>= 0.99), `spark_img_per_s=`, `spark_over_bare=` (featurizer img/s over the same engine's bare img/s, goal
>= 0.9), and `ran=`: the engine label the Spark workers reported. The first line names the CPU, whether it
has native bf16 (where it does not, OpenVINO runs the bf16 hint as fp32 and the bf16 lines say so) and its
int8 support (AMX-INT8, AVX512-VNNI, AVX-VNNI or none: int8 still runs there, slower).
int8 is NNCF post-training quantisation (features/quantize.py) calibrated on the images the label head is
fitted on (every other image, up to --calibration-images), never on the held-out half it is measured on;
quantising is part of the warm-up, not of the timings.

    python benchmarks/featurize.py --data ../shared/data/ozturk --limit 256 --batch-size 32

`--recipes` — same images, same process, every variant warmed up once, then timed:
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
Optionally (--cache-dir) the feature cache: a first run and a second run over the same images. Last line
per backbone: `ratio_vs_raw=<c/a> ratio_vs_pandas_udf=<c/b> ...` (images/s).

    python benchmarks/featurize.py --recipes --data ../shared/data/ozturk --backbones ResNet50 --limit 256

Timing: after the warm-up, `--repeat R` rounds run every variant once each, interleaved, and the fastest
round per variant is kept — on a shared machine, load changes by the minute, and interleaving exposes
every variant to the same quiet and busy spells.
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
from common import cpu_line, setup_logging  # benchmarks/ is on sys.path when run as a script

log = logging.getLogger("benchmarks.featurize")
VARIANTS = (("keras", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8"))
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


def cosine_min(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


def label_head(feats: np.ndarray, labels: np.ndarray, train: np.ndarray):
    """A small trained head (standardised logistic regression) on Keras fp32 features of the `train` rows.

    Why: cosine >= 0.999 per image does not by itself say a downstream decision is unchanged; a head's
    labels agreeing on >= 99% of held-out images does (issue 10's parity goal).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(feats[train], labels[train])


def bench_backbone(spark, name: str, files: list[Path], payloads: list[bytes], staged: Path, warm: Path,
                   parts: int, cores: int, batch_size: int, rounds: int, native: bool,
                   calibration_images: int = 300) -> list[str]:
    """Warm up, then time every variant bare and in Spark, interleaved; one output line per variant."""
    from xray_spark.data.decode import decode_for_model
    from xray_spark.features import engines
    from xray_spark.features.backbones import get_backbone
    from xray_spark.features.calibration import write_calibration
    from xray_spark.features.featurizer import DeepImageFeaturizer
    from xray_spark.features.weights import resolve_weights, weights_cache_dir

    bb = get_backbone(name)
    resolved = resolve_weights(bb.name, "none", spark=spark)
    x = np.stack([decode_for_model(b, bb.input_size) for b in payloads])
    n = len(x)
    train, test = np.arange(0, n, 2), np.arange(1, n, 2)  # the listing is sorted by class: both sides get all
    calib = train[:calibration_images]  # int8 calibrates on the head's training half only
    cal = write_calibration(x[calib, :, :, 0], [hashlib.sha256(payloads[i]).hexdigest() for i in calib],
                            bb.name, staged.parent / "calibration")
    int8_params = {"calibration": str(cal.path), "calibrationSha256": cal.digest}
    bare: dict[tuple[str, str], engines.Engine] = {}
    spark_fns: dict[tuple[str, str], Callable[[], None]] = {}
    ran: dict[tuple[str, str], str] = {}
    for engine, precision in VARIANTS:
        int8 = precision == "int8"
        bare[engine, precision] = engines.load_engine(
            bb.name, str(resolved.local_path), engine=engine, precision=precision,
            fingerprint=resolved.fingerprint, cache_dir=weights_cache_dir(), threads=cores,
            calibration=str(cal.path) if int8 else None)
        bare[engine, precision](x[:batch_size])  # warm-up: the first inference allocates
        feat = DeepImageFeaturizer(modelName=bb.name, weights="none", engine=engine, precision=precision,
                                   batchSize=batch_size, engineCol="engine", **(int8_params if int8 else {}))
        out = feat.transform(spark.read.format("binaryFile").load(str(warm)).repartition(cores))
        # warm-up in Spark (every worker loads the model) and the label the workers report
        labels = {r.engine for r in out.select("engine").distinct().collect()}
        ran[engine, precision] = ",".join(sorted(labels))
        spark_fns[engine, precision] = (
            lambda f=feat: f.transform(spark.read.format("binaryFile").load(str(staged)).repartition(parts))
            .write.format("noop").mode("overwrite").save())

    best_bare = dict.fromkeys(VARIANTS, float("inf"))
    best_spark = dict.fromkeys(VARIANTS, float("inf"))
    feats: dict[tuple[str, str], np.ndarray] = {}
    for r in range(rounds):
        for v in VARIANTS:
            t = time.perf_counter()
            feats[v] = np.concatenate([bare[v](x[i:i + batch_size]) for i in range(0, n, batch_size)])
            t_bare = time.perf_counter() - t
            t = time.perf_counter()
            spark_fns[v]()
            t_spark = time.perf_counter() - t
            best_bare[v], best_spark[v] = min(best_bare[v], t_bare), min(best_spark[v], t_spark)
            log.info("round %d %s %s: bare %.1fs spark %.1fs (load %.2f)", r + 1, bb.name, v, t_bare, t_spark,
                     os.getloadavg()[0])

    classes = np.array([f.parent.name for f in files])  # the class folder is the label
    reference = feats["keras", "fp32"]
    head = label_head(reference, classes, train)
    expected = head.predict(reference[test])
    log.info("%s head: %d train / %d held-out images, accuracy vs folder labels %.3f", bb.name, len(train),
             len(test), float((expected == classes[test]).mean()))
    keras_ips = n / best_bare["keras", "fp32"]
    lines = []
    for v in VARIANTS:
        ips, spark_ips = n / best_bare[v], n / best_spark[v]
        same = int((head.predict(feats[v][test]) == expected).sum())
        note = " bf16_not_native=ran_as_fp32" if v[1] == "bf16" and not native else ""
        note += f" calibration_images={cal.n}" if v[1] == "int8" else ""
        lines.append(
            f"backbone={bb.name} engine={v[0]}:{v[1]} ran={ran[v]} bare_ran={bare[v].label} "
            f"img_per_s={ips:.2f} ratio_vs_keras_fp32={ips / keras_ips:.3f} "
            f"cosine_min={cosine_min(feats[v], reference):.6f} "
            f"label_agreement={same / len(test):.4f} ({same}/{len(test)}) "
            f"spark_img_per_s={spark_ips:.2f} spark_over_bare={spark_ips / ips:.3f}{note}")
        log.info(lines[-1])
    return lines


def stage(files: list[Path], folder: Path) -> Path:
    """Copy `files` flat into `folder`: a folder read, as real jobs do (a list of N explicit paths makes
    Spark run a file-listing job per read)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(files):
        shutil.copyfile(f, folder / f"{i:05d}{f.suffix.lower()}")
    return folder


def run_engines(spark, args: argparse.Namespace, files: list[Path], payloads: list[bytes]) -> None:
    """The default section: one line per backbone and engine (see the module docstring)."""
    from xray_spark.features import engines
    from xray_spark.features.cache import IMAGES_PER_TASK
    from xray_spark.features.quantize import int8_support
    from xray_spark.features.worker import configure_tf_threads
    from xray_spark.spark_io import balanced_partitions

    native = engines.has_native_bf16(engines.cpu_flags())
    int8 = int8_support(engines.cpu_flags())
    ov, error = engines.import_openvino()
    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES") if ov else []
    n = len(files)
    cores = spark.sparkContext.defaultParallelism
    configure_tf_threads(cores)  # before TensorFlow starts: the bare engines use the cores Spark uses
    parts = balanced_partitions(n, cores, IMAGES_PER_TASK)
    root = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    staged, warm = stage(files, root / "all"), stage(files[:2 * args.batch_size], root / "warm")
    lines: list[str] = []
    try:
        for name in backbones(args):
            lines += bench_backbone(spark, name, files, payloads, staged, warm, parts, cores, args.batch_size,
                                    max(1, args.repeat), native, args.calibration_images)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"\n{cpu_line()}")
    print(f"cores_used={cores} openvino={ov.__version__ if ov else error} "
          f"openvino_cpu_capabilities={','.join(caps)}")
    print(f"images={n} batch={args.batch_size} partitions={parts} rounds={max(1, args.repeat)} weights=none "
          f"load_now={os.getloadavg()[0]:.2f}")
    if not native:
        print("bf16 is NOT native on this CPU (no amx_bf16 / avx512_bf16): OpenVINO runs the bf16 hint as "
              "fp32, so the openvino:bf16 lines below measure fp32 again and say nothing about bf16")
    if int8 == "none":
        print("int8 is NOT native on this CPU (no AMX-INT8 / AVX512-VNNI / AVX-VNNI): OpenVINO runs the int8 "
              "model with plain AVX2/SSE integer arithmetic, so the openvino:int8 line is slower than on "
              "CPUs with int8 dot products, and engine `auto` never picks int8 here")
    for line in lines:
        print(line)


def run_recipes(spark, args: argparse.Namespace, backbone: str, files: list[Path],
                payloads: list[bytes]) -> None:
    """`--recipes`: (a) raw Keras, (a2) raw processes, (b) the pandas-UDF recipe, (c) the featurizer."""
    from xray_spark.data.decode import decode_for_model
    from xray_spark.features.cache import IMAGES_PER_TASK
    from xray_spark.features.featurizer import DeepImageFeaturizer
    from xray_spark.features.weights import resolve_weights, ship_weights
    from xray_spark.spark_io import balanced_partitions

    n = len(files)
    cores = spark.sparkContext.defaultParallelism
    parts = args.partitions or balanced_partitions(n, cores, IMAGES_PER_TASK)
    resolved = resolve_weights(backbone, args.weights, spark=spark)

    bb, model = raw_model(backbone, resolved.local_path)
    t = time.perf_counter()
    x = np.stack([decode_for_model(b, bb.input_size) for b in payloads])
    decode_ips = n / (time.perf_counter() - t)
    staged = stage(files, Path(tempfile.mkdtemp(prefix="bench-featurize-")))

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
        pool = RawProcessPool(backbone, resolved.local_path, x, args.batch_size, cores)
        variants["a2"] = pool.run
    if not args.skip_reference:
        ref = reference_pandas_udf(spark, backbone, resolved.local_path)
        variants["b"] = spark_run(lambda: ref("content"))
    featurizer = DeepImageFeaturizer(modelName=backbone, weights=args.weights, batchSize=args.batch_size)
    variants["c"] = lambda: featurizer.transform(source()).write.format("noop").mode("overwrite").save()
    if args.iterator_variant:
        it_udf = iterator_udf_variant(backbone, ship_weights(spark, resolved), args.batch_size)
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
        first, second = cache_timings(spark, payloads, backbone, args.weights, args.batch_size,
                                      args.cache_dir)
        cache_line = (f" cache_first_s={first:.2f} cache_second_s={second:.2f} "
                      f"cache_speedup={first / second:.1f}")

    env = spark.sparkContext.environment
    print(f"\n{cpu_line()}")
    print(f"backbone={backbone} images={n} batch={args.batch_size} partitions={parts} "
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


def backbones(args: argparse.Namespace) -> list[str]:
    return [b.strip() for b in args.backbones.split(",") if b.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--backbones", default="ResNet50,InceptionV3", help="comma-separated")
    p.add_argument("--limit", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeat", type=int, default=1,
                   help="interleaved timed rounds after the warm-up (best kept)")
    p.add_argument("--calibration-images", type=int, default=300,
                   help="int8: NNCF calibration images, from the label head's training half (default 300)")
    p.add_argument("--master", default="local[2]")
    p.add_argument("--conf", action="append", default=[], metavar="K=V", help="extra Spark conf, repeatable")
    p.add_argument("--recipes", action="store_true",
                   help="instead of the engines: featurizer vs raw Keras vs the pandas-UDF recipe")
    g = p.add_argument_group("--recipes only")
    g.add_argument("--weights", default="none")
    g.add_argument("--partitions", type=int, default=0,
                   help="input partitions (default: a multiple of the cores, <= 256 images each)")
    g.add_argument("--skip-reference", action="store_true", help="skip (b), the reference recipe")
    g.add_argument("--skip-processes", action="store_true",
                   help="skip (a2), raw Keras in one process per core")
    g.add_argument("--iterator-variant", action="store_true", help="also time (c2), an iterator pandas UDF")
    g.add_argument("--cache-dir",
                   help="also time featurize_to_cache twice (first run, cached run) under this dir")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging()

    from xray_spark.config import load_config, parse_conf_pairs
    from xray_spark.session import get_spark

    files = pick_files(args.data, args.limit)
    payloads = [f.read_bytes() for f in files]
    log.info("%d images, %.1f MB, load %.2f", len(files), sum(map(len, payloads)) / 1e6, os.getloadavg()[0])
    spark = get_spark(load_config(), master=args.master, conf=parse_conf_pairs(args.conf),
                      app_name="bench-featurize")
    if not args.recipes:
        run_engines(spark, args, files, payloads)
        return
    for backbone in backbones(args):
        run_recipes(spark, args, backbone, files, payloads)


if __name__ == "__main__":
    main()
