"""`xray-spark serve` against a real uvicorn server and a bundle built from a real Spark pipeline.

The pipeline is trained here, small: DeepImageFeaturizer (ResNet50, seeded random weights) + a multinomial
logistic regression fitted on 42 real Ozturk images + IndexToString, exactly the shape `train` logs. Its
bundle is served, and every served answer is checked against what Spark's own pipeline says for the same
files (labels equal, probabilities within 1e-4), then bad input of every kind, concurrency, the token rule,
the logs, and that the serving code never imports pyspark.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import select
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ingest_fixtures import _dicom, _jpeg_bytes, _png_bytes, _png_claiming
from serve_utils import free_port, multipart, predict, request, running, wait_up
from xray_spark.errors import UserError
from xray_spark.models import heads_numpy
from xray_spark.models.serving_bundle import (
    META_FILE,
    BundleError,
    BundleMeta,
    bundle_from_pipeline,
    load_bundle,
    write_bundle,
)
from xray_spark.serving.app import Settings, check_settings, create_app, is_loopback
from xray_spark.serving.heatmap import APPROXIMATE, EXACT, GRADIENT, channel_weights, mlp_gradient
from xray_spark.serving.predictor import Predictor
from xray_spark.serving.shift_check import check_shift

REPO = Path(__file__).resolve().parents[1]
LABELS = ("covid", "no_findings", "pneumonia")
TRAIN_PER_CLASS, PARITY_PER_CLASS = 14, 4
PROB_TOL = 1e-4
TOKEN = "serve-test-token-0123456789"
BASELINE_SENTENCE = "The metadata-only baseline scored as well as this model (intervals overlap)."
SECRETS = ("Jane-Doe-Confidential", "DOE^JANE^SECRETNAME", "PID-SECRET-4711")


@dataclass
class Trained:
    bundle: Path
    pipeline: object  # the Spark PipelineModel the bundle was built from
    parity: list[tuple[Path, str]]  # (image, true label)
    spark_rows: dict[str, tuple[str, np.ndarray]]  # file name -> (predicted_label, probability)


def _pick(ozturk_dir: Path) -> tuple[list[tuple[Path, str]], list[tuple[Path, str]]]:
    train, parity = [], []
    for label in LABELS:
        files = sorted((ozturk_dir / label).iterdir())
        train += [(p, label) for p in files[:TRAIN_PER_CLASS]]
        parity += [(p, label) for p in files[TRAIN_PER_CLASS:TRAIN_PER_CLASS + PARITY_PER_CLASS]]
    return train, parity


@pytest.fixture(scope="module")
def trained(spark, ozturk_dir: Path, weights_cache, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A real PipelineModel ([featurizer, scaler + LR, IndexToString]) and its serving bundle."""
    from pyspark.sql import functions as F

    from xray_spark.features.featurizer import DeepImageFeaturizer
    from xray_spark.models.frames import LABEL, task_frame
    from xray_spark.models.pipeline import full_pipeline
    from xray_spark.tasks import get_task
    from xray_spark.train.heads import build_head, get_head, head_params

    train, parity = _pick(ozturk_dir)
    task = get_task("multiclass")
    featurizer = DeepImageFeaturizer(inputCol="content", outputCol="features", modelName="ResNet50",
                                     weights="none")
    rows = spark.createDataFrame([(p.name, label, p.read_bytes()) for p, label in train],
                                 ["name", "label", "content"]).repartition(2)
    feats = featurizer.transform(rows).where(F.col("featurize_error").isNull())
    frame = task_frame(feats, task, weighted=False).select("features", LABEL).cache()
    assert frame.count() == len(train)
    spec = get_head("lr")
    estimator, _ = build_head(spec, task.n_classes, 2048, head_params(spec, {"maxIter": 60}, 7))
    pipeline = full_pipeline("ResNet50", "none", estimator.fit(frame), task)
    frame.unpersist()
    held = spark.createDataFrame([(p.name, p.read_bytes()) for p, _ in parity], ["name", "content"])
    out = pipeline.transform(held).select("name", "predicted_label", "probability").collect()
    spark_rows = {r["name"]: (r["predicted_label"], r["probability"].toArray()) for r in out}
    meta = BundleMeta(task="multiclass", model_name="xray-spark-multiclass", model_version="7",
                      model_uri="models:/xray-spark-multiclass/7", baseline_as_good=True,
                      baseline_sentence=BASELINE_SENTENCE)
    folder = bundle_from_pipeline(pipeline, None, tmp_path_factory.mktemp("serve") / "bundle", meta)
    return Trained(folder, pipeline, parity, spark_rows)


