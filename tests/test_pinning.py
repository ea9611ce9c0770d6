"""Weights pinning (features/pinning.py): a model trained with weights A refuses weights B, in a transform and
from the CLI (exit 2, one line); the pin survives save/load; `none` is pinned by its tensors, which stay the
same where the HDF5 file's bytes do not. Real Keras (VGG16: the quickest backbone to build) and real Spark."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from xray_spark.errors import UserError
from xray_spark.features.pinning import weights_sha256
from xray_spark.features.weights import file_digest, resolve_weights

BACKBONE = "VGG16"


def _seeded_file(folder: Path, seed: int) -> Path:
    import keras

    from xray_spark.features.backbones import get_backbone

    keras.utils.set_random_seed(seed)
    path = folder / f"vgg16-seed{seed}.weights.h5"
    get_backbone(BACKBONE).build(weights=None).save_weights(str(path))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pin-weights")
    return {"a": _seeded_file(folder, 1), "b": _seeded_file(folder, 2)}


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XRAY_SPARK_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_none_is_pinned_by_its_tensors_not_its_file_bytes(tmp_path: Path) -> None:
    first = resolve_weights(BACKBONE, "none", cache_dir=tmp_path / "one")
    time.sleep(1.1)  # HDF5 stamps times in seconds
    second = resolve_weights(BACKBONE, "none", cache_dir=tmp_path / "two")  # built and saved again
    other_seed = resolve_weights(BACKBONE, "none:seed=1", cache_dir=tmp_path / "one")
    assert file_digest(first.local_path) != file_digest(second.local_path)  # why files cannot be the pin
    digest = weights_sha256(first, tmp_path / "one")
    assert digest == weights_sha256(second, tmp_path / "two")
    assert digest != weights_sha256(other_seed, tmp_path / "one")
    assert len(digest) == 64 and list((tmp_path / "one" / "digests").iterdir())  # memoised on disk


def test_pinned_featurizer_refuses_other_weights_and_keeps_its_pin(spark, files, cache, ozturk_dir: Path,
                                                                   tmp_path: Path) -> None:
    from pyspark.ml import PipelineModel

    from xray_spark.features.featurizer import DeepImageFeaturizer

    pin = weights_sha256(resolve_weights(BACKBONE, str(files["a"])))
    image = next(p for p in sorted(ozturk_dir.rglob("*.png")))
    df = spark.createDataFrame([(image.read_bytes(),)], "content binary")
    featurizer = DeepImageFeaturizer(modelName=BACKBONE, weights=str(files["b"]), weightsSha256=pin,
                                     engine="keras")
    with pytest.raises(UserError, match=r"refusing weights .*vgg16-seed2.*trained with " + pin[:16]):
        featurizer.transform(df)
    PipelineModel(stages=[featurizer]).save(str(tmp_path / "model"))
    loaded = PipelineModel.load(str(tmp_path / "model")).stages[0]
    assert loaded.getWeightsSha256() == pin
    row = loaded.setWeights(str(files["a"])).transform(df).first()  # the pinned weights pass and featurize
    assert row["featurize_error"] is None and len(row["features"]) == 512


@pytest.mark.e2e
def test_cli_score_refuses_a_replaced_weights_file_with_exit_2(spark, files, ozturk_dir: Path, tmp_path: Path,
                                                             monkeypatch, capsys) -> None:
    """The issue's story: a model names a weights path; the file there is replaced; scoring must stop."""
    from pyspark.ml import PipelineModel
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.feature import IndexToString
    from pyspark.ml.linalg import Vectors

    from xray_spark.features.featurizer import DeepImageFeaturizer

    weights = tmp_path / "weights" / "team.weights.h5"
    weights.parent.mkdir()
    shutil.copyfile(files["a"], weights)
    pin = weights_sha256(resolve_weights(BACKBONE, str(weights), cache_dir=tmp_path / "cache"),
                         tmp_path / "cache")
    rows = [(Vectors.dense([float(i % 2)] * 512), float(i % 2)) for i in range(6)]
    head = LogisticRegression(maxIter=5).fit(spark.createDataFrame(rows, ["features", "label"]))
    PipelineModel(stages=[
        DeepImageFeaturizer(modelName=BACKBONE, weights=str(weights), weightsSha256=pin, engine="keras"),
        head,
        IndexToString(inputCol="prediction", outputCol="predicted_label", labels=["covid", "no_findings"]),
    ]).save(str(tmp_path / "model"))
    shutil.copyfile(files["b"], weights)  # replaced in place: same path, other weights
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(next(p for p in sorted(ozturk_dir.rglob("*.png"))), inputs)
    from xray_spark.cli import main

    monkeypatch.setenv("XRAY_SPARK_CACHE", str(tmp_path / "cache"))
    code = main(["score", "--model", str(tmp_path / "model"), "--input", str(inputs), "--output",
                 str(tmp_path / "out"), "--min-age", "0"])  # the console script exits with main's value
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert "refusing weights" in last and pin[:16] in last, err[-3000:]
    assert not list((tmp_path / "out").rglob("*.parquet"))  # nothing was scored with the wrong weights
