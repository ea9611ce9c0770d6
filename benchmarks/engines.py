"""Engine throughput: Keras fp32 vs OpenVINO fp32 vs OpenVINO bf16, bare and inside DeepImageFeaturizer.

For each backbone and engine, side by side in one run on the same images (weights none: same compute as
ImageNet weights):
  bare   the engine in this process on already-decoded uint8 arrays (preprocess_input included), batches of
         --batch-size, threads = the cores Spark uses (TensorFlow intra-op / OpenVINO INFERENCE_NUM_THREADS);
  spark  DeepImageFeaturizer(engine=..., precision=...) from file bytes (binaryFile folder) in Spark
         local[cores]: one thread per Python worker, decode included.
Every variant is warmed up (models loaded, IR converted and cached), then `--repeat` interleaved rounds run,
the fastest kept. Per line: `img_per_s=` (bare), `ratio_vs_keras_fp32=` (bare, vs bare Keras fp32),
`cosine_min=` (per-image cosine vs bare Keras fp32 features, the worst image), `spark_img_per_s=`,
`spark_over_bare=` (featurizer img/s over the same engine's bare img/s), and `ran=`: the engine label the
Spark workers reported (OpenVINO runs fp32 where the CPU has no native bf16: then the bf16 line means
nothing, and the output says so).

    python benchmarks/engines.py --data ../shared/data/ozturk --limit 256 --batch-size 32
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from common import setup_logging  # benchmarks/ is on sys.path when run as a script
from featurize import pick_files

log = logging.getLogger("benchmarks.engines")
VARIANTS = (("keras", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"))
FLAGS_OF_INTEREST = ("amx_bf16", "avx512_bf16", "avx512f")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def cosine_min(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--backbones", default="ResNet50,InceptionV3")
    p.add_argument("--limit", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeat", type=int, default=1, help="interleaved timed rounds after the warm-up")
    p.add_argument("--master", default="local[2]")
    p.add_argument("--conf", action="append", default=[], metavar="K=V", help="extra Spark conf, repeatable")
    return p.parse_args(argv)


def bench_backbone(spark, name: str, payloads: list[bytes], staged: Path, warm: Path, parts: int, cores: int,
                   batch_size: int, rounds: int, native: bool) -> list[str]:
    """Warm up, then time every variant bare and in Spark, interleaved; one output line per variant."""
    from xray_spark.data.decode import decode_for_model
    from xray_spark.features import engines
    from xray_spark.features.backbones import get_backbone
    from xray_spark.features.featurizer import DeepImageFeaturizer
    from xray_spark.features.weights import resolve_weights, weights_cache_dir

    bb = get_backbone(name)
    resolved = resolve_weights(bb.name, "none", spark=spark)
    x = np.stack([decode_for_model(b, bb.input_size) for b in payloads])
    n = len(x)
    bare: dict[tuple[str, str], engines.Engine] = {}
    spark_fns: dict[tuple[str, str], Callable[[], None]] = {}
    ran: dict[tuple[str, str], str] = {}
    for engine, precision in VARIANTS:
        bare[engine, precision] = engines.load_engine(
            bb.name, str(resolved.local_path), engine=engine, precision=precision,
            fingerprint=resolved.fingerprint, cache_dir=weights_cache_dir(), threads=cores)
        bare[engine, precision](x[:batch_size])  # warm-up: the first inference allocates
        feat = DeepImageFeaturizer(modelName=bb.name, weights="none", engine=engine, precision=precision,
                                   batchSize=batch_size, engineCol="engine")
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
    keras_ips = n / best_bare["keras", "fp32"]
    lines = []
    for v in VARIANTS:
        ips, spark_ips = n / best_bare[v], n / best_spark[v]
        note = " bf16_not_native=emulated_or_ignored_meaningless" if v[1] == "bf16" and not native else ""
        lines.append(
            f"backbone={bb.name} engine={v[0]}:{v[1]} ran={ran[v]} bare_ran={bare[v].label} "
            f"img_per_s={ips:.2f} ratio_vs_keras_fp32={ips / keras_ips:.3f} "
            f"cosine_min={cosine_min(feats[v], feats['keras', 'fp32']):.6f} "
            f"spark_img_per_s={spark_ips:.2f} spark_over_bare={spark_ips / ips:.3f}{note}")
        log.info(lines[-1])
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging()

    from xray_spark.config import load_config
    from xray_spark.features import engines
    from xray_spark.features.cache import IMAGES_PER_TASK
    from xray_spark.features.worker import configure_tf_threads
    from xray_spark.session import get_spark, parse_conf_pairs
    from xray_spark.spark_io import balanced_partitions

    flags = engines.cpu_flags()
    native = engines.has_native_bf16(flags)
    ov, error = engines.import_openvino()
    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES") if ov else []
    files = pick_files(args.data, args.limit)
    payloads = [f.read_bytes() for f in files]
    n = len(files)
    spark = get_spark(load_config(), master=args.master, conf=parse_conf_pairs(args.conf),
                      app_name="bench-engines")
    cores = spark.sparkContext.defaultParallelism
    configure_tf_threads(cores)  # before TensorFlow starts: the bare engines use the cores Spark uses
    parts = balanced_partitions(n, cores, IMAGES_PER_TASK)
    staged = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    warm = Path(tempfile.mkdtemp(prefix="bench-engines-warm-"))
    for i, f in enumerate(files):
        shutil.copyfile(f, staged / f"{i:05d}{f.suffix.lower()}")
        if i < 2 * args.batch_size:
            shutil.copyfile(f, warm / f"{i:05d}{f.suffix.lower()}")

    lines: list[str] = []
    try:
        for name in [b.strip() for b in args.backbones.split(",") if b.strip()]:
            lines += bench_backbone(spark, name, payloads, staged, warm, parts, cores, args.batch_size,
                                    max(1, args.repeat), native)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
        shutil.rmtree(warm, ignore_errors=True)

    have = {f: f in flags for f in FLAGS_OF_INTEREST}
    print(f"\ncpu_model={cpu_model()!r} cores_used={cores} "
          + " ".join(f"{f}={'yes' if v else 'no'}" for f, v in have.items())
          + f" openvino={ov.__version__ if ov else error} openvino_cpu_capabilities={','.join(caps)}")
    print(f"images={n} batch={args.batch_size} partitions={parts} rounds={max(1, args.repeat)} weights=none "
          f"load_now={os.getloadavg()[0]:.2f}")
    if not native:
        print("bf16 is NOT native on this CPU (no amx_bf16 / avx512_bf16): OpenVINO ignores or emulates the "
              "bf16 hint, so the openvino:bf16 figures below say nothing about bf16 (see ran=)")
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
