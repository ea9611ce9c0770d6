"""int8 features with a guarantee (#29): the gate's rules, a deliberately bad quantisation refused on the
session's trained champion, the same calibration giving the same int8 model, the feature cache and the
featurizer knowing the precision, and serving saying which precision the gate approved.

Cost: everything Spark here reuses the session's `trained` run (its multiclass champion and its ingest
output, 8 held-out test images) — no train run of its own. Two quantisations in the Spark workers (the real
calibration sample drawn from the training split, and one of blank images), one in this process (the
determinism check); the featurizer and serving tests find the int8 IR in the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from xray_spark.errors import UserError
from xray_spark.evaluation.int8_config import Int8Config
from xray_spark.evaluation.int8_gate import gate_switch, judge
from xray_spark.features import engines
from xray_spark.features.calibration import load_calibration, write_calibration
from xray_spark.features.ir_files import ir_folder
from xray_spark.features.quantize import has_native_int8, int8_support

pytestmark = pytest.mark.usefixtures("weights_cache")

LABELS = ["covid", "no_findings", "pneumonia"]
NATIVE_INT8 = has_native_int8(engines.cpu_flags())  # else `auto` never picks int8


# ------------------------------------------------------------------------------------------- unit: rules


def _held_out(n: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    proba = rng.dirichlet(np.ones(3), size=n)
    proba[np.arange(n), y] += 1.0  # a decent model: the true class usually wins
    proba /= proba.sum(axis=1, keepdims=True)
    return y, proba, np.array([f"g{i // 2}" for i in range(n)])


def _flip(proba: np.ndarray, rows: list[int]) -> np.ndarray:
    out = proba.copy()
    for i in rows:  # move the top class's mass to the next class: a changed label
        top = int(out[i].argmax())
        out[i] = np.roll(out[i], 1) if np.roll(out[i], 1).argmax() != top else np.roll(out[i], 2)
    return out


def test_the_gate_passes_unchanged_labels_and_refuses_changed_ones():
    y, proba, groups = _held_out()
    pred = proba.argmax(1)
    same = judge(y, pred, proba, pred, proba + 0.0, groups, LABELS, resamples=200)
    assert same.passed and same.line.startswith("passed: labels agree on 200/200 held-out images (100.0%)")
    assert same.figures["agreement"] == 1.0 and same.figures["max_prob_diff"] == 0.0
    assert same.figures["auc_diff"] == 0.0 and same.figures["intervals_overlap"] == 1.0

    one = _flip(proba, [0])  # 199/200 = 99.5%: the bar itself passes
    verdict = judge(y, pred, proba, one.argmax(1), one, groups, LABELS, resamples=200)
    assert verdict.passed and verdict.figures["agreement"] == 0.995

    two = _flip(proba, [0, 1])  # 198/200 = 99.0%
    verdict = judge(y, pred, proba, two.argmax(1), two, groups, LABELS, resamples=200)
    assert not verdict.passed
    assert verdict.line.startswith("refused: agreement 99.0% < 99.5% (labels agree on 198/200")
    assert verdict.line.endswith("keeps bf16/fp32") and "\n" not in verdict.line

    # every label changed to a wrong one: agreement 0 and the AUC / macro F1 intervals apart
    wrong = np.roll(proba, 1, axis=1)
    verdict = judge(y, pred, proba, wrong.argmax(1), wrong, groups, LABELS, resamples=200)
    assert not verdict.passed and "AUC intervals do not overlap" in verdict.line
    assert "macro_f1 intervals do not overlap" in verdict.line and verdict.figures["intervals_overlap"] == 0


def test_the_gate_is_switched_by_config_and_a_cpu_without_int8_does_not_pay():
    vnni, avx2 = {"avx2", "avx512_vnni"}, {"avx2", "fma"}
    assert gate_switch("auto", vnni, "3.4.0") == (True, "int8.gate auto, CPU with native int8 (AVX512-VNNI)")
    run, why = gate_switch("auto", avx2, "3.4.0")
    assert not run and "no native int8" in why and "int8.gate: on" in why
    assert gate_switch("on", avx2, "3.4.0")[0]  # asked for: measured anywhere (slow, still correct)
    assert gate_switch("off", vnni, "3.4.0") == (False, "int8.gate is off")
    assert gate_switch("on", vnni, None) == (False, "nncf is not installed")
    assert [int8_support(f) for f in ({"amx_int8", "avx512_vnni"}, {"avx_vnni"}, avx2)] == [
        "AMX-INT8", "AVX-VNNI", "none"]


def test_config_declares_the_int8_section(tmp_path):
    from xray_spark.config import ConfigError, load_config

    cfg = load_config(local=None)
    assert cfg.int8 == Int8Config()  # base.yml states the defaults the dataclass has
    bad = tmp_path / "bad.yml"
    bad.write_text("int8:\n  gate: sometimes\n")
    with pytest.raises(ConfigError, match=re.escape("key 'int8.gate' must be one of auto, on, off")):
        load_config(bad, local=None)


def test_a_calibration_sample_is_named_by_its_content_and_pinned(tmp_path):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (3, 224, 224), dtype=np.uint8)
    hashes = ["c" * 64, "a" * 64, "b" * 64]
    cal = write_calibration(pixels, hashes, "ResNet50", tmp_path)
    assert cal.hashes == ("a" * 64, "b" * 64, "c" * 64)  # sorted: the order never depends on a listing
    again, got = load_calibration(cal.path, cal.digest)
    assert again == cal and np.array_equal(got[0], pixels[1])
    assert write_calibration(pixels[::-1], hashes[::-1], "ResNet50", tmp_path / "b").digest == cal.digest
    with pytest.raises(UserError, match="refusing calibration sample"):
        load_calibration(cal.path, "0" * 64)


def test_only_the_featurizer_runs_int8():
    """int8 needs train's gate, which only DeepImageFeaturizer carries (its int8 Params): sparkdl's
    DeepImagePredictor shares the featurizer's machinery and refuses precision 'int8' in one line."""
    from xray_spark import DeepImageFeaturizer, DeepImagePredictor

    predictor = DeepImagePredictor(weights="none", engine="openvino", precision="int8")
    with pytest.raises(UserError, match="precision 'int8' is for DeepImageFeaturizer models"):
        predictor._validate()
    assert not hasattr(predictor, "calibration") and not predictor.int8Approved()
    assert {"calibration", "calibrationSha256", "int8Gate"} <= set(DeepImageFeaturizer.param_names())


