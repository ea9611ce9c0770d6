"""Feature cache: first run computes, second run computes nothing, new images are appended as new parts."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("weights_cache")


def _images_df(spark, payloads: list[tuple[str, bytes]]):
    rows = [(hashlib.sha256(b).hexdigest(), bytearray(b), p) for p, b in payloads]
    return spark.createDataFrame(rows, "sha256 string, content binary, path string")


@pytest.fixture(scope="module")
def payloads(ozturk_dir: Path) -> list[tuple[str, bytes]]:
    files = sorted((ozturk_dir / "covid").iterdir())[:4] + sorted((ozturk_dir / "pneumonia").iterdir())[:4]
    return [(str(p), p.read_bytes()) for p in files]


def test_second_run_computes_nothing_and_new_images_are_appended(spark, payloads, tmp_path, caplog,
                                                                 monkeypatch):
    from xray_spark.features.cache import cache_path, featurize_to_cache, featurize_to_cache_run
    from xray_spark.features.featurizer import DeepImageFeaturizer

    caplog.set_level(logging.INFO, logger="xray_spark")  # the cache and its progress logger (spark_io)
    model_calls: list[int] = []  # one entry per featurizer.transform: proof of (no) featurizing, not a timing
    transform = DeepImageFeaturizer.transform

    def counting_transform(self, dataset, params=None):
        model_calls.append(1)
        return transform(self, dataset, params)

    monkeypatch.setattr(DeepImageFeaturizer, "transform", counting_transform)
    cache_dir = str(tmp_path / "features")
    first_batch = payloads[:6] + [("dup/copy.png", payloads[0][1]), ("bad/x.png", b"not an image at all")]
    images = _images_df(spark, first_batch)

    df1, run1 = featurize_to_cache_run(spark, images, "ResNet50", "none", cache_dir, batch_size=8)
    rows1 = df1.collect()
    assert len(model_calls) == 1
    assert (run1.requested, run1.computed, run1.failed) == (7, 7, 1)  # 6 images + 1 bad; the copy is one sha
    assert len(rows1) == 7  # one row per content: the copy under a second path shares its row
    # progress: rows incl. the copy
    assert any("featurize ResNet50: 8/8 images" in m for m in caplog.messages)
    bad_sha = hashlib.sha256(b"not an image at all").hexdigest()
    by_sha = {r.sha256: r for r in rows1}
    assert by_sha[bad_sha].features is None and by_sha[bad_sha].featurize_error.startswith("not_an_image")
    good = [r for r in rows1 if r.sha256 != bad_sha]
    assert {len(r.features) for r in good} == {2048} and {r.featurize_error for r in good} == {None}
    assert {(r.backbone, r.weights_fingerprint) for r in rows1} == {("ResNet50", run1.fingerprint)}
    assert run1.fingerprint.startswith("none:seed=0:keras=")

    folder = Path(cache_path(cache_dir, "ResNet50", run1.fingerprint, run1.precision))
    assert run1.precision in ("fp32", "bf16")  # engine 'auto''s on this CPU, decided once on the driver
    assert folder.name == "f32" and folder.parent.name == run1.precision
    assert folder.parent.parent.parent.name == "ResNet50" and ":" not in folder.parent.parent.name
    assert {r.engine for r in rows1} == {f"openvino:{run1.precision}", None}  # None: the undecodable row
    parts1 = {p.name: p.stat().st_mtime_ns for p in folder.glob("part-*.parquet")}
    assert parts1 and not list(folder.glob("_staging-*"))

    assert {f.dataType.simpleString() for f in df1.sparkSession.read.parquet(str(folder)).schema
            if f.name == "features"} == {"array<float>"}  # stored as float32, handed out as vectors

    caplog.clear()
    df2, run2 = featurize_to_cache_run(spark, images, "ResNet50", "none", cache_dir, batch_size=8)
    rows2 = df2.collect()
    assert len(model_calls) == 1, "the second run must not featurize again"
    assert run2.computed == 0
    assert any("nothing to compute" in m for m in caplog.messages)
    assert {p.name for p in folder.glob("part-*.parquet")} == set(parts1)
    a = {r.sha256: r.features for r in rows1 if r.features is not None}
    b = {r.sha256: r.features for r in rows2 if r.features is not None}
    assert a.keys() == b.keys() and all(np.array_equal(a[k].toArray(), b[k].toArray()) for k in a)

    more = _images_df(spark, payloads)  # 2 new images
    df3 = featurize_to_cache(spark, more, "ResNet50", "none", cache_dir, batch_size=8, progress=False)
    assert df3.count() == len(payloads)
    assert len(model_calls) == 2  # one featurizer pass, for the 2 new images only
    assert any("2 of 8 images missing" in m for m in caplog.messages)
    parts3 = {p.name: p.stat().st_mtime_ns for p in folder.glob("part-*.parquet")}
    assert {k: parts3[k] for k in parts1} == parts1  # old part files untouched
    assert len(parts3) > len(parts1)
    stored = df3.sparkSession.read.parquet(str(folder))
    assert stored.count() == 9 and stored.select("sha256").distinct().count() == 9


def test_requires_sha256_and_content(spark, tmp_path):
    from xray_spark.errors import UserError
    from xray_spark.features.cache import featurize_to_cache

    df = spark.createDataFrame([("a",)], "path string")
    with pytest.raises(UserError, match="sha256"):
        featurize_to_cache(spark, df, "ResNet50", "none", str(tmp_path))
