"""ml_io.ParamsWritable: our Python stages save the metadata pyspark's writer saves, without a Spark job, on
any filesystem, and load through pyspark's own readers (PipelineModel.load, DefaultParamsReader)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pyspark.ml import PipelineModel
from pyspark.ml.util import DefaultParamsReader, DefaultParamsWriter

from conftest import job_group, viewfs
from xray_spark.models.calibration_stage import TemperatureScalingModel
from xray_spark.models.shift_stage import FileProperties


def _metadata(path: Path) -> dict:
    (part,) = [p for p in (path / "metadata").iterdir() if p.name.startswith("part-")]
    meta = json.loads(part.read_text())
    meta.pop("timestamp")
    return meta


def test_saved_metadata_equals_pysparks_and_loads_with_its_readers(spark, tmp_path: Path) -> None:
    stage = TemperatureScalingModel(temperature=1.7, probabilityCol="p")
    with job_group(spark, "ml_io-save") as jobs:
        stage.write().save(str(tmp_path / "ours"))
        assert jobs() == []  # no Spark job: the metadata is one file written through Hadoop's FileSystem
    DefaultParamsWriter(stage).save(str(tmp_path / "pyspark"))
    assert _metadata(tmp_path / "ours") == _metadata(tmp_path / "pyspark")
    assert (tmp_path / "ours" / "metadata" / "_SUCCESS").is_file()

    loaded = DefaultParamsReader(TemperatureScalingModel).load(str(tmp_path / "ours"))
    assert loaded.uid == stage.uid and loaded.getTemperature() == 1.7 and loaded.getProbabilityCol() == "p"
    again = TemperatureScalingModel.load(str(tmp_path / "pyspark"))  # what older versions saved still loads
    assert again.getTemperature() == 1.7


def test_a_pipeline_of_our_stages_round_trips_under_viewfs(spark, tmp_path: Path) -> None:
    model = PipelineModel(stages=[FileProperties(), TemperatureScalingModel(temperature=0.5)])
    target = viewfs(tmp_path / "model")
    model.write().save(target)
    with pytest.raises(FileExistsError, match="overwrite"):  # as pyspark refuses an existing folder
        model.stages[1].write().save(f"{target}/stages/1_{model.stages[1].uid}")
    model.write().overwrite().save(target)
    back = PipelineModel.load(target)
    assert [type(s) for s in back.stages] == [FileProperties, TemperatureScalingModel]
    assert back.stages[1].getTemperature() == 0.5 and back.stages[1].uid == model.stages[1].uid
