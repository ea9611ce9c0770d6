"""Inference engines of DeepImageFeaturizer: OpenVINO fp32/bf16 vs Keras fp32 on real images in Spark
local[2], the `auto` table, the fallback to Keras where openvino cannot be imported, and the IR cache."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from xray_spark.errors import UserError
from xray_spark.features import engines
from xray_spark.features.ir_files import publish_folder

pytestmark = pytest.mark.usefixtures("weights_cache")

N_IMAGES = 16
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def images(ozturk_dir: Path) -> list[tuple[str, bytes]]:
    """16 real images spread evenly over the sorted manifest: every class, JPEG and PNG, RGB and L."""
    rows = sorted(csv.DictReader((ozturk_dir / "manifest.csv").open()), key=lambda r: r["path"])
    idx = np.linspace(0, len(rows) - 1, N_IMAGES).round().astype(int)
    picked = [rows[i] for i in idx]
    assert {r["label"] for r in picked} == {"covid", "no_findings", "pneumonia"}
    return [(r["path"], (ozturk_dir / r["path"]).read_bytes()) for r in picked]


def _df(spark, images):
    rows = [(p, bytearray(b)) for p, b in images]
    return spark.createDataFrame(rows, "path string, content binary").repartition(2)


def _featurize(spark, images, **params) -> tuple[dict[str, np.ndarray], set[str]]:
    """(path -> features, engine labels) from DeepImageFeaturizer with `params`, weights none."""
    from xray_spark import DeepImageFeaturizer

    feat = DeepImageFeaturizer(weights="none", engineCol="engine", **params)
    out = feat.transform(_df(spark, images))
    rows = out.select("path", "features", "featurize_error", "engine").collect()
    assert [r.featurize_error for r in rows] == [None] * len(images)
    return {r.path: r.features.toArray() for r in rows}, {r.engine for r in rows}


@pytest.fixture(scope="module")
def keras_features(images) -> np.ndarray:
    """The reference: the Keras engine in this process, same decode, same weights file. (Spark's Keras path
    is compared with it by the fallback test below; running it here spares two workers a TensorFlow trace.)"""
    from xray_spark.data.decode import decode_for_model
    from xray_spark.features.weights import resolve_weights

    resolved = resolve_weights("ResNet50", "none")
    keras_engine = engines.load_engine("ResNet50", str(resolved.local_path), engine="keras")
    assert keras_engine.label == "keras:fp32"
    return keras_engine(np.stack([decode_for_model(b, 224) for _, b in images]))


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _openvino_bf16_capable() -> bool:
    """OpenVINO's own view (what its CPU plugin will really run), next to our cpuinfo rule for `auto`."""
    ov, _ = engines.import_openvino()
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


# ---------------------------------------------------------------------------------------- (a) parity


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_openvino_matches_keras_per_image(spark, images, keras_features, weights_cache, precision, evidence):
    feats, labels = _featurize(spark, images, engine="openvino", precision=precision)
    got = np.stack([feats[p] for p, _ in images])
    runs = "bf16" if precision == "bf16" and _openvino_bf16_capable() else "fp32"
    assert labels == {f"openvino:{runs}"}  # what really ran, not what was asked for
    cos = _cosine(got, keras_features)
    assert cos.min() >= 0.999, cos
    # random-init features of two different X-rays can be 0.999-similar too: each image must also be
    # nearest to its own Keras features, so a mix-up between rows cannot pass
    dist = np.linalg.norm(got[:, None, :] - keras_features[None, :, :], axis=2)
    assert (dist.argmin(axis=1) == np.arange(len(images))).all()
    if runs == "fp32":
        np.testing.assert_allclose(got, keras_features, rtol=1e-4, atol=1e-4 * np.abs(keras_features).max())
    # the workers converted into the driver's weights cache (local mode) and left no temp folders behind;
    # the cache is the session's, so other tests' weights (e.g. a weights file) may have IRs there too
    irs = [p for p in (weights_cache / "openvino" / "ResNet50").glob("*/model.xml")
           if json.loads((p.parent / "key.json").read_text())["weights"].startswith("none:seed=0")
           and json.loads((p.parent / "key.json").read_text()).get("precision") != "int8"]  # test_int8's
    assert len(irs) == 1 and (irs[0].parent / "model.bin").is_file()
    key = json.loads((irs[0].parent / "key.json").read_text())
    assert key["backbone"] == "ResNet50"
    assert not list((weights_cache / "openvino" / "ResNet50").glob(".*tmp*"))
    native = engines.has_native_bf16(engines.cpu_flags())
    evidence(f"engines parity ResNet50 openvino {precision} (ran {runs}; CPU native bf16: {native}): "
             f"min cosine vs keras fp32 {cos.min():.7f} over {len(images)} images")