# ------------------------------------------------------------------------- spark: the trained champion


@pytest.fixture(scope="module")
def gate_run(spark, trained, tmp_path_factory):
    """The session's trained run: its ingest output, multiclass champion (loaded from the registry) and the
    gate's inputs at fp32, int8 (calibration drawn from the training split) and int8 calibrated on blank
    images, all through one feature cache."""
    import mlflow
    import mlflow.spark
    from pyspark.ml import PipelineModel

    from conftest import isolate_mlflow
    from xray_spark.config import load_config
    from xray_spark.data.images import image_contents, load_or_ingest
    from xray_spark.evaluation.int8_gate import prepare
    from xray_spark.models.frames import labels_frame

    cfg = load_config(local=None)
    images, summary, _ = load_or_ingest(spark, trained.ingest_dir, trained.ingest_dir, cfg)
    labels = labels_frame(images).cache()
    contents = image_contents(spark, summary, cfg)
    mp = pytest.MonkeyPatch()
    isolate_mlflow(mp)
    try:
        mlflow.set_tracking_uri(trained.tracking_uri)
        mlflow.set_registry_uri(trained.tracking_uri)
        model = mlflow.spark.load_model(trained.champions["multiclass"]["uri"])
    finally:
        mp.undo()
    head = next(s for s in model.stages if isinstance(s, PipelineModel))  # scaler + classifier
    settings = Int8Config(gate="on", min_gate_images=1, calibration_images=32)
    cache = str(tmp_path_factory.mktemp("int8_features"))
    good = prepare(spark, settings, labels, contents, "ResNet50", "none", cache)
    blank = write_calibration(np.full((16, 224, 224), 128, np.uint8), [f"{i:064x}" for i in range(16)],
                              "ResNet50", tmp_path_factory.mktemp("blank"))
    bad = prepare(spark, settings, labels, contents, "ResNet50", "none", cache, calibration=blank)
    yield {"model": model, "head": head, "settings": settings, "good": good, "bad": bad, "cache": cache,
           "labels": labels, "contents": contents, "cfg": cfg}
    for check in (good, bad):
        check.release()
    labels.unpersist()


def test_blank_calibration_is_refused_by_the_gate(gate_run, trained, evidence):
    """A deliberately bad quantisation (calibrated on blank mid-gray images: every real image saturates its
    activation ranges) changes the champion's labels, and the gate refuses it in one line."""
    from xray_spark.evaluation.int8_gate import gate_model
    from xray_spark.tasks import get_task

    task, settings = get_task("multiclass"), gate_run["settings"]
    good = gate_model(gate_run["good"], gate_run["head"], task, settings, resamples=300)
    bad = gate_model(gate_run["bad"], gate_run["head"], task, settings, resamples=300)
    assert gate_run["good"].n == gate_run["bad"].n >= 5  # the test split's images of the small run
    assert not bad.passed and bad.line.startswith("refused: agreement ")
    assert bad.figures["agreement"] < settings.min_agreement <= 1.0
    assert bad.figures["agreement"] < good.figures["agreement"]
    assert bad.figures["max_prob_diff"] > good.figures["max_prob_diff"]
    evidence(f"int8 gate, trained champion (multiclass, {gate_run['good'].n} held-out images, random "
             f"weights): real calibration -> {good.line} | blank calibration -> {bad.line}")


