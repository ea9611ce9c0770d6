"""DeepImageFeaturizer on real Spark local[2], real Keras (seeded random weights) and real ozturk images."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from conftest import isolate_mlflow
from xray_spark.errors import UserError

SAMPLE = [  # mixed formats and modes on purpose: RGB JPEG, L JPEG, RGBA PNG, L PNG (NIH)
    ("covid", "JPEG", "RGB"), ("covid", "JPEG", "RGB"), ("covid", "JPEG", "L"), ("covid", "PNG", "RGBA"),
    ("no_findings", "PNG", "L"), ("no_findings", "PNG", "L"), ("pneumonia", "PNG", "L"),
    ("pneumonia", "PNG", "L"),
]


pytestmark = pytest.mark.usefixtures("weights_cache")


@pytest.fixture(scope="module")
def images(ozturk_dir: Path) -> list[tuple[str, str, bytes]]:
    """(name, label, bytes) for a few real images covering the formats/modes in SAMPLE."""
    import csv

    rows = list(csv.DictReader((ozturk_dir / "manifest.csv").open()))
    picked: list[tuple[str, str, bytes]] = []
    used: set[str] = set()
    for label, fmt, mode in SAMPLE:
        row = next(
            r for r in rows
            if r["label"] == label and r["original_format"] == fmt and r["original_mode"] == mode
            and r["path"] not in used
        )
        used.add(row["path"])
        picked.append((row["path"], label, (ozturk_dir / row["path"]).read_bytes()))
    return picked


def _bytes_df(spark, images, extra=()):
    from pyspark.sql.types import BinaryType, StringType, StructField, StructType

    schema = StructType([
        StructField("path", StringType()), StructField("label", StringType()),
        StructField("content", BinaryType()),
    ])
    rows = [(p, label, bytearray(b)) for p, label, b in images] + list(extra)
    return spark.createDataFrame(rows, schema).repartition(2)


def _local_features(backbone: str, weights_path: Path, payloads: list[bytes]) -> np.ndarray:
    """The single-process reference: same decode, same weights file, plain Keras predict."""
    from xray_spark.data.decode import decode_for_model
    from xray_spark.features.backbones import get_backbone

    bb = get_backbone(backbone)
    model = bb.build(weights=None)
    model.load_weights(str(weights_path))
    x = np.stack([decode_for_model(b, bb.input_size) for b in payloads])
    return model.predict(bb.preprocess(x), verbose=0)


def _by_path(rows, col="features"):
    return {r["path"]: (None if r[col] is None else r[col].toArray()) for r in rows}


def test_spark_matches_single_process_keras_and_bad_bytes_become_reasons(spark, images):
    from xray_spark import DeepImageFeaturizer
    from xray_spark.features.weights import resolve_weights

    bad = [("bad/garbage.png", "covid", bytearray(b"this is not an image")), ("bad/null.png", "covid", None),
           ("bad/empty.png", "covid", bytearray())]
    df = _bytes_df(spark, images, bad)
    # exact parity with Keras fp32: pin fp32 (engine 'auto' runs OpenVINO bf16 on CPUs with native bf16)
    feat = DeepImageFeaturizer(inputCol="content", outputCol="features", modelName="ResNet50", weights="none",
                               precision="fp32")
    rows = feat.transform(df).select("path", "features", "featurize_error").collect()
    assert len(rows) == len(images) + len(bad)
    got = {r.path: r for r in rows}
    assert got["bad/garbage.png"].features is None
    assert got["bad/garbage.png"].featurize_error.startswith("not_an_image: ")
    assert (got["bad/null.png"].features is None
            and got["bad/null.png"].featurize_error.startswith("empty_file"))
    assert (got["bad/empty.png"].features is None
            and got["bad/empty.png"].featurize_error.startswith("empty_file"))

    resolved = resolve_weights("ResNet50", "none")
    expected = _local_features("ResNet50", resolved.local_path, [b for _, _, b in images])
    for (path, _, _), ref in zip(images, expected, strict=True):
        row = got[path]
        assert row.featurize_error is None, row.featurize_error
        vec = row.features.toArray()
        assert vec.shape == (2048,)
        np.testing.assert_allclose(vec, ref, rtol=1e-4, atol=1e-4)
    # the features actually differ between images (a constant output would pass the comparison above)
    assert np.std(expected[:, :50], axis=0).max() > 1e-3


def test_udf_built_once_per_param_state(spark, images):
    from xray_spark import DeepImageFeaturizer

    df = _bytes_df(spark, images[:2])
    feat = DeepImageFeaturizer(weights="none")
    feat.transform(df)
    first = feat._udf_cache[1]
    feat.transform(df)
    assert feat._udf_cache[1] is first  # same UDF -> same executor-side cache key, no model reload
    feat.setBatchSize(8)
    feat.transform(df)
    assert feat._udf_cache[1] is not first  # params changed -> rebuilt


def _image_struct_rows(images):
    """ImageSchema rows (origin, height, width, nChannels, mode, data) in Spark's layout: BGR(A) byte
    order."""
    from PIL import Image, ImageOps

    rows = []
    for path, _, payload in images:
        im = ImageOps.exif_transpose(Image.open(io.BytesIO(payload)))
        if im.mode == "L":
            arr, n, mode = np.asarray(im), 1, 0  # CV_8UC1
        elif im.mode == "RGBA":
            arr, n, mode = np.asarray(im)[..., [2, 1, 0, 3]], 4, 24  # CV_8UC4, BGRA
        else:
            arr, n, mode = np.asarray(im.convert("RGB"))[..., ::-1], 3, 16  # CV_8UC3, BGR
        h, w = arr.shape[:2]
        rows.append((path, (path, h, w, n, mode, bytearray(np.ascontiguousarray(arr).tobytes()))))
    return rows


def test_image_struct_input_matches_bytes_input(spark, images):
    from pyspark.ml.image import ImageSchema
    from pyspark.sql.types import StringType, StructField, StructType

    from xray_spark import DeepImageFeaturizer

    subset = images[:5]  # RGB JPEG x2, L JPEG, RGBA PNG, L PNG
    schema = StructType([StructField("path", StringType()),
                         StructField("image", ImageSchema.imageSchema["image"].dataType)])
    broken = ("bad/struct.png", ("bad", 10, 10, 3, 16, bytearray(b"short")))
    struct_df = spark.createDataFrame(_image_struct_rows(subset) + [broken], schema)
    by_struct = DeepImageFeaturizer(inputCol="image", weights="none").transform(struct_df).collect()
    by_bytes = DeepImageFeaturizer(weights="none").transform(_bytes_df(spark, subset)).collect()
    s, b = _by_path(by_struct), _by_path(by_bytes)
    for path, _, _ in subset:
        np.testing.assert_allclose(s[path], b[path], rtol=1e-4, atol=1e-4)
    bad = next(r for r in by_struct if r.path == "bad/struct.png")
    assert bad.features is None and bad.featurize_error.startswith("corrupt_image")


def test_inception_v3_dims_in_spark(spark, images):
    from xray_spark import DeepImageFeaturizer

    out = DeepImageFeaturizer(modelName="InceptionV3", weights="none").transform(_bytes_df(spark, images[:3]))
    rows = out.collect()
    assert [r.featurize_error for r in rows] == [None] * 3
    assert {len(r.features) for r in rows} == {2048}


@pytest.mark.parametrize(("name", "dim", "size"), [
    ("ResNet50", 2048, 224), ("InceptionV3", 2048, 299), ("Xception", 2048, 299), ("VGG16", 512, 224),
    ("VGG19", 512, 224), ("DenseNet121", 1024, 224),
])
def test_backbone_registry_dims_match_keras(name, dim, size):
    from xray_spark.features.backbones import get_backbone

    bb = get_backbone(name.lower())
    assert (bb.feature_dim, bb.input_size) == (dim, size)
    model = bb.build(weights=None)
    assert model.output_shape == (None, dim)
    assert model.input_shape == (None, size, size, 3)


def test_params_defaults_validation_and_input_type(spark):
    from xray_spark import DeepImageFeaturizer

    f = DeepImageFeaturizer()
    assert (f.getInputCol(), f.getOutputCol(), f.getModelName(), f.getWeights(), f.getErrorCol()) == (
        "content", "features", "ResNet50", "imagenet", "featurize_error")
    g = f.copy({f.modelName: "InceptionV3"})
    assert g.getModelName() == "InceptionV3" and f.getModelName() == "ResNet50"
    df = spark.createDataFrame([(1, "x")], "id int, content string")
    with pytest.raises(UserError, match="binary"):
        DeepImageFeaturizer(weights="none").transform(df)
    with pytest.raises(ValueError, match="modelName"):  # refused when built, as sparkdl did (#28)
        DeepImageFeaturizer(modelName="AlexNet", weights="none")
    with pytest.raises(ValueError, match="scaleHint"):
        DeepImageFeaturizer(scaleHint="BICUBIC", weights="none")


def _pipeline_df(spark, images):
    return _bytes_df(spark, images).withColumnRenamed("label", "label_name")


def _fit_pipeline(spark, images):
    from pyspark.ml import Pipeline
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.feature import StringIndexer

    from xray_spark import DeepImageFeaturizer

    stages = [
        DeepImageFeaturizer(inputCol="content", outputCol="features", modelName="ResNet50", weights="none"),
        StringIndexer(inputCol="label_name", outputCol="label"),
        LogisticRegression(featuresCol="features", labelCol="label", maxIter=20),
    ]
    return Pipeline(stages=stages).fit(_pipeline_df(spark, images))


def _predictions(model, df):
    rows = model.transform(df).select("path", "prediction", "probability").collect()
    return {r.path: (r.prediction, r.probability.toArray()) for r in rows}


def test_pipeline_save_load_and_mlflow_round_trip(spark, images, tmp_path, monkeypatch):
    import mlflow
    from pyspark.ml import PipelineModel

    df = _pipeline_df(spark, images)
    model = _fit_pipeline(spark, images)
    # the engine Params persist: a non-default engine + precision set explicitly, and the optional engineCol
    model.stages[0].setEngine("openvino").setPrecision("fp32").setEngineCol("engine")
    before = _predictions(model, df)
    assert len(before) == len(images)

    model.write().overwrite().save(str(tmp_path / "pm"))
    loaded = PipelineModel.load(str(tmp_path / "pm"))
    assert loaded.stages[0].getWeights() == "none" and loaded.stages[0].getModelName() == "ResNet50"
    stage = loaded.stages[0]
    assert (stage.getEngine(), stage.getPrecision(), stage.getEngineCol()) == ("openvino", "fp32", "engine")
    assert stage.isSet(stage.precision)  # set, not defaulted: 'auto' would honour it too
    assert {r.engine for r in loaded.transform(df).select("engine").collect()} == {"openvino:fp32"}
    after = _predictions(loaded, df)
    for path, (pred, prob) in before.items():
        assert after[path][0] == pred
        np.testing.assert_allclose(after[path][1], prob, rtol=1e-6, atol=1e-6)

    isolate_mlflow(monkeypatch)  # set_tracking_uri exports MLFLOW_TRACKING_URI: undone after the test
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    exp = mlflow.create_experiment("featurizer-test", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=exp):
        info = mlflow.spark.log_model(model, artifact_path="model",
                                      pip_requirements=["xray-spark", "pyspark"],
                                      dfs_tmpdir=str(tmp_path / "dfs"))
    reloaded = mlflow.spark.load_model(info.model_uri, dfs_tmpdir=str(tmp_path / "dfs-load"))
    again = _predictions(reloaded, df)
    for path, (pred, prob) in before.items():
        assert again[path][0] == pred
        np.testing.assert_allclose(again[path][1], prob, rtol=1e-6, atol=1e-6)