# ----------------------------------------------------------------------------------------- (b) auto


AMX = {"avx512f", "amx_bf16", "amx_tile"}
AVX512_BF16 = {"avx512f", "avx512_bf16"}
AVX2 = {"avx2", "fma"}
AVX512 = {"avx512f", "avx512bw"}


@pytest.mark.parametrize(("engine", "precision", "flags", "ov", "gpu", "expected"), [
    ("auto", None, AMX, True, False, "openvino:bf16"),
    ("auto", None, AVX512_BF16, True, False, "openvino:bf16"),
    ("auto", None, AVX512, True, False, "openvino:fp32"),  # avx512f alone is not native bf16
    ("auto", None, AVX2, True, False, "openvino:fp32"),
    ("auto", None, set(), True, False, "openvino:fp32"),
    ("auto", "fp32", AMX, True, False, "openvino:fp32"),  # a precision the user set wins over auto's
    ("auto", None, AMX, False, False, "keras:fp32"),
    ("auto", None, AVX2, False, False, "keras:fp32"),
    ("auto", None, AMX, True, True, "keras:fp32"),  # TensorFlow sees a GPU
    ("keras", "fp32", AMX, True, False, "keras:fp32"),
    ("openvino", "fp32", AMX, True, True, "openvino:fp32"),  # asked for explicitly: no GPU override
    ("openvino", "bf16", AVX2, True, False, "openvino:bf16"),  # asked for; OpenVINO reports what it ran
    ("openvino", "bf16", AMX, False, False, "keras:fp32"),
    ("openvino", None, AVX2, True, False, "openvino:fp32"),
])
def test_auto_resolver_table(engine, precision, flags, ov, gpu, expected):
    choice = engines.choose_engine(engine, precision, cpu_flags=flags, openvino_importable=ov,
                                   gpu_present=gpu)
    assert choice.label == expected
    assert choice.fallback == (engine == "openvino" and not ov)
    assert choice.reason


AMX_INT8 = AMX | {"amx_int8"}
VNNI_BF16 = AVX512_BF16 | {"avx512_vnni"}  # e.g. AMD Zen 4
AVX_VNNI = AVX2 | {"avx_vnni"}  # e.g. Intel Alder Lake


@pytest.mark.parametrize(("engine", "precision", "flags", "int8_ok", "expected"), [
    ("auto", None, AMX_INT8, True, "openvino:int8"),
    ("auto", None, VNNI_BF16, True, "openvino:int8"),
    ("auto", None, AVX_VNNI, True, "openvino:int8"),
    ("auto", None, AVX512_BF16, True, "openvino:bf16"),  # passed the gate, but no native int8 here
    ("auto", None, AVX2, True, "openvino:fp32"),
    ("auto", None, VNNI_BF16, False, "openvino:bf16"),  # native int8, but the model did not pass the gate
    ("auto", "fp32", AMX_INT8, True, "openvino:fp32"),  # a precision the user set wins over auto's
    ("openvino", "int8", AVX2, False, "openvino:int8"),  # asked for explicitly: runs (slowly) anywhere
    ("auto", None, AMX_INT8, True, "keras:fp32"),  # with openvino missing (ov=False below)
])
def test_auto_picks_int8_only_after_the_gate_and_on_native_int8(engine, precision, flags, int8_ok, expected):
    choice = engines.choose_engine(engine, precision, cpu_flags=flags, gpu_present=False, int8_ok=int8_ok,
                                   openvino_importable=expected != "keras:fp32")
    assert choice.label == expected and choice.reason


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 avx512f amx_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu\n")
    assert engines.cpu_flags(info) == {"fpu", "avx2", "avx512f", "amx_bf16"}
    assert engines.has_native_bf16(engines.cpu_flags(info))
    assert engines.cpu_flags(tmp_path / "missing") == frozenset()