def test_the_trained_run_records_why_its_models_keep_bf16_or_fp32(gate_run, trained):
    """A default train run (int8.gate auto): with 8 held-out images the gate does not measure (or, on a CPU
    without native int8, does not run at all), and every champion says so — in the result, the report, its
    registered version's tag and its saved featurizer, which then never picks int8."""
    from mlflow import MlflowClient

    featurizer = gate_run["model"].stages[1]
    for task, champ in trained.champions.items():
        assert champ["int8"].startswith("not measured: "), champ["int8"]
        version = MlflowClient(tracking_uri=trained.tracking_uri, registry_uri=trained.tracking_uri) \
            .get_model_version(champ["name"], champ["version"])
        assert version.tags["int8_gate"] == champ["int8"], task
    assert featurizer.getInt8Gate() == trained.champions["multiclass"]["int8"]
    assert featurizer.getCalibration() is None and not featurizer.int8Approved()
    assert "## int8 features" in trained.files["report.md"].read_text()


def test_same_calibration_gives_the_same_int8_model_and_records_its_images(gate_run, tmp_path):
    """The int8 IR the Spark workers quantised, quantised again here from the same fp32 IR and calibration
    file (another process, another thread count): the same weights and ranges, byte for byte, and the same
    graph. Its folder lists the calibration images, all from the training split."""
    from xray_spark.features.quantize import quantize_ir

    cal, root = gate_run["good"].calibration, engines.ir_cache_dir()
    folders = [p.parent for p in root.glob("ResNet50/*/key.json")
               if json.loads(p.read_text()).get("calibration") == cal.digest]
    assert len(folders) == 1, folders
    recorded = json.loads((folders[0] / "calibration.json").read_text())
    assert recorded["sha256"] == list(cal.hashes) and recorded["digest"] == cal.digest
    splits = {r.sha256: r.split for r in gate_run["labels"].select("sha256", "split").collect()}
    assert {splits[h] for h in cal.hashes} == {"train"}  # never the test split the gate measures on
    key = json.loads((folders[0] / "key.json").read_text())
    fp32 = ir_folder(root, {k: key[k] for k in engines.ir_key("ResNet50", "", "", "")})  # the IR it came from
    _, pixels = load_calibration(cal.path, cal.digest)
    quantize_ir(fp32 / "model.xml", pixels, "ResNet50", tmp_path / "model.xml")
    assert _sha(tmp_path / "model.bin") == _sha(folders[0] / "model.bin")  # weights and quantiser ranges
    assert _graph(tmp_path / "model.xml") == _graph(folders[0] / "model.xml")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _graph(xml: Path) -> str:
    """The IR's graph without the names OpenVINO numbers per process (`Constant_36202`): nodes, types,
    shapes and edges."""
    return re.sub(r'name="([A-Za-z]+)_\d+"', r'name="\1"', xml.read_text())


def test_the_feature_cache_keeps_precisions_apart(gate_run, spark, caplog):
    """fp32 and int8 features (two calibration samples) in three folders, each row labelled with what made it;
    a cache written before precisions were recorded is not read, and says so."""
    from pyspark.sql import functions as F

    from xray_spark.features.cache import cache_path, featurize_to_cache
    from xray_spark.features.cache_precision import check_precisions
    from xray_spark.features.weights import weights_fingerprint

    cache, good, bad = gate_run["cache"], gate_run["good"], gate_run["bad"]
    fp = weights_fingerprint("ResNet50", "none")
    folder = Path(cache_path(cache, "ResNet50", fp, "fp32")).parent.parent
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["fp32", f"int8-{good.calibration.digest[:16]}", f"int8-{bad.calibration.digest[:16]}"])
    for sub, label in (("fp32", "openvino:fp32"), (f"int8-{good.calibration.digest[:16]}", "openvino:int8")):
        rows = spark.read.parquet(str(folder / sub / "f32"))
        assert {r.engine for r in rows.select("engine").distinct().collect()} == {label}, sub

    # a cache from before (no precision in its path, no engine per row) with zeros for features
    legacy = Path(cache_path(cache, "ResNet50", fp))
    first = spark.read.parquet(str(folder / "fp32" / "f32")).drop("engine")
    zeros = F.array_repeat(F.lit(0.0).cast("float"), 2048)
    first.withColumn("features", zeros).write.parquet(str(legacy))
    keys = first.select("sha256")
    caplog.set_level(logging.INFO, logger="xray_spark")
    got = featurize_to_cache(spark, gate_run["contents"], "ResNet50", "none", cache, keys=keys,
                             precision="fp32", progress=False)
    rows = got.collect()
    assert len(rows) == good.n and {r.engine for r in rows} == {"openvino:fp32"}
    assert all(r.features.toArray().any() for r in rows)  # not the legacy rows' zeros
    assert any("was written before features recorded their precision" in m and str(legacy) in m
               for m in caplog.messages)
    assert any("nothing to compute" in m for m in caplog.messages)

    ran = spark.createDataFrame([("a", "openvino:fp32"), ("b", "openvino:bf16"), ("c", None)],
                                "sha256 string, engine string")
    with pytest.raises(UserError, match=re.escape("bf16 features were asked for, but executors computed 1 as "
                                                  "openvino:fp32")):
        check_precisions(ran, "bf16", "the cache")
    check_precisions(ran.where("sha256 != 'a'"), "bf16", "the cache")  # a decode error has no engine