@pytest.fixture(scope="module")
def predictor(trained: Trained) -> Predictor:
    loaded = Predictor(load_bundle(trained.bundle))
    loaded.warm_up()
    return loaded


@pytest.fixture(scope="module")
def server(predictor: Predictor):
    with running(create_app(predictor, Settings(max_upload_mb=1, workers=2, queue=32))) as base:
        yield base


# ------------------------------------------------------------------------------------------------ parity


def test_served_answers_equal_the_spark_pipeline(trained: Trained, server: str, evidence) -> None:
    diffs = []
    labels_seen = set()
    for i, (path, _) in enumerate(trained.parity):
        reply = predict(server, path.read_bytes(), form=i % 2 == 0, filename=path.name)
        assert reply.status == 200, reply.body
        body = reply.json()
        spark_label, spark_prob = trained.spark_rows[path.name]
        assert body["label"] == spark_label, path.name
        served = np.array([body["probabilities"][label] for label in LABELS])
        diffs.append(float(np.max(np.abs(served - spark_prob))))
        labels_seen.add(body["label"])
        assert body["score_kind"] == "probability" and body["model_version"] == "7"
        assert body["model_name"] == "xray-spark-multiclass" and len(body["sha256"]) == 64
        # a pipeline without a ShiftModel (a model from before the shift check): the fields are there, null
        assert body["shift_score"] is None and body["in_distribution"] is None, body
        assert body["shift_reasons"] is None
    assert max(diffs) <= PROB_TOL, diffs
    assert len(labels_seen) >= 2  # the comparison is not one constant answer
    engine = predict(server, trained.parity[0][0].read_bytes()).json()["engine"]
    evidence(f"serve parity: {len(diffs)} real images, labels equal to Spark's, max |prob diff| = "
             f"{max(diffs):.2e} (engine {engine})")


def test_serving_featurizer_is_the_batch_featurizer() -> None:
    """Served features come from the very class the Spark UDF runs on executors (one copy, not two)."""
    from xray_spark.features import featurizer, worker
    from xray_spark.serving import predictor

    assert featurizer.WorkerFeaturizer is worker.WorkerFeaturizer is predictor.WorkerFeaturizer


# ------------------------------------------------------------------------------------------- bad input


