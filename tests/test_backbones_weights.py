"""Weights resolution: download once from a local HTTP server, verify, refuse corrupt files, offline errors,
user files (local and through Hadoop FS), and bit-identical seeded random init."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import pytest

from xray_spark.errors import UserError
from xray_spark.features import backbones, weights


@contextlib.contextmanager
def overridden(name: str, **changes: Any) -> Iterator[backbones.Backbone]:
    """Temporarily replace fields of a registry entry (e.g. the published hash of a test file).

    Only the driver reads these fields (weights resolution); executors never consult the hash.
    """
    key = name.strip().lower()
    original = backbones.get_backbone(name)
    backbones._registry[key] = dataclasses.replace(original, **changes)
    try:
        yield backbones._registry[key]
    finally:
        backbones._registry[key] = original


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("XRAY_SPARK_CACHE", str(path))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))  # never pick up a real ~/.keras file
    return path


@pytest.fixture(scope="module")
def small_weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real Keras weights file the test saved (small model: the download path does not load it)."""
    import keras

    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    path = tmp_path_factory.mktemp("small") / "small.weights.h5"
    model.save_weights(str(path))
    return path


class _Server:
    """http.server on 127.0.0.1, port 0, serving a folder and counting GET requests."""

    def __init__(self, root: Path) -> None:
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(root), **kw)

            def do_GET(self):
                outer.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def served(tmp_path: Path, small_weights_file: Path, monkeypatch: pytest.MonkeyPatch):
    """Serve the test file under ResNet50's published name; the registry's hash is overridden to match."""
    bb = backbones.get_backbone("ResNet50")
    root = tmp_path / "www"
    (root / bb.weights_url_path).parent.mkdir(parents=True)
    shutil.copyfile(small_weights_file, root / bb.weights_url_path)
    server = _Server(root)
    monkeypatch.setenv("XRAY_SPARK_WEIGHTS_BASE_URL", server.url)
    md5 = hashlib.md5(small_weights_file.read_bytes()).hexdigest()
    with overridden("ResNet50", weights_hash=md5, hash_algorithm="md5"):
        yield server, root / bb.weights_url_path, md5
    server.close()


def test_imagenet_download_once_then_cached(cache, served):
    server, _, md5 = served
    first = weights.resolve_weights("ResNet50", "imagenet")
    assert (len(server.requests) == 1
            and server.requests[0].endswith("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"))
    assert first.local_path == cache / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    assert first.fingerprint == f"imagenet:{md5}" == weights.weights_fingerprint("ResNet50", "imagenet")
    second = weights.resolve_weights("resnet50", "imagenet")
    assert second.local_path == first.local_path
    assert len(server.requests) == 1  # cached: no second request
    assert sorted(p.name for p in cache.iterdir()) == [first.local_path.name]  # no temp files left


def test_corrupt_download_refused_and_not_cached(cache, served):
    server, served_file, _ = served
    served_file.write_bytes(served_file.read_bytes()[:-10] + b"tampered!!")
    with pytest.raises(UserError, match="refusing resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"):
        weights.resolve_weights("ResNet50", "imagenet")
    assert len(server.requests) == 1
    assert list(cache.iterdir()) == []


def test_corrupt_cached_file_is_replaced(cache, served, small_weights_file):
    server, _, md5 = served
    cache.mkdir(parents=True)
    target = cache / backbones.get_backbone("ResNet50").weights_file
    target.write_bytes(b"half a download")
    resolved = weights.resolve_weights("ResNet50", "imagenet")
    assert len(server.requests) == 1
    assert hashlib.md5(resolved.local_path.read_bytes()).hexdigest() == md5


def test_sha256_published_hash_is_verified_with_sha256(cache, served, small_weights_file):
    server, _, _ = served
    sha = hashlib.sha256(small_weights_file.read_bytes()).hexdigest()
    with overridden("ResNet50", weights_hash=sha, hash_algorithm="sha256"):
        resolved = weights.resolve_weights("ResNet50", "imagenet")
        assert resolved.fingerprint == f"imagenet:{sha}"
    assert len(server.requests) == 1


def test_offline_without_cache_names_file_url_and_remedy(cache, monkeypatch):
    monkeypatch.setenv("XRAY_SPARK_WEIGHTS_BASE_URL", "http://127.0.0.1:9/mirror/")  # discard port: refused
    with pytest.raises(UserError) as err:
        weights.resolve_weights("InceptionV3", "imagenet")
    msg = str(err.value)
    assert "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5" in msg
    assert ("http://127.0.0.1:9/mirror/inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
            in msg)
    assert "--weights" in msg and str(cache) in msg
    assert not any(cache.iterdir())