def test_the_featurizer_picks_int8_only_for_an_approved_model(gate_run, spark, tmp_path):
    """engine 'auto' on an approved featurizer runs int8 where the CPU has native int8 (the same features as
    the gate's), precision 'int8' is refused on a refused model, and the int8 Params persist."""
    from pyspark.ml import PipelineModel

    from xray_spark import DeepImageFeaturizer

    cal = gate_run["good"].calibration
    approved = DeepImageFeaturizer(weights="none", calibration=str(cal.path), calibrationSha256=cal.digest,
                                   int8Gate="passed: test", engineCol="engine")
    PipelineModel(stages=[approved]).write().overwrite().save(str(tmp_path / "pm"))
    loaded = PipelineModel.load(str(tmp_path / "pm")).stages[0]
    assert (loaded.getCalibration(), loaded.getCalibrationSha256(), loaded.getInt8Gate()) == (
        str(cal.path), cal.digest, "passed: test") and loaded.int8Approved()

    q = gate_run["good"].quantised.select("path", "sha256", "features").limit(4).collect()
    rows = [(r.path, bytearray(Path(r.path.removeprefix("file:")).read_bytes())) for r in q]
    df = spark.createDataFrame(rows, "path string, content binary").repartition(2)
    out = {r.path: r for r in loaded.transform(df).select("path", "features", "engine").collect()}
    expected = "openvino:int8" if NATIVE_INT8 else engines.resolve_engine("auto", None).label
    assert {r.engine for r in out.values()} == {expected}
    if NATIVE_INT8:  # the same int8 IR as the gate's workers: the same features
        for r in q:
            np.testing.assert_allclose(out[r.path].features.toArray(), r.features.toArray(), rtol=1e-5,
                                       atol=1e-5)
    refused = DeepImageFeaturizer(weights="none", precision="int8",
                                  int8Gate="refused: agreement 90.0% < 99.5%")
    with pytest.raises(UserError, match=re.escape("refused for this model by train's int8 gate (refused: ")):
        refused.transform(df)
    with pytest.raises(UserError, match="needs a calibration sample"):
        DeepImageFeaturizer(weights="none", engine="openvino", precision="int8").transform(df)


def test_serving_uses_the_precision_the_gate_approved_and_version_says_it(gate_run, trained, tmp_path):
    """The champion's serving bundle, rewritten as if its gate had passed (with the calibration sample) and as
    it is (not measured): /version names the precision that runs and the verdict."""
    from xray_spark.features.weights import weights_fingerprint
    from xray_spark.models.serving_bundle import load_bundle, write_bundle
    from xray_spark.models.serving_mlflow import bundle_for_model
    from xray_spark.serving.app import Settings, version_info
    from xray_spark.serving.predictor import Predictor

    champ = trained.champions["multiclass"]
    original = load_bundle(bundle_for_model(champ["uri"], trained.tracking_uri, cache_dir=tmp_path / "dl"))
    cal = gate_run["good"].calibration
    passed = write_bundle(tmp_path / "passed", head=original.head, backbone=original.backbone,
                          weights_file=original.weights_path,  # the run's seeded init, so its IRs are cached:
                          weights_fingerprint=weights_fingerprint("ResNet50", "none"),
                          meta=replace(original.meta, int8_gate="passed: test"), calibration_file=cal.path)
    bundle = load_bundle(passed)
    assert bundle.int8_ok and bundle.calibration_path.name == cal.path.name
    served = version_info(Predictor(bundle), Settings())
    assert served["int8_gate"] == "passed: test"
    assert served["precision"] == ("int8" if NATIVE_INT8 else engines.resolve_engine("auto", None).precision)
    assert served["engine"] == f"openvino:{served['precision']}"

    as_is = version_info(Predictor(original), Settings())
    assert as_is["int8_gate"] == champ["int8"] and as_is["precision"] in ("fp32", "bf16")