def _bad_inputs(png: bytes) -> dict[str, tuple[bytes, bool, int, str]]:
    """name -> (body, as multipart, status, error code)."""
    return {
        "empty": (b"", True, 400, "empty_file"),
        "empty_raw": (b"", False, 400, "empty_file"),
        "text": (b"just some text, not an image\n" * 20, True, 415, "not_an_image"),
        "pdf": (b"%PDF-1.4\n1 0 obj << >> endobj\n%%EOF\n", False, 415, "unsupported_format"),
        "truncated": (png[: len(png) // 2], True, 422, "truncated"),
        "bomb_over_decoder_limit": (_png_claiming(11000, 11000), True, 413, "too_large"),
        "bomb_over_pillow_limit": (_png_claiming(60000, 60000), False, 413, "too_large"),
        "dicom_without_pixels": (_dicom(with_pixels=False), True, 422, "dicom_no_pixel_data"),
        "over_upload_limit": (os.urandom(1_200_000), True, 413, "upload_too_large"),
        "over_upload_limit_raw": (os.urandom(1_200_000), False, 413, "upload_too_large"),
    }


def test_bad_input_gets_its_4xx_and_the_server_keeps_serving(trained: Trained, server: str) -> None:
    png = _png_bytes((np.indices((300, 300)).sum(axis=0) % 251).astype(np.uint8))
    for name, (body, form, status, code) in _bad_inputs(png).items():
        reply = predict(server, body, form=form)
        assert reply.status == status, (name, reply.status, reply.body)
        answer = reply.json()
        assert answer["error"] == code and answer["detail"], (name, answer)
        assert request(server, "GET", "/health").status == 200, name
    no_file, hdrs = multipart(png, field="image")
    reply = request(server, "POST", "/predict", no_file, hdrs)
    assert (reply.status, reply.json()["error"]) == (400, "no_file")
    reply = request(server, "POST", "/predict?heatmap=maybe", png)
    assert (reply.status, reply.json()["error"]) == (422, "invalid_request")
    assert predict(server, trained.parity[0][0].read_bytes()).status == 200  # still serving


def test_upload_limit_is_enforced_while_the_body_streams() -> None:
    """A chunked body (no Content-Length to refuse up front) gets its 413 once it passes the limit, while
    the client is still sending: the answer is readable long before the 12.5 MiB body would end."""
    never = _SlowPredictor()  # the limit is enforced before any model: a stand-in is enough
    with running(create_app(never, Settings(max_upload_mb=1))) as base:
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/octet-stream\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
            sent = 0
            for _ in range(200):  # 200 x 64 KiB = 12.5 MiB if the client got to send it all
                chunk = os.urandom(65536)
                try:
                    sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    break
                sent += len(chunk)
                if select.select([sock], [], [], 0.01)[0]:
                    break  # the server has answered
            reply = b""
            while b"upload_too_large" not in reply:
                part = sock.recv(65536)
                if not part:
                    break
                reply += part
        assert reply.startswith(b"HTTP/1.1 413") and b"upload_too_large" in reply, reply[:300]
        assert sent < 4 * 1024 * 1024, sent  # refused near the 1 MiB limit, not at the end of the body
        assert request(base, "GET", "/health").status == 200


def test_dicom_is_served(server: str, ozturk_dir: Path) -> None:
    gray = np.asarray(Image.open(sorted((ozturk_dir / "no_findings").iterdir())[0]).convert("L"))
    reply = predict(server, _xray_dicom(gray), filename="scan.dcm", query="?heatmap=true")
    assert reply.status == 200, reply.body
    body = reply.json()
    assert body["label"] in LABELS and body["heatmap_method"] == EXACT and body["heatmap_exact"] is True
    assert Image.open(io.BytesIO(base64.b64decode(body["heatmap_png"]))).size == (224, 224)


def _xray_dicom(gray: np.ndarray) -> bytes:
    """A real radiograph's pixels as a 12-bit MONOCHROME2 DICOM carrying identifying header values."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName, ds.PatientID = "DX", SECRETS[1], SECRETS[2]
    arr = gray.astype(np.uint16) * 16
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = arr.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------- concurrency


def test_sixteen_concurrent_clients(trained: Trained, server: str, evidence) -> None:
    images = [p.read_bytes() for p, _ in trained.parity[:4]]
    expected = {i: predict(server, img).json()["label"] for i, img in enumerate(images)}
    t0 = time.perf_counter()

    def one(k: int) -> tuple[int, int, str | None]:
        reply = predict(server, images[k % len(images)], form=k % 3 != 0)
        return k, reply.status, reply.json().get("label") if reply.status == 200 else reply.body.decode()

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(one, range(200)))
    failures = [r for r in results if r[1] != 200 or r[2] != expected[r[0] % len(images)]]
    assert not failures, failures[:5]
    evidence(f"serve: 16 concurrent clients, 200 requests, 0 errors in {time.perf_counter() - t0:.1f} s")


class _SlowPredictor:
    """Just enough of a Predictor for the admission test: every prediction takes a while."""

    engine = "fake"

    def __init__(self) -> None:
        self.gate = threading.Event()

    def predict(self, data: bytes, heatmap: bool = False):
        self.gate.wait(30)
        from xray_spark.serving.predictor import Prediction

        return Prediction("covid", {"covid": 1.0}, {"covid": 1.0}, "probability", "0" * 64, "fake", "m", "1")


def test_a_full_queue_answers_503_and_recovers() -> None:
    slow = _SlowPredictor()
    with running(create_app(slow, Settings(workers=1, queue=1))) as base:
        with ThreadPoolExecutor(max_workers=2) as pool:
            pending = [pool.submit(predict, base, b"x") for _ in range(2)]
            deadline = time.time() + 30
            while request(base, "GET", "/health").json()["in_flight"] < 2 and time.time() < deadline:
                time.sleep(0.05)
            busy = predict(base, b"x")
            assert busy.status == 503 and busy.json()["error"] == "busy" and busy.headers["retry-after"]
            slow.gate.set()
            assert [f.result().status for f in pending] == [200, 200]
        assert predict(base, b"x").status == 200


def test_cors_is_off_unless_an_origin_is_named() -> None:
    preflight = {"Origin": "https://viewer.example.org", "Access-Control-Request-Method": "POST"}
    with running(create_app(_SlowPredictor(), Settings())) as base:
        reply = request(base, "OPTIONS", "/predict", headers=preflight)
        assert "access-control-allow-origin" not in reply.headers
    allowed = Settings(cors_origins=("https://viewer.example.org",))
    with running(create_app(_SlowPredictor(), allowed)) as base:
        reply = request(base, "OPTIONS", "/predict", headers=preflight)
        assert reply.headers.get("access-control-allow-origin") == "https://viewer.example.org"
        other = request(base, "OPTIONS", "/predict", headers={**preflight, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


# --------------------------------------------------------------------------------------- token and bind


def test_token_rule() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.org")
    check_settings(Settings(host="127.0.0.1"))
    check_settings(Settings(host="0.0.0.0", token=TOKEN))
    with pytest.raises(UserError, match="token"):
        check_settings(Settings(host="0.0.0.0"))
    with pytest.raises(UserError, match="at least 16"):
        check_settings(Settings(host="0.0.0.0", token="short"))
    for bad in (Settings(workers=0), Settings(port=70000), Settings(max_upload_mb=0), Settings(queue=-1),
                Settings(cors_origins=("evil",))):
        with pytest.raises(UserError):
            check_settings(bad)


def test_token_is_checked_on_predict(predictor: Predictor, trained: Trained) -> None:
    image = trained.parity[0][0].read_bytes()
    with running(create_app(predictor, Settings(token=TOKEN))) as base:
        assert predict(base, image).status == 401
        wrong = predict(base, image, headers={"Authorization": "Bearer nope-nope-nope-nope"})
        assert wrong.status == 401 and wrong.json()["error"] == "unauthorized"
        assert wrong.headers["www-authenticate"] == "Bearer"
        assert predict(base, image, headers={"Authorization": f"Bearer {TOKEN}"}).status == 200
        assert request(base, "GET", "/health").json()["auth_required"] is True


def test_cli_refuses_a_public_bind_without_token_and_bad_arguments(trained: Trained, monkeypatch, capsys,
                                                                   tmp_path: Path) -> None:
    from xray_spark.cli import main

    monkeypatch.delenv("XRAY_SPARK_SERVE_TOKEN", raising=False)
    cases = [
        (["serve", "--bundle", str(trained.bundle), "--host", "0.0.0.0"], "token"),
        (["serve", "--bundle", str(trained.bundle), "--workers", "0"], "--workers"),
        (["serve", "--bundle", str(trained.bundle.parent / "nothing-here")], "not a serving bundle"),
        (["serve", "--model", "models:/xray-spark-binary@champion", "--tracking-uri",
          f"sqlite:///{tmp_path}/none.db"], "does not exist"),  # never creates an empty store
        (["serve", "--model", "no-such-folder"], "expected a serving bundle folder"),
    ]
    for argv, needle in cases:
        t0 = time.perf_counter()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], (argv, err)
        assert time.perf_counter() - t0 < 10  # refused before any model loads
    with pytest.raises(SystemExit) as exc:
        main(["serve"])  # neither --bundle nor --model: argparse, one line
    assert exc.value.code == 2


# ---------------------------------------------------------------------------------- pages, docs, version


def test_page_docs_and_version(server: str) -> None:
    page = request(server, "GET", "/")
    assert page.status == 200 and b'id="drop"' in page.body and b"predict?heatmap=true" in page.body
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert request(server, "GET", "/docs").status == 200
    spec = request(server, "GET", "/openapi.json").json()
    post = spec["paths"]["/predict"]["post"]
    assert "multipart/form-data" in post["requestBody"]["content"]
    answer = post["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    fields = spec["components"]["schemas"][answer]["properties"]
    assert {"label", "probabilities", "shift_score", "in_distribution", "shift_reasons"} <= set(fields)
    assert "image/png" in post["responses"]["200"]["content"]  # the heatmap answer is still documented
    info = request(server, "GET", "/version").json()
    assert info["model"]["version"] == "7" and info["model"]["labels"] == list(LABELS)
    assert info["baseline_as_good"] is True and info["baseline_sentence"] == BASELINE_SENTENCE
    assert {"numpy", "fastapi", "uvicorn", "keras"} <= set(info["libraries"])
    missing = request(server, "GET", "/nope")
    assert missing.status == 404 and missing.json()["error"] == "http_error"


def test_heatmap_as_json_and_as_png(server: str, trained: Trained) -> None:
    image = trained.parity[1][0].read_bytes()
    body = predict(server, image, query="?heatmap=true").json()
    assert body["heatmap_method"] == EXACT
    png = base64.b64decode(body["heatmap_png"])
    assert png.startswith(b"\x89PNG") and Image.open(io.BytesIO(png)).size == (224, 224)
    raw = predict(server, image, headers={"Accept": "image/png"})
    assert raw.status == 200 and raw.headers["content-type"] == "image/png"
    assert raw.body.startswith(b"\x89PNG")
    assert raw.headers["x-label"] == body["label"] and raw.headers["x-heatmap-method"] == EXACT
    assert raw.headers["cache-control"] == "no-store"
    plain = predict(server, image).json()
    assert "heatmap_png" not in plain and plain["label"] == body["label"]


# ------------------------------------------------------------------------------------ heatmap weights


def _scaler(d: int, rng) -> heads_numpy.Scaler:
    return heads_numpy.Scaler(rng.normal(size=d), np.abs(rng.normal(size=d)) + 0.3)


def test_linear_class_maps_are_exact() -> None:
    """For linear heads, weights . (f1 - f2) is exactly the change of the class's score relative to the other
    classes: the map decomposes the score (what CAM claims)."""
    rng = np.random.default_rng(3)
    d = 12
    heads = [
        heads_numpy.SparkFreeHead(heads_numpy.Logistic(rng.normal(size=(3, d)), rng.normal(size=3), True),
                                  list(LABELS), d, _scaler(d, rng)),
        heads_numpy.SparkFreeHead(heads_numpy.Logistic(rng.normal(size=(1, d)), rng.normal(size=1), False),
                                  list(LABELS[:2]), d, _scaler(d, rng)),
        heads_numpy.SparkFreeHead(heads_numpy.LinearSVC(rng.normal(size=d), 0.3), list(LABELS[:2]), d, None),
    ]
    f1, f2 = rng.normal(size=d) * 3, rng.normal(size=d) * 3
    for head in heads:
        raw1, raw2 = (head.classifier.raw(head.scaler.apply(f[None]) if head.scaler else f[None])[0]
                      for f in (f1, f2))
        for c in range(head.classifier.n_classes):
            weights, method = channel_weights(head, f1, c)
            assert method == EXACT
            rel1, rel2 = raw1[c] - raw1.mean(), raw2[c] - raw2.mean()
            np.testing.assert_allclose(weights @ (f1 - f2), rel1 - rel2, rtol=1e-9, atol=1e-9)


def test_mlp_gradient_matches_finite_differences() -> None:
    rng = np.random.default_rng(5)
    layers = [7, 5, 4, 3]
    n = sum(i * o + o for i, o in zip(layers[:-1], layers[1:], strict=True))
    mlp = heads_numpy.MLP(layers, rng.normal(size=n))
    head = heads_numpy.SparkFreeHead(mlp, list(LABELS), 7, _scaler(7, rng))
    x = rng.normal(size=7)
    for c in range(3):
        grad = mlp_gradient(mlp, head, x, c)
        def prob(v: np.ndarray, c: int = c) -> float:
            return float(head.predict_indices(v)[1][0, c])

        numeric = np.array([(prob(x + e) - prob(x - e)) / 2e-6 for e in np.eye(7) * 1e-6])
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8)
        assert channel_weights(head, x, c)[1] == GRADIENT


def test_tree_maps_are_labelled_approximate() -> None:
    tree = heads_numpy.DecisionTree(2, np.array([3, -1, -1]), np.array([0.5, 0, 0]), np.array([1, -1, -1]),
                                    np.array([2, -1, -1]), np.array([[0, 0], [5, 1], [1, 5]], float),
                                    np.array([0]), np.array([1.0]))
    head = heads_numpy.SparkFreeHead(tree, list(LABELS[:2]), 6)
    weights, method = channel_weights(head, np.zeros(6), 1)
    assert method == APPROXIMATE and weights.argmax() == 3 and weights.sum() == pytest.approx(1.0)
    importances = np.array([[0.1, 0.0, 0.0, 0.2, 0.7, 0.0]])
    assert channel_weights(head, np.zeros(6), 0, importances)[0].argmax() == 4


# ------------------------------------------------------------------------------------------------ bundle


def test_bundle_round_trip_and_refusals(trained: Trained, tmp_path: Path) -> None:
    from xray_spark.features.weights import weights_fingerprint

    bundle = load_bundle(trained.bundle)
    assert bundle.backbone == "ResNet50" and bundle.labels == list(LABELS)
    assert bundle.weights_fingerprint == weights_fingerprint("ResNet50", "none")
    assert bundle.meta.model_version == "7" and bundle.meta.baseline_as_good is True
    assert bundle.meta.engine == "auto" and bundle.importances is None
    copy = write_bundle(tmp_path / "copy", head=bundle.head, backbone="ResNet50",
                        weights_file=bundle.weights_path, weights_fingerprint=bundle.weights_fingerprint,
                        meta={"task": "multiclass", "run_id": "abc"}, importances=np.ones(2048))
    again = load_bundle(copy)
    assert again.meta.extra == {"run_id": "abc"} and again.importances.shape == (1, 2048)
    with pytest.raises(UserError, match="not empty"):
        write_bundle(copy, head=bundle.head, backbone="ResNet50", weights_file=bundle.weights_path,
                     weights_fingerprint="x")
    with pytest.raises(UserError, match="2048"):
        write_bundle(tmp_path / "wrong", head=bundle.head, backbone="VGG16", weights_file=bundle.weights_path,
                     weights_fingerprint="x")
    doc = json.loads((copy / META_FILE).read_text())
    (copy / META_FILE).write_text(json.dumps({**doc, "format_version": 99}))
    with pytest.raises(BundleError, match="version 99"):
        load_bundle(copy)
    (copy / META_FILE).write_text(json.dumps(doc))
    weights = copy / "weights" / bundle.weights_path.name
    weights.unlink()  # a hard link to the original: replace it, never write through it
    weights.write_bytes(b"not the weights")
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(copy)


def _toy_reference(d: int = 2048):
    """A shift reference of PNG, 8-bit grey, 320 px training files (features: any direction is fine)."""
    from xray_spark.models.shift import Reference

    logs = {"short_side": math.log(320), "long_side": math.log(320), "file_size": math.log(20_000)}
    return Reference(mean=np.zeros(d), components=np.eye(2, d), variances=np.ones(2),
                     shares={"format": {"PNG": 1.0}, "mode": {"L": 1.0}, "bit_depth": {"8": 1.0}},
                     centers=logs, spreads={"short_side": 0.1, "long_side": 0.1, "file_size": 5.0},
                     scales={"features_pca": 1e6, "features_residual": 10.0}, threshold=1.0, n_train=100)


def test_shift_check_says_why_and_the_bundle_carries_its_reference(trained: Trained, tmp_path: Path) -> None:
    ref = _toy_reference()
    features = np.random.default_rng(0).normal(size=2048)
    grey = _png_bytes(np.full((320, 320), 90, np.uint8))
    inside = check_shift(ref, grey, features)
    assert inside.in_distribution is True and inside.score is not None and inside.reasons == ()
    photo = _jpeg_bytes(np.full((900, 1200, 3), 90, np.uint8))
    outside = check_shift(ref, photo, features)
    assert outside.in_distribution is False and outside.score > ref.threshold
    assert outside.reasons == ("long side 1200 px (training median 320 px)",  # the 3 largest, largest first
                               "short side 900 px (training median 320 px)",
                               "colour mode RGB (0% of training images)"), outside.reasons
    assert check_shift(None, photo, features).score is None  # a bundle without a reference

    bundle = load_bundle(trained.bundle)
    assert bundle.shift is None  # trained without a ShiftModel stage
    folder = write_bundle(tmp_path / "shifted", head=bundle.head, backbone="ResNet50",
                          weights_file=bundle.weights_path, weights_fingerprint=bundle.weights_fingerprint,
                          shift_reference=ref.to_text())
    assert json.loads((folder / META_FILE).read_text())["shift_reference"] == "shift_reference.txt"
    again = load_bundle(folder)
    assert again.shift is not None and again.shift.threshold == 1.0 and again.shift.shares == ref.shares
    (folder / "shift_reference.txt").write_text("not a reference")
    with pytest.raises(BundleError, match="shift_reference.txt is unreadable"):
        load_bundle(folder)
    (folder / "shift_reference.txt").unlink()
    with pytest.raises(BundleError, match="shift reference shift_reference.txt is missing"):
        load_bundle(folder)


def test_bundle_from_pipeline_with_a_given_weights_file(trained: Trained, tmp_path: Path) -> None:
    from xray_spark.features.weights import file_digest
    from xray_spark.models.serving_bundle import _fingerprint_of

    weights = load_bundle(trained.bundle).weights_path
    folder = bundle_from_pipeline(trained.pipeline, weights, tmp_path / "b", {"model_version": "8"})
    again = load_bundle(folder)
    assert again.weights_fingerprint == load_bundle(trained.bundle).weights_fingerprint
    assert again.meta.model_version == "8" and again.meta.engine == "auto"
    assert _fingerprint_of("ResNet50", "/w/mine.weights.h5", weights) == f"file:{file_digest(weights)}"
    with pytest.raises(UserError, match="not the published ImageNet"):
        _fingerprint_of("ResNet50", "imagenet", weights)


# --------------------------------------------------------------------------- the real CLI process, logs


def _start_cli(bundle: Path, port: int, log_path: Path, env: dict[str, str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "xray_spark", "serve", "--bundle", str(bundle), "--port", str(port),
           "--threads", "1"]
    return subprocess.Popen(cmd, stdout=log_path.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=REPO)


def _children(pid: int) -> list[str]:
    """Command names of every descendant process of `pid` (Linux /proc)."""
    names, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)
                if int(fields[1].split()[1]) == parent:
                    names.append(fields[0].split("(", 1)[1])
                    todo.append(int(stat.parent.name))
            except (OSError, ValueError, IndexError):
                continue
    return names


@pytest.mark.e2e
def test_cli_server_logs_no_names_and_starts_no_jvm(trained: Trained, ozturk_dir: Path,
                                                    tmp_path: Path) -> None:
    port, log_path = free_port(), tmp_path / "serve.log"
    env = dict(os.environ)  # the module's weights cache: its OpenVINO IR is reused, not converted again
    env.pop("XRAY_SPARK_SERVE_TOKEN", None)
    proc = _start_cli(trained.bundle, port, log_path, env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_up(base, proc, log_path)
        image = trained.parity[2][0]
        ok = predict(base, image.read_bytes(), filename=f"{SECRETS[0]}-{image.name}")
        assert ok.status == 200
        gray = np.asarray(Image.open(sorted((ozturk_dir / "covid").iterdir())[5]).convert("L"))
        dicom = predict(base, _xray_dicom(gray), filename=f"{SECRETS[0]}.dcm")
        assert dicom.status == 200
        bad = predict(base, b"text, not an image", filename=f"{SECRETS[0]}.png")
        assert bad.status == 415
        assert "java" not in _children(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    text = log_path.read_text()
    assert f"sha256={ok.json()['sha256']} outcome=ok" in text
    assert f"sha256={dicom.json()['sha256']} outcome=ok" in text and "outcome=not_an_image" in text
    for secret in (*SECRETS, image.name, image.stem):
        assert secret not in text, secret
    assert "latency_ms=" in text


@pytest.mark.e2e
def test_serving_never_imports_pyspark(trained: Trained, tmp_path: Path) -> None:
    """Load the bundle, build the app, predict: pyspark must not be in sys.modules at any point."""
    image = trained.parity[0][0]
    code = (
        "import sys, json\n"
        "from xray_spark.serving.app import Settings, create_app\n"
        "from xray_spark.serving.run import serve_command\n"
        "from xray_spark.models.serving_bundle import load_bundle\n"
        "from xray_spark.serving.predictor import Predictor\n"
        f"p = Predictor(load_bundle({str(trained.bundle)!r}))\n"
        "create_app(p, Settings())\n"
        f"r = p.predict(open({str(image)!r}, 'rb').read(), heatmap=True)\n"
        "mods = sorted(m for m in sys.modules if m == 'pyspark' or m.startswith(('pyspark.', 'py4j')))\n"
        "print(json.dumps({'label': r.label, 'spark': mods}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["spark"] == [] and result["label"] in LABELS