def test_bad_engine_or_precision_is_one_line_user_error(spark):
    from xray_spark import DeepImageFeaturizer

    df = spark.createDataFrame([(bytearray(b"x"),)], "content binary")
    cases = [({"engine": "tensorrt"}, "engine must be one of auto, keras, openvino; got 'tensorrt'"),
             ({"precision": "fp16"}, "precision must be one of fp32, bf16, int8; got 'fp16'"),
             ({"engine": "keras", "precision": "bf16"}, "needs engine 'openvino' or 'auto'")]
    for params, message in cases:
        feat = DeepImageFeaturizer(weights="none", **params)
        for call in (lambda f=feat: f.transform(df), feat.resolvedEngine):
            with pytest.raises(UserError, match=re.escape(message)) as info:
                call()
            assert "\n" not in str(info.value)


def test_resolved_engine_on_the_driver_follows_the_table():
    from xray_spark import DeepImageFeaturizer

    flags = engines.cpu_flags()
    auto = engines.choose_engine("auto", None, cpu_flags=flags, openvino_importable=True,
                                 gpu_present=engines.gpu_present())
    assert DeepImageFeaturizer().resolvedEngine() == auto.label
    assert DeepImageFeaturizer(engine="keras").resolvedEngine() == "keras:fp32"
    assert DeepImageFeaturizer(engine="openvino", precision="bf16").resolvedEngine() == "openvino:bf16"
    assert DeepImageFeaturizer(precision="fp32").resolvedEngine() == (
        "keras:fp32" if auto.engine == "keras" else "openvino:fp32")


# ------------------------------------------------------------------------------------- (c) fallback

_SCORE_SCRIPT = textwrap.dedent("""
    import json, sys
    from pyspark.ml import PipelineModel
    from xray_spark.config import load_config
    from xray_spark.session import get_spark

    model_dir, paths = sys.argv[1], sys.argv[2:]
    try:
        import openvino  # noqa: F401
        driver_import = "ok"
    except ImportError as exc:
        driver_import = f"ImportError: {exc}"
    spark = get_spark(load_config(local=None), master="local[2]", app_name="no-openvino")
    model = PipelineModel.load(model_dir)
    stage = model.stages[0]
    rows = [(p, bytearray(open(p, "rb").read())) for p in paths]
    df = spark.createDataFrame(rows, "path string, content binary").repartition(1)
    out = model.transform(df).select("path", "features", "featurize_error", "engine").collect()
    print(json.dumps({
        "driver_import": driver_import, "params": [stage.getEngine(), stage.getPrecision()],
        "resolved": stage.resolvedEngine(),
        "rows": {r.path: [r.engine, r.featurize_error, r.features and r.features.toArray().tolist()]
                 for r in out},
    }))
    spark.stop()
""")


