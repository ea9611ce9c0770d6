"""Latency and throughput of `xray-spark serve`, beside the featurizer's batch speed on the same machine.

    python benchmarks/serve.py [--bundle DIR] [--data ../shared/data/ozturk] [--requests 100]

Starts the real CLI server (`python -m xray_spark serve`) on a free port, sends `--requests` uploads
(multipart, real images) at 1 and at 8 concurrent clients, and prints p50/p95 latency and requests/s for
each; then, in this process with the server stopped, times `WorkerFeaturizer.featurize_bytes` on a batch of
32 of the same images with the same engine and thread count (what one Spark task does per batch), and
prints the CPU. Without --bundle it builds one with ResNet50's seeded random weights and a numpy logistic
head: the time is the backbone's, the head's weights do not change it.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from common import cpu_line  # benchmarks/ is on sys.path when run as a script
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_bundle(folder: Path) -> Path:
    from xray_spark.features.weights import resolve_weights
    from xray_spark.models.heads_numpy import Logistic, SparkFreeHead
    from xray_spark.models.serving_bundle import BundleMeta, write_bundle

    weights = resolve_weights("ResNet50", "none")
    rng = np.random.default_rng(0)
    head = SparkFreeHead(Logistic(rng.normal(size=(1, 2048)) * 0.05, np.array([0.0]), False),
                         ["covid", "no_findings"], 2048)
    return write_bundle(folder, head=head, backbone="ResNet50", weights_file=weights.local_path,
                        weights_fingerprint=weights.fingerprint,
                        meta=BundleMeta(task="binary", model_name="benchmark", model_version="0"))


def load_images(data: Path | None, n: int) -> list[bytes]:
    if data is not None and data.is_dir():
        files = sorted(p for p in data.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        step = max(1, len(files) // n)
        return [p.read_bytes() for p in files[::step][:n]]
    out = []  # synthetic fallback: 1024x1024 noise PNGs, the size of the NIH images
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (1024, 1024), np.uint8)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def post(port: int, data: bytes) -> float:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"\r\n\r\n".encode()
            + data + f"\r\n--{boundary}--\r\n".encode())
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    conn.request("POST", "/predict", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    resp = conn.getresponse()
    resp.read()
    conn.close()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}")
    return time.perf_counter() - t0


def measure(port: int, images: list[bytes], clients: int, n: int) -> str:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        latencies = list(pool.map(lambda k: post(port, images[k % len(images)]), range(n)))
    wall = time.perf_counter() - t0
    ms = np.array(latencies) * 1000
    return (f"serve, {clients} concurrent client(s): {n} requests, p50 {np.percentile(ms, 50):.0f} ms, "
            f"p95 {np.percentile(ms, 95):.0f} ms, {n / wall:.1f} requests/s")


def wait_up(port: int, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit("the server did not come up")


def featurizer_speed(bundle_dir: Path, images: list[bytes], engine: str | None, reps: int = 3) -> str:
    from xray_spark.features.worker import WorkerFeaturizer
    from xray_spark.models.serving_bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    feat = WorkerFeaturizer(bundle.backbone, "", str(bundle.weights_path),
                            engine=engine or bundle.meta.engine, fingerprint=bundle.weights_fingerprint)
    batch = np.array([images[i % len(images)] for i in range(32)], dtype=object)
    feat.featurize_bytes(batch[:4])  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        feat.featurize_bytes(batch)
        times.append(time.perf_counter() - t0)
    best = statistics.median(times)
    return (f"featurizer, batch of 32 (WorkerFeaturizer.featurize_bytes, {feat.engine.label}, "
            f"{os.environ['XRAY_SPARK_TF_THREADS']} threads): {32 / best:.1f} images/s "
            f"({best:.2f} s per batch, median of {reps})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="a serving bundle (default: build a ResNet50 one)")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "ozturk")
    parser.add_argument("--requests", type=int, default=100, help="requests per concurrency level")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--engine", default=None, help="auto | keras | openvino (default: the bundle's)")
    args = parser.parse_args()
    threads = str(os.cpu_count() or 1)
    os.environ["XRAY_SPARK_TF_THREADS"] = threads
    print(cpu_line(), flush=True)
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        bundle = args.bundle or make_bundle(Path(tmp) / "bundle")
        images = load_images(args.data, 32)
        port = free_port()
        cmd = [sys.executable, "-m", "xray_spark", "serve", "--bundle", str(bundle), "--port", str(port),
               "--workers", str(args.workers), "--threads", threads]
        if args.engine:
            cmd += ["--engine", args.engine]
        log = Path(tmp) / "serve.log"
        proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        try:
            wait_up(port, proc)
            for k in range(5):
                post(port, images[k])
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", "/health")
            engine = json.loads(conn.getresponse().read())["engine"]
            print(f"server: xray-spark serve --workers {args.workers} --threads {threads}, ResNet50, "
                  f"engine {engine}, {len(images)} distinct real images", flush=True)
            for clients in (1, 8):
                print(measure(port, images, clients, args.requests), flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        print(featurizer_speed(bundle, images, args.engine), flush=True)


if __name__ == "__main__":
    main()