def test_published_registry_facts():
    names = backbones.backbone_names()
    assert names[:2] == ["ResNet50", "InceptionV3"]
    for name in names:
        bb = backbones.get_backbone(name)
        assert bb.weights_file.endswith("_notop.h5") and bb.weights_url_path.endswith(bb.weights_file)
        assert bb.hash_algorithm == "md5" and len(bb.weights_hash) == 32  # what Keras publishes for these
    with pytest.raises(UserError, match="unknown backbone"):
        backbones.get_backbone("ResNet18")


def _h5_arrays(path: Path) -> list[np.ndarray]:
    import h5py

    out: list[np.ndarray] = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.append(obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def test_none_is_seeded_and_identical_across_driver_calls(tmp_path):
    import keras

    a = weights.resolve_weights("VGG16", "none", cache_dir=tmp_path / "a")
    b = weights.resolve_weights("VGG16", "none:seed=0", cache_dir=tmp_path / "b")
    c = weights.resolve_weights("VGG16", "none:seed=1", cache_dir=tmp_path / "c")
    assert a.fingerprint == b.fingerprint == f"none:seed=0:keras={keras.__version__}"
    assert c.fingerprint == f"none:seed=1:keras={keras.__version__}"
    assert a.local_path != b.local_path and a.local_path.name.endswith(".weights.h5")
    wa, wb, wc = _h5_arrays(a.local_path), _h5_arrays(b.local_path), _h5_arrays(c.local_path)
    assert len(wa) == len(wb) > 10
    assert all(np.array_equal(x, y) for x, y in zip(wa, wb, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(wa, wc, strict=True))
    mtime = a.local_path.stat().st_mtime_ns
    assert (weights.resolve_weights("VGG16", "none", cache_dir=tmp_path / "a").local_path.stat().st_mtime_ns
            == mtime)


def test_weights_path_local_and_hadoop_uri(spark, tmp_path, small_weights_file):
    user = tmp_path / "mine" / "model.weights.h5"
    user.parent.mkdir()
    shutil.copyfile(small_weights_file, user)
    sha = hashlib.sha256(user.read_bytes()).hexdigest()
    local = weights.resolve_weights("ResNet50", str(user), cache_dir=tmp_path / "c")
    assert local.kind == "file" and local.fingerprint == f"file:{sha}"
    assert local.ship_name == f"{sha[:16]}-model.weights.h5"
    via_fs = weights.resolve_weights("ResNet50", user.as_uri(), spark=spark, cache_dir=tmp_path / "c")
    assert via_fs.fingerprint == local.fingerprint
    with pytest.raises(UserError, match="not found"):
        weights.resolve_weights("ResNet50", str(tmp_path / "missing.h5"), cache_dir=tmp_path / "c")
    with pytest.raises(UserError, match="not found"):
        weights.resolve_weights("ResNet50", (tmp_path / "missing.h5").as_uri(), spark=spark,
                                cache_dir=tmp_path / "c")
    with pytest.raises(UserError, match="Keras weights file"):
        weights.resolve_weights("ResNet50", str(tmp_path / "weights.txt"), cache_dir=tmp_path / "c")


def test_legacy_h5_file_loads_like_imagenet_notop(tmp_path):
    """Keras' published notop files are legacy HDF5 (Keras 2 layout): the worker loader must read that
    format."""
    from keras.src.legacy.saving import legacy_h5_format

    from xray_spark.features.worker import load_model

    bb = backbones.get_backbone("VGG16")
    src = bb.build(weights=None)
    path = tmp_path / bb.weights_file
    import h5py

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, src)
    loaded = load_model("VGG16", str(path))
    assert all(np.array_equal(x, y) for x, y in zip(src.get_weights(), loaded.get_weights(), strict=True))


def test_featurize_with_user_weights_file_equals_none(spark, tmp_path, tmp_path_factory, ozturk_dir,
                                                      monkeypatch):
    """weights=PATH end to end: the file is staged, shipped, loaded on executors; same weights -> same
    features."""
    from pyspark.sql.types import BinaryType, StructField, StructType

    from xray_spark import DeepImageFeaturizer

    monkeypatch.setenv("XRAY_SPARK_CACHE", str(tmp_path_factory.getbasetemp() / "xray-weights-cache"))
    none = weights.resolve_weights("ResNet50", "none")
    user = tmp_path / "copy of resnet.weights.h5"
    shutil.copyfile(none.local_path, user)
    payloads = [p.read_bytes() for p in sorted((ozturk_dir / "no_findings").iterdir())[:2]]
    df = spark.createDataFrame([(bytearray(b),) for b in payloads],
                               StructType([StructField("content", BinaryType())]))
    a = [r.features.toArray() for r in DeepImageFeaturizer(weights="none").transform(df).collect()]
    b = [r.features.toArray() for r in DeepImageFeaturizer(weights=str(user)).transform(df).collect()]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
    shipped = weights.resolve_weights("ResNet50", str(user)).ship_name
    assert shipped.endswith("copy of resnet.weights.h5")
    assert any(unquote(f).endswith("/" + shipped) for f in spark.sparkContext.listFiles)