@pytest.mark.e2e
def test_saved_openvino_model_scores_with_keras_where_openvino_cannot_be_imported(
        spark, images, keras_features, ozturk_dir, weights_cache, tmp_path):
    """A fresh driver + Python workers where `import openvino` raises ImportError (a package of that name,
    first on PYTHONPATH, raises it: the real import statement fails, in the driver and in every worker)."""
    from pyspark.ml import PipelineModel

    from xray_spark import DeepImageFeaturizer

    stage = DeepImageFeaturizer(weights="none", engine="openvino", precision="bf16", engineCol="engine")
    PipelineModel(stages=[stage]).write().overwrite().save(str(tmp_path / "pm"))
    hidden = tmp_path / "no-openvino" / "openvino"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text('raise ImportError("openvino hidden by test_engines")\n')
    script = tmp_path / "score.py"
    script.write_text(_SCORE_SCRIPT)
    subset = images[:4]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(hidden.parent),
                                                                      os.environ.get("PYTHONPATH")])),
           "XRAY_SPARK_CACHE": str(weights_cache), "PYSPARK_PYTHON": sys.executable}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "pm"),
                           *[str(ozturk_dir / p) for p, _ in subset]],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["driver_import"] == "ImportError: openvino hidden by test_engines"
    assert result["params"] == ["openvino", "bf16"]  # the saved Params, unchanged
    assert result["resolved"] == "keras:fp32"
    for i, (path, _) in enumerate(subset):
        engine, error, features = result["rows"][str(ozturk_dir / path)]
        assert (engine, error) == ("keras:fp32", None)
        np.testing.assert_allclose(features, keras_features[i], rtol=1e-4,
                                   atol=1e-4 * np.abs(keras_features).max())
    # one warning per process that fell back (the driver for resolvedEngine, each Python worker): never per
    # batch or per task
    pids = re.findall(r"openvino cannot be imported in this Python process \(pid (\d+): ImportError: "
                      r"openvino hidden by test_engines\): DeepImageFeaturizer engine 'openvino' falls back",
                      proc.stderr)
    counts = Counter(pids)
    assert len(counts) >= 2, proc.stderr[-3000:]  # the driver and at least one worker
    assert set(counts.values()) == {1}, counts


# ----------------------------------------------------------------------------------------- (d) cache


def test_ir_cache_second_load_does_not_convert(monkeypatch, images, weights_cache):
    """A new Python worker reads the IR from disk: no conversion, files untouched, same features.

    Run after the parity tests, the IR was converted by Spark's workers and no load here converts; run alone,
    the first load converts once. Either way a load that finds the IR must not convert."""
    from xray_spark.data.decode import decode_for_model
    from xray_spark.features.weights import resolve_weights

    resolved = resolve_weights("ResNet50", "none")
    conversions: list[Path] = []
    real = engines.save_ir
    monkeypatch.setattr(engines, "save_ir", lambda model, folder: conversions.append(folder)
                        or real(model, folder))

    def load() -> engines.Engine:
        monkeypatch.setattr(engines, "_ENGINES", {})  # a new Python worker: nothing in memory
        return engines.load_engine("ResNet50", str(resolved.local_path), engine="openvino", precision="fp32",
                                   fingerprint=resolved.fingerprint, cache_dir=weights_cache)

    first = load()
    assert first.label == "openvino:fp32" and len(conversions) == int(first.converted) <= 1
    assert first.ir_path.is_file() and first.ir_path.is_relative_to(weights_cache / "openvino" / "ResNet50")
    stamps = {p.name: p.stat().st_mtime_ns for p in first.ir_path.parent.iterdir()}
    assert {"model.xml", "model.bin", "key.json"} <= set(stamps)
    before = len(conversions)
    second = load()
    assert second is not first and not second.converted and len(conversions) == before
    assert second.ir_path == first.ir_path
    assert {p.name: p.stat().st_mtime_ns for p in first.ir_path.parent.iterdir()} == stamps
    x = np.stack([decode_for_model(b, 224) for _, b in images[:2]])
    np.testing.assert_array_equal(first(x), second(x))
    # the key names what changes the IR: other weights or versions are other folders
    key = engines.ir_key("ResNet50", resolved.fingerprint, "v1", "k1")
    assert len({engines.ir_folder(weights_cache, k) for k in (
        key, {**key, "weights": "file:abc"}, {**key, "openvino": "v2"}, {**key, "keras": "k2"})}) == 4


def test_publish_keeps_the_ir_a_concurrent_writer_published_first(tmp_path):
    target = tmp_path / "ir"
    first, second = tmp_path / ".ir.tmp-1", tmp_path / ".ir.tmp-2"
    for folder, text in ((first, "first"), (second, "second")):
        folder.mkdir()
        (folder / "model.xml").write_text(text)
    assert publish_folder(first, target) is True
    assert publish_folder(second, target) is False  # lost the race: the winner's IR stays whole
    assert (target / "model.xml").read_text() == "first"
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "other").write_text("x")
    third = tmp_path / ".junk.tmp"
    third.mkdir()
    (third / "model.xml").write_text("x")
    with pytest.raises(OSError):  # a folder in the way that is not an IR is an error, not a silent skip
        publish_folder(third, junk)
