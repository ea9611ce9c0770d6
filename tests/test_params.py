"""Params declared once (features/params.py): a table makes the Params, defaults, getters and setters, and
what a stage persists is what its hand-written Params persisted (a pipeline saved before still loads)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.param import Param, TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasOutputCol
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable

from xray_spark.features.params import DeclaredParams, ParamSpec

SAVED = Path(__file__).parent / "data" / "pipeline_saved_by_af638dc"  # hand-written Params, commit af638dc


class _ToyParams(DeclaredParams, HasInputCol, HasOutputCol):
    PARAMS = (ParamSpec("modelName", "backbone", default="ResNet50"),
              ParamSpec("topK", "classes kept", TypeConverters.toInt, 5),
              ParamSpec("pin", "optional pin"))
    DEFAULTS = {"outputCol": "predictions"}


class ToyStage(Transformer, _ToyParams, DefaultParamsReadable, DefaultParamsWritable):
    @keyword_only
    def __init__(self, **params: object) -> None:
        super().__init__()
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(self, **params: object) -> ToyStage:
        return self._set_params(self._input_kwargs)

    def _transform(self, dataset):  # pragma: no cover - never run
        return dataset


def test_a_table_makes_params_defaults_getters_and_setters() -> None:
    stage = ToyStage(topK=7.0)
    assert isinstance(ToyStage.modelName, Param) and stage.modelName.parent == stage.uid
    assert (stage.getModelName(), stage.getTopK(), stage.getPin(), stage.getOutputCol()) == (
        "ResNet50", 7, None, "predictions")  # converted; no default -> None; inherited default overridden
    assert stage.setPin("abc").setInputCol("content").setOutputCol("x") is stage
    assert (stage.getPin(), stage.getInputCol(), stage.getOutputCol()) == ("abc", "content", "x")
    assert stage.isSet(stage.topK) and not stage.isSet(stage.modelName)
    assert ToyStage.declared_defaults() == {"modelName": "ResNet50", "topK": 5, "outputCol": "predictions"}
    signature = inspect.signature(ToyStage)
    assert signature.parameters["topK"].default == 5 and signature.parameters["pin"].default is None
    with pytest.raises(TypeError, match="unexpected keyword argument 'topk'"):
        ToyStage(topk=3)


def test_a_class_keeps_the_getter_it_writes() -> None:
    class _Parsed(DeclaredParams):
        PARAMS = (ParamSpec("reference", "text"),)

        def getReference(self) -> list[str]:
            return self.getOrDefault(self.reference).split(",")

    stage = _Parsed()
    stage._set(reference="a,b")
    assert stage.getReference() == ["a", "b"] and stage.setReference("c").getReference() == ["c"]


def test_a_pipeline_saved_with_hand_written_params_loads_unchanged(spark, tmp_path: Path) -> None:
    """Uids, param maps and defaults as saved by af638dc (before the Params were declared once); saved
    again, the metadata says the same, plus the default of each Param added since (colorMode, #28: 'grey',
    the behaviour the stage had)."""
    from pyspark.ml import PipelineModel

    props, featurizer, shift = PipelineModel.load(str(SAVED)).stages
    assert [s.uid for s in (props, featurizer, shift)] == [
        "FileProperties_6ae094d28721", "DeepImageFeaturizer_16573b3da682", "ShiftModel_55cb5956a501"]
    assert {p.name: v for p, v in featurizer._paramMap.items()} == {
        "inputCol": "content", "outputCol": "f", "modelName": "InceptionV3", "weights": "none",
        "weightsSha256": "abc", "batchSize": 8, "engine": "keras", "engineCol": "eng", "precision": "bf16"}
    assert (featurizer.getScaleHint(), featurizer.getErrorCol(), featurizer.getWeightsSha256()) == (
        "SCALE_AREA_AVERAGE", "featurize_error", "abc")
    assert (props.getInputCol(), props.getOutputCol()) == ("content", "file_props")
    assert (shift.getFlagCol(), shift.getReasonsCol(), shift.getOrDefault("reference")) == (
        "fl", "shift_reasons", "x")
    again = tmp_path / "again"
    PipelineModel(stages=[props, featurizer, shift]).write().save(str(again))
    for stage in ("0_FileProperties_6ae094d28721", "1_DeepImageFeaturizer_16573b3da682",
                  "2_ShiftModel_55cb5956a501"):
        resaved, saved = _metadata(again / "stages" / stage), _metadata(SAVED / "stages" / stage)
        added = {"colorMode": "grey"} if stage.startswith("1_") else {}
        assert resaved == {**saved, "defaultParamMap": {**saved["defaultParamMap"], **added}}, stage


def _metadata(folder: Path) -> dict:
    import json

    (part,) = (folder / "metadata").glob("part-*")
    doc = json.loads(part.read_text())
    return {k: doc[k] for k in ("class", "uid", "paramMap", "defaultParamMap")}
