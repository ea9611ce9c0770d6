"""Batch scoring: incremental, exactly once by content, safe to kill, clear failures.

Real components throughout: Spark local[2], the real DeepImageFeaturizer (ResNet50, seeded random weights),
a LogisticRegression head fitted on its features, a real MLflow sqlite registry, and the real CLI in a
subprocess for the kill test.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from conftest import VIEWFS_ARGS, isolate_mlflow, viewfs
from xray_spark.config import load_config
from xray_spark.errors import UserError
from xray_spark.models.loading import ModelRef, resolve_model
from xray_spark.scoring.lease import LeaseHeld, LeaseInfo
from xray_spark.scoring.plan import plan_run
from xray_spark.scoring.run import default_chunk_size
from xray_spark.scoring.store import LEDGER_SCHEMA, OutputStore, latest_rows

CLASSES = ("covid", "no_findings", "pneumonia")


def _images(ozturk_dir: Path, per_class: int, skip: int = 0) -> list[Path]:
    out: list[Path] = []
    for cls in CLASSES:
        out += sorted((ozturk_dir / cls).iterdir())[skip:skip + per_class]
    return out


def _copy(files: list[Path], dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(f, dest / f"{f.parent.name}__{f.name}")) for f in files]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_output(spark, out: Path):
    return spark.read.parquet(str(out)).toPandas()


def _part_files(out: Path) -> list[Path]:
    return sorted(out.glob("score_date=*/part-*.parquet"))


def _path_ref(name: str = "m") -> ModelRef:
    return ModelRef(uri=f"/models/{name}", load_uri=f"/models/{name}", kind="path", name=name, version="path",
                    mlflow_format=False)


def _registry_ref(name: str, version: str) -> ModelRef:
    uri = f"models:/{name}/{version}"
    return ModelRef(uri=uri, load_uri=uri, kind="registry", name=name, version=version, mlflow_format=True)


def _plant_garbage(out: Path, file_key: str, day: str = "2024-01-01") -> Path:
    """A non-Parquet file named like a committed chunk of the model whose file_key() is `file_key`:
    reading it fails, so any run that reads it fails."""
    garbage = out / f"score_date={day}" / f"part-{file_key}-{os.urandom(16).hex()}.parquet"
    garbage.parent.mkdir(parents=True, exist_ok=True)
    garbage.write_bytes(b"not parquet " * 100)
    return garbage


# ------------------------------------------------------------------------- ledger, commit, lock, plan (fast)


def _ledger_rows(spark, ref: ModelRef, rows: list[tuple[str, str]]):
    from pyspark.sql import functions as F

    now = datetime.now(timezone.utc)
    data = [(p, s, ref.name, ref.version, ref.uri, 1, now, "x") for p, s in rows]
    return spark.createDataFrame(data, LEDGER_SCHEMA).drop("score_date").withColumn("scored_at", F.lit(now))


def test_commit_writes_one_atomic_file_and_the_ledger_reads_only_this_model(spark, tmp_path):
    out = tmp_path / "out"
    mine, other = _path_ref("a"), _path_ref("b")
    store = OutputStore(spark, str(out), mine)
    assert store.ledger().count() == 0  # no output yet: empty ledger, no error
    now = datetime.now(timezone.utc)
    with store.leased(ttl=60, settle=0):
        final = store.commit(_ledger_rows(spark, mine, [("file:/x/1.png", "s1"), ("file:/x/2.png", "s2")])
                             .repartition(3), now)
    other_store = OutputStore(spark, str(out), other)
    with other_store.leased(ttl=60, settle=0):
        other_store.commit(_ledger_rows(spark, other, [("file:/x/3.png", "s3")]), now)
    assert len(_part_files(out)) == 2 and final.endswith(".parquet") and f"part-{mine.file_key()}-" in final
    assert sorted(r.sha256 for r in store.ledger().collect()) == ["s1", "s2"]
    assert not list((out / "_tmp").rglob("*.parquet"))  # nothing left in temp space


def test_ledger_reads_only_this_model_versions_files(spark, tmp_path):
    out = tmp_path / "out[1]"  # glob characters in the output folder are escaped
    v1, v10 = _registry_ref("m", "1"), _registry_ref("m", "10")
    store = OutputStore(spark, str(out), v1)
    out.mkdir()
    _plant_garbage(out, v10.file_key())  # key "m-10" starts with "m-1"
    _plant_garbage(out, f"{v1.file_key()}-0123abcd")  # like a uri-keyed model's "<name>-<version>-<sha1>"
    assert store.ledger().count() == 0  # the folder exists but holds none of m/1's files: empty, no error
    now = datetime.now(timezone.utc)
    with store.leased(ttl=60, settle=0):
        store.commit(_ledger_rows(spark, v1, [("file:/x/1.png", "s1")]), now)
    _plant_garbage(out, v10.file_key(), day=f"{now:%Y-%m-%d}")
    ledger = store.ledger()
    assert sorted(r.sha256 for r in ledger.collect()) == ["s1"]
    assert ledger.columns == ["path", "sha256", "file_size", "modified_at"]
    files = [f.rsplit("/", 1)[-1] for f in store.committed_files()]
    assert len(files) == 1 and files[0].startswith(f"part-{v1.file_key()}-")


def test_default_chunk_size_follows_parallelism(spark):
    assert spark.sparkContext.defaultParallelism == 2 and default_chunk_size(spark) == 512


def test_killed_chunk_in_temp_space_is_invisible_and_cleaned(spark, tmp_path):
    out = tmp_path / "out"
    ref = _path_ref()
    store = OutputStore(spark, str(out), ref)
    # what a run killed after writing a chunk but before its rename leaves behind
    stale = f"{store.tmp_root}/20240101T000000-dead/chunk-1"
    _ledger_rows(spark, ref, [("file:/x/1.png", "s1")]).coalesce(1).write.parquet(stale)
    assert store.ledger().count() == 0  # not committed == not scored
    with store.leased(ttl=60, settle=0):  # only the lease holder cleans
        assert store.clean_stale() == 1
    assert not (out / "_tmp" / ref.file_key()).exists() or not any((out / "_tmp" / ref.file_key()).iterdir())


def test_plan_skips_scored_content_and_reads_only_unknown_files(spark, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for name, data in [("a b.png", b"A"), ("x[1].png", b"B"), ("copy_of_a.png", b"A"), ("c.jpg", b"C"),
                       ("c_again.jpg", b"C"), ("notes.txt", b"T"), ("big.png", b"Z" * 100)]:
        (src / name).write_bytes(data)
    ref = _path_ref()
    # the ledger knows a.png's content under its own path
    listing = spark.read.format("binaryFile").load(str(src / "a b.png")).collect()[0]
    from pyspark.sql import functions as F

    ledger = (_ledger_rows(spark, ref, [(listing.path, hashlib.sha256(b"A").hexdigest())])
              .withColumn("file_size", F.lit(listing.length))
              .withColumn("modified_at", F.lit(listing.modificationTime)))
    plan = plan_run(spark, str(src), ledger.select("path", "sha256", "file_size", "modified_at"),
                    extensions=["png", "jpg"], max_file_bytes=50)
    assert plan.files_seen == 6 and plan.ignored == 1
    assert plan.known_by_path == 1  # "a b.png": not even read
    assert plan.known_by_content == 2  # copy_of_a.png (scored content) + c_again.jpg (duplicate in this run)
    assert [Path(c.path).name for c in plan.candidates] == ["c.jpg", "x[1].png"]  # glob chars are escaped
    assert [(Path(p).name, reason.split(":")[0]) for p, _, _, reason in plan.refused] == [
        ("big.png", "file_too_large")]


def _known(spark, ref: ModelRef, path: Path, sha: str):
    """A one-row ledger: `path` as it is listed now (size, mtime), scored with content `sha`."""
    from pyspark.sql import functions as F

    listing = spark.read.format("binaryFile").load(str(path)).collect()[0]
    return (_ledger_rows(spark, ref, [(listing.path, sha)]).withColumn("file_size", F.lit(listing.length))
            .withColumn("modified_at", F.lit(listing.modificationTime))
            .select("path", "sha256", "file_size", "modified_at"))


def test_a_file_still_being_written_waits_for_min_age(spark, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "old.png").write_bytes(b"OLD")
    os.utime(src / "old.png", (time.time() - 3600, time.time() - 3600))
    growing = src / "arriving.png"
    growing.write_bytes(b"half of it")  # a copy in progress: modified just now
    empty = _ledger_rows(spark, _path_ref(), []).select("path", "sha256", "file_size", "modified_at")
    plan = plan_run(spark, str(src), empty, extensions=["png"], max_file_bytes=1000, min_age_seconds=60)
    assert (plan.files_seen, plan.too_recent, [Path(c.path).name for c in plan.candidates]) == (
        2, 1, ["old.png"])
    growing.write_bytes(b"half of it, and the rest")  # the copy finished a while ago
    os.utime(growing, (time.time() - 120, time.time() - 120))
    plan = plan_run(spark, str(src), empty, extensions=["png"], max_file_bytes=1000, min_age_seconds=60)
    arrived = {Path(c.path).name: c.sha256 for c in plan.candidates}
    assert plan.too_recent == 0
    assert arrived["arriving.png"] == hashlib.sha256(b"half of it, and the rest").hexdigest()


def test_verify_content_catches_a_file_rewritten_with_the_same_size_and_mtime(spark, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    f = src / "a.png"
    f.write_bytes(b"AAAA")
    stamp = (time.time() - 3600, time.time() - 3600)
    os.utime(f, stamp)
    ledger = _known(spark, _path_ref(), f, hashlib.sha256(b"AAAA").hexdigest())
    f.write_bytes(b"BBBB")  # rewritten in place, same size, modification time put back
    os.utime(f, stamp)
    kwargs = dict(extensions=["png"], max_file_bytes=1000)
    plan = plan_run(spark, str(src), ledger, **kwargs)
    assert (plan.known_by_path, plan.candidates) == (1, [])  # the cheap check cannot see it
    plan = plan_run(spark, str(src), ledger, verify_content=True, **kwargs)
    assert plan.known_by_path == 0
    assert [c.sha256 for c in plan.candidates] == [hashlib.sha256(b"BBBB").hexdigest()]
    f.write_bytes(b"AAAA")  # back to the scored content: verified, and skipped as known
    os.utime(f, stamp)
    plan = plan_run(spark, str(src), ledger, verify_content=True, **kwargs)
    assert (plan.known_by_content, plan.candidates) == (1, [])


def test_resolve_rejects_unusable_models_without_spark(tmp_path):
    cfg = load_config(local=None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither a Spark PipelineModel"):
        resolve_model(str(tmp_path / "empty"), cfg)
    with pytest.raises(UserError, match="no such model folder"):
        resolve_model(str(tmp_path / "missing"), cfg)
    cfg.tracking_uri = f"sqlite:///{tmp_path / 'absent.db'}"
    with pytest.raises(UserError, match="does not exist"):
        resolve_model("models:/x@champion", cfg)
    assert not (tmp_path / "absent.db").exists()  # a lookup never creates an empty store


# ------------------------------------------------------------------------------- the real model, end to end


@pytest.fixture(scope="module")
def registered(spark, ozturk_dir, weights_cache, tmp_path_factory):
    """ResNet50 (seeded random weights) + LogisticRegression + IndexToString, registered as @champion. The
    weights (and their OpenVINO model) come from the session's weights cache: built once for every module."""
    import mlflow
    import mlflow.spark
    from pyspark.ml import PipelineModel
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.feature import IndexToString
    from pyspark.sql import functions as F

    from xray_spark.features.featurizer import DeepImageFeaturizer
    from xray_spark.tracking import configure, register_champion

    base = tmp_path_factory.mktemp("score_model")
    with pytest.MonkeyPatch.context() as mp:
        isolate_mlflow(mp)
        mp.setenv("XRAY_SPARK_CACHE", str(weights_cache))
        train = _copy(_images(ozturk_dir, 2, skip=40), base / "train")
        df = spark.read.format("binaryFile").load([str(p) for p in train])
        label = F.regexp_extract("path", r"/(covid|no_findings|pneumonia)__", 1)
        df = df.withColumn("label",
                           F.array_position(F.array(*[F.lit(c) for c in CLASSES]), label).cast("double") - 1)
        featurizer = DeepImageFeaturizer(inputCol="content", outputCol="features", errorCol="featurize_error",
                                         modelName="ResNet50", weights="none")
        feats = featurizer.transform(df).where("features IS NOT NULL").cache()
        head = PipelineModel(stages=[LogisticRegression(maxIter=20, regParam=0.1).fit(feats)])
        feats.unpersist()
        model = PipelineModel(stages=[
            featurizer, head,
            IndexToString(inputCol="prediction", outputCol="predicted_label", labels=list(CLASSES)),
        ])
        uri = f"sqlite:///{base / 'mlflow.db'}"
        configure(uri, base)
        with mlflow.start_run():
            info = mlflow.spark.log_model(model, "model", dfs_tmpdir=str(base / "dfs"),
                                          pip_requirements=["pyspark"])
        register_champion(info.model_uri, "xray-test")
        model.save(str(base / "pipeline"))
        yield {"tracking_uri": uri, "name": "xray-test", "env": dict(os.environ), "base": base,
               "weights": weights_cache}


def _cfg(registered):
    cfg = load_config(local=None)
    cfg.tracking_uri = registered["tracking_uri"]
    return cfg


def _scoring_runs(registered) -> list:
    """The runs `score` logged in the registered model's store (scoring/tracking_run.py), newest first."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=registered["tracking_uri"])
    experiment = client.get_experiment_by_name("xray-spark-scoring")
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def _score(spark, registered, src: Path | str, out: Path | str, capsys, chunk_size: int | None = 4,
           model: str = "models:/xray-test@champion", lease_seconds: float | None = None) -> dict[str, int]:
    from xray_spark.scoring import score_command

    cfg = _cfg(registered)
    if lease_seconds is not None:
        cfg.scoring.lease_seconds = lease_seconds
    cfg.decode.max_file_bytes = 1_000_000  # the test images are < 100 kB
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XRAY_SPARK_CACHE", str(registered["weights"]))
        summary = score_command(lambda: spark, cfg, model=model, input_dir=str(src), output_dir=str(out),
                                chunk_size=chunk_size, min_age_seconds=0)
    assert capsys.readouterr().out == "", "only cli.py prints"
    return {k: int(v) for k, _, v in (line.rpartition(": ") for line in summary.lines()) if v.isdigit()}


def test_incremental_scoring_scores_each_content_once(spark, registered, ozturk_dir, tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    first = _copy(_images(ozturk_dir, 2), src)

    s = _score(spark, registered, src, out, capsys)
    assert (s["files seen"], s["newly scored"], s["quarantined"],
            s["skipped as already scored"]) == (6, 6, 0, 0)
    rows = _read_output(spark, out)
    assert sorted(rows["sha256"]) == sorted(_sha(p) for p in first)
    assert set(rows["status"]) == {"ok"} and set(rows["predicted_label"]) <= set(CLASSES)
    assert rows[[f"prob_{c}" for c in CLASSES]].sum(axis=1).round(6).eq(1.0).all()
    assert set(rows["model_name"]) == {"xray-test"} and set(rows["model_version"]) == {"1"}
    assert set(rows["model_uri"]) == {"models:/xray-test@champion"} and rows["scored_at"].notna().all()
    files_after_first = _part_files(out)

    logged = _scoring_runs(registered)  # the run's counts and drift in the model's MLflow store
    assert len(logged) == 1 and logged[0].data.metrics["newly_scored"] == 6
    assert logged[0].data.tags["model_name"] == "xray-test" and logged[0].data.tags["model_version"] == "1"
    assert not any(k.startswith("drift/") for k in logged[0].data.metrics)  # this model has no shift stage

    s = _score(spark, registered, src, out, capsys)  # nothing new: nothing written, nothing logged
    assert (s["newly scored"], s["quarantined"], s["skipped as already scored"]) == (0, 0, 6)
    assert _part_files(out) == files_after_first
    assert len(_scoring_runs(registered)) == 1

    new = _copy(_images(ozturk_dir, 1, skip=2), src)
    shutil.copy2(first[0], src / "renamed_copy.png")
    (src / "truncated.png").write_bytes(first[1].read_bytes()[:300])
    (src / "garbage.jpg").write_bytes(os.urandom(2048))
    (src / "huge.png").write_bytes(os.urandom(1_200_000))  # over decode.max_file_bytes: never read
    s = _score(spark, registered, src, out, capsys)
    assert (s["files seen"], s["newly scored"], s["quarantined"],
            s["skipped as already scored"]) == (13, 3, 3, 7)
    assert [(r.data.metrics["newly_scored"], r.data.metrics["quarantined"])
            for r in _scoring_runs(registered)][:1] == [(3, 3)]
    rows = _read_output(spark, out)
    assert len(rows) == 12 and rows["sha256"].dropna().is_unique
    bad = rows[rows["status"] == "quarantined"]
    assert sorted(Path(p).name for p in bad["path"]) == ["garbage.jpg", "huge.png", "truncated.png"]
    assert bad["reason"].str.len().gt(0).all() and bad["predicted_label"].isna().all()
    assert bad.loc[bad["path"].str.endswith("huge.png"), "reason"].str.startswith("file_too_large").all()
    assert not rows["path"].str.endswith("renamed_copy.png").any()
    assert set(rows.loc[rows["status"] == "ok", "sha256"]) == {_sha(p) for p in first + new}

    s = _score(spark, registered, src, out, capsys)  # bad content is never retried, copies never rescored
    assert (s["newly scored"], s["quarantined"], s["skipped as already scored"]) == (0, 0, 13)
    assert len(_read_output(spark, out)) == 12


def test_each_model_version_keeps_its_own_ledger(spark, registered, ozturk_dir, tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    _copy(_images(ozturk_dir, 1, skip=5), src)
    assert _score(spark, registered, src, out, capsys)["newly scored"] == 3
    folder = str(registered["base"] / "pipeline")  # the same pipeline as a plain PipelineModel folder
    assert _score(spark, registered, src, out, capsys, model=folder)["newly scored"] == 3
    assert _score(spark, registered, src, out, capsys, model=folder)["skipped as already scored"] == 3
    rows = _read_output(spark, out)
    by_model = rows.groupby(["model_name", "model_version"])["sha256"].nunique().to_dict()
    assert by_model == {("xray-test", "1"): 3, ("pipeline", "path"): 3}
    assert set(rows.loc[rows["model_version"] == "path", "model_uri"]) == {str(Path(folder).resolve())}


def _own_rows(spark, out: Path, ref: ModelRef):
    """This model's rows only (a plain read of `out` would trip over planted garbage files)."""
    return (spark.read.option("basePath", str(out))
            .parquet(*OutputStore(spark, str(out), ref).committed_files()).toPandas())


def test_other_models_files_are_never_read(spark, registered, ozturk_dir, tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    images = _copy(_images(ozturk_dir, 1, skip=7), src)
    # unreadable files named like chunks of versions 10 and 2 of the same registered model (this one is 1)
    _plant_garbage(out, _registry_ref("xray-test", "10").file_key())
    _plant_garbage(out, _registry_ref("xray-test", "2").file_key(),
                   day=f"{datetime.now(timezone.utc):%Y-%m-%d}")
    s = _score(spark, registered, src, out, capsys)
    assert (s["files seen"], s["newly scored"], s["quarantined"],
            s["skipped as already scored"]) == (3, 3, 0, 0)
    s = _score(spark, registered, src, out, capsys)  # now the ledger has files of its own next to the garbage
    assert (s["files seen"], s["newly scored"], s["quarantined"],
            s["skipped as already scored"]) == (3, 0, 0, 3)
    rows = _own_rows(spark, out, _registry_ref("xray-test", "1"))
    assert sorted(rows["sha256"]) == sorted(_sha(p) for p in images)
    assert rows["score_date"].notna().all()


def test_file_names_are_kept_exactly_and_huge_files_are_never_read(spark, registered, ozturk_dir, tmp_path,
                                                                    capsys):
    """Every name is scored as it is, colons (Hadoop's checksummed filesystem cannot open them), newlines
    and `_`-prefixed names (Spark's listing skips them) included; huge, empty and special files get one
    quarantine row each with their true reason, are never read, and are known by path the next run."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    names = ["scan%20one.png", "a+b.png", "with space.png", "ünï.png",  # %20 is literal: no URL decoding
             "2020-03-01T10:22:33.png", "scan:01.png", "new\nline.png", "_scan.png"]
    for name, image in zip(names, _images(ozturk_dir, 3, skip=20)[:8], strict=True):
        shutil.copy2(image, src / name)
    assert len({_sha(src / n) for n in names}) == 8
    with open(src / "huge.png", "wb") as f:  # sparse: 2200 MiB on paper, no blocks on disk
        f.truncate(2200 * 1024 * 1024)
    (src / "empty.png").write_bytes(b"")
    os.mkfifo(src / "fifo.png")
    os.symlink("loop.png", src / "loop.png")
    os.symlink("gone.png", src / "dangling.png")
    (src / ".DS_Store").write_bytes(b"\0")
    refused = {"huge.png": "file_too_large", "empty.png": "empty_file", "fifo.png": "not_a_regular_file",
               "loop.png": "symlink_loop", "dangling.png": "dangling_symlink"}
    s = _score(spark, registered, src, out, capsys, chunk_size=None)  # default: default_chunk_size(spark)
    assert (s["files seen"], s["newly scored"], s["quarantined"],
            s["skipped as already scored"]) == (13, 8, 5, 0)
    assert s["files seen"] == s["newly scored"] + s["quarantined"]
    rows = _read_output(spark, out).set_index("path")
    assert sorted(rows.index) == sorted(f"file:{src / n}" for n in [*names, *refused])
    for name in names:
        row = rows.loc[f"file:{src / name}"]
        assert (row["status"], row["sha256"]) == ("ok", _sha(src / name)) and row["reason"] is None
    for name, reason in refused.items():
        row = rows.loc[f"file:{src / name}"]
        assert (row["status"], row["reason"].split(":")[0], row["sha256"]) == ("quarantined", reason, None)
    assert rows.loc[f"file:{src}/huge.png", "file_size"] == 2200 * 1024 * 1024
    s = _score(spark, registered, src, out, capsys)  # the ledger matches every name: nothing is read again
    assert (s["files seen"], s["newly scored"], s["quarantined"],
            s["skipped as already scored"]) == (13, 0, 0, 13)


def _undecodable_dicom() -> bytes:
    """A DICOM whose transfer syntax (JPEG-LS, or another compressed one) has no installed decoder here."""
    import numpy as np
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.pixels import get_decoder
    from pydicom.uid import HTJ2KLossless, JPEGLosslessSV1, JPEGLSLossless, SecondaryCaptureImageStorage

    syntax = next((u for u in (JPEGLSLossless, JPEGLosslessSV1, HTJ2KLossless)
                   if not get_decoder(u).is_available), None)
    if syntax is None:
        pytest.skip("every compressed transfer syntax has a decoder here")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = syntax
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = SecondaryCaptureImageStorage, "1.2.3.4", "DX"
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = encapsulate([b"\xff\xd8" + np.arange(256, dtype=np.uint8).tobytes() + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_undecodable_file_is_rescored_once_the_decoder_stack_changes(spark, registered, ozturk_dir, tmp_path,
                                                                     capsys, monkeypatch):
    import xray_spark.scoring.store as store_module

    src, out = tmp_path / "in", tmp_path / "out"
    images = _copy(_images(ozturk_dir, 1, skip=60), src)
    (src / "scan.dcm").write_bytes(_undecodable_dicom())
    (src / "notes.jpg").write_bytes(b"not an image\n" * 100)  # the file's own fault: final under any decoder
    monkeypatch.setattr(store_module, "decoder_signature", lambda: "pydicom=3;no JPEG-LS plugin")
    s = _score(spark, registered, src, out, capsys)
    assert (s["files seen"], s["newly scored"], s["quarantined"]) == (5, 3, 2)
    rows = _read_output(spark, out).set_index("path")
    dcm = rows.loc[f"file:{src / 'scan.dcm'}"]
    assert dcm["status"] == "quarantined" and dcm["reason"].startswith("dicom_unsupported: no decoder")
    assert dcm["engine"] is None  # no features were made, so no engine made them
    assert set(rows["decoder"]) == {"pydicom=3;no JPEG-LS plugin"}
    ok = rows[rows["status"] == "ok"]
    assert len(ok) == len(images) and ok["engine"].map(lambda e: bool(re.fullmatch(
        r"(keras|openvino):(fp32|bf16)", str(e)))).all(), ok["engine"]
    assert _score(spark, registered, src, out, capsys)["skipped as already scored"] == 5  # same decoders
    before = _part_files(out)

    monkeypatch.setattr(store_module, "decoder_signature", lambda: "pydicom=3;pillow-jpls=1.3")  # a plugin
    s = _score(spark, registered, src, out, capsys)
    assert (s["newly scored"], s["quarantined"], s["skipped as already scored"]) == (0, 1, 4)
    new = [f for f in _part_files(out) if f not in before]
    assert len(new) == 1
    retried = spark.read.parquet(str(new[0])).toPandas()
    assert list(retried["path"]) == [f"file:{src / 'scan.dcm'}"]  # exactly that file, nothing else
    assert list(retried["decoder"]) == ["pydicom=3;pillow-jpls=1.3"]
    both = _read_output(spark, out)
    assert len(both) == 6  # the earlier quarantine row stays in its committed chunk ...
    current = latest_rows(spark.read.parquet(str(out))).toPandas()
    assert len(current) == 5 and current["sha256"].is_unique  # ... and readers take the newest per image
    assert current.set_index("path").loc[f"file:{src / 'scan.dcm'}", "decoder"] == "pydicom=3;pillow-jpls=1.3"
    s = _score(spark, registered, src, out, capsys)  # tried under these decoders: done until they change
    assert (s["newly scored"], s["quarantined"], s["skipped as already scored"]) == (0, 0, 5)


def _cli(args: list[str], registered, cwd: Path, env: dict[str, str] | None = None,
         **kwargs) -> subprocess.Popen:
    env = {**registered["env"], "MLFLOW_TRACKING_URI": registered["tracking_uri"],
           "XRAY_SPARK_CACHE": str(registered["weights"]), "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "xray_spark", "score", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.e2e
def test_kill_9_mid_run_then_rerun_gives_exactly_one_row_per_image(spark, registered, ozturk_dir, tmp_path,
                                                                   capsys):
    """Over 60 s (~1-2 min): a `score` process with its own JVM is killed after a commit, then the rerun
    scores the rest."""
    src, out = tmp_path / "in", tmp_path / "out"
    images = _copy(_images(ozturk_dir, 4, skip=10), src)
    args = ["--model", "models:/xray-test@champion", "--input", str(src), "--output", str(out),
            "--chunk-size", "2"]
    proc = _cli(args, registered, tmp_path, start_new_session=True)
    _kill_9_after_a_commit(proc, out)
    partial = len(_read_output(spark, out))
    assert 0 < partial < len(images), "the kill must land mid-run for this test to mean anything"

    # the re-run (in this process: its Python workers already hold the backbone, which saves a minute)
    s = _score(spark, registered, src, out, capsys, chunk_size=2)
    assert (s["newly scored"], s["skipped as already scored"]) == (len(images) - partial, partial)
    rows = _read_output(spark, out)
    assert rows["sha256"].is_unique and sorted(rows["sha256"]) == sorted(_sha(p) for p in images)
    assert not list((out / "_tmp").rglob("*.parquet"))  # the killed run's uncommitted chunk is gone


@pytest.mark.e2e
def test_unknown_model_or_missing_input_exit_2_with_one_line_before_any_work(registered, ozturk_dir,
                                                                             tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    _copy(_images(ozturk_dir, 1), src)
    bad_model = _cli(["--model", "models:/nope@champion", "--input", str(src), "--output", str(out),
                      "--retries", "3"], registered, tmp_path)  # exit 2 is never retried
    _, stderr = bad_model.communicate(timeout=120)
    assert bad_model.returncode == 2
    assert len(stderr.strip().splitlines()) == 1 and "nope" in stderr, stderr
    missing = _cli(["--model", "models:/xray-test@champion", "--input", str(tmp_path / "absent"),
                    "--output", str(out)], registered, tmp_path)
    _, stderr = missing.communicate(timeout=120)
    assert missing.returncode == 2 and len(stderr.strip().splitlines()) == 1 and "absent" in stderr, stderr
    zero = _cli(["--model", "models:/xray-test@champion", "--input", str(src), "--output", str(out),
                 "--chunk-size", "0"], registered, tmp_path)
    _, stderr = zero.communicate(timeout=120)
    assert zero.returncode == 2 and len(stderr.strip().splitlines()) == 1 and "chunk-size" in stderr, stderr
    assert not out.exists()  # nothing written, Spark never started


def _kill_9_after_a_commit(proc: subprocess.Popen, out: Path) -> None:
    """kill -9 the driver (started with start_new_session) once it has committed a chunk, and its JVM."""
    try:
        _wait_for_a_commit(proc, out)
        os.kill(proc.pid, signal.SIGKILL)  # kill -9 of the driver, mid-run
        proc.wait(30)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the JVM this driver started, if still alive
        except ProcessLookupError:
            pass


def _wait_for_a_commit(proc: subprocess.Popen, out: Path, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not _part_files(out) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert _part_files(out), (f"no chunk committed: rc={proc.poll()} "
                              f"{proc.stderr.read() if proc.poll() else ''}")


@pytest.mark.e2e
def test_overlapping_runs_under_viewfs_score_each_image_once(spark, registered, ozturk_dir, tmp_path, capsys):
    """Two runs of one model into one output, the second started while the first works (the scenario that
    scored every image twice when the only guard was a local flock), with a viewfs default filesystem.
    One file is still being written when the first run lists the folder: --min-age leaves it for later.
    Over 60 s (~1-2 min): two `score` processes, each with its own JVM and featurizing workers."""
    src, out = tmp_path / "in", tmp_path / "out"
    images = _copy(_images(ozturk_dir, 3, skip=30), src)  # copy2 keeps the originals' old mtimes
    arriving = src / "arriving.png"
    arriving.write_bytes(images[0].read_bytes()[:500])  # a copy in progress, modified just now
    args = ["--model", "models:/xray-test@champion", "--input", str(src), "--output", str(out),
            "--chunk-size", "2", "--min-age", "300", *VIEWFS_ARGS]
    first = _cli(args, registered, tmp_path)
    try:
        deadline = time.time() + 240
        while not list(out.glob("_leases/*/*.json")) and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, first.stderr.read()
        second = _cli(args, registered, tmp_path)  # the first has just taken the lease
        _, second_err = second.communicate(timeout=300)
        out1, err1 = first.communicate(timeout=600)
    finally:
        first.kill()
    assert second.returncode == 75, second_err
    assert [line for line in second_err.splitlines() if line.startswith("xray-spark:")] == [
        next(line for line in second_err.splitlines() if "holds the lease" in line)]
    assert first.returncode == 0, err1[-3000:]
    assert f"newly scored: {len(images)}" in out1  # nothing of the first run's work was lost
    assert "left for the next run (younger than --min-age): 1" in out1
    rows = _read_output(spark, out)
    assert len(rows) == len(images) and rows["sha256"].is_unique
    assert rows["path"].str.startswith("viewfs://v/").all()
    assert sorted(rows["sha256"]) == sorted(_sha(p) for p in images)

    arriving.write_bytes(images[0].read_bytes()[:500] + b"the rest")  # finished, some time ago
    os.utime(arriving, (time.time() - 600, time.time() - 600))
    s = _score(spark, registered, viewfs(src), viewfs(out), capsys)
    assert (s["newly scored"] + s["quarantined"], s["skipped as already scored"]) == (1, len(images))
    rows = _read_output(spark, out)
    assert len(rows) == len(images) + 1 and rows["sha256"].is_unique


@pytest.mark.e2e
def test_kill_9_under_viewfs_waits_for_the_lease_then_scores_exactly_once(spark, registered, ozturk_dir,
                                                                           tmp_path, capsys):
    """Over 60 s (~1-2 min): a `score` process with its own JVM is killed holding the lease; the rerun waits
    for the lease to end, then scores."""
    src, out = tmp_path / "in", tmp_path / "out"
    images = _copy(_images(ozturk_dir, 3, skip=50), src)
    conf = tmp_path / "score.yml"
    conf.write_text("scoring:\n  lease_seconds: 8\n")
    proc = _cli(["--config", str(conf), "--model", "models:/xray-test@champion", "--input", str(src),
                 "--output", str(out), "--chunk-size", "2", *VIEWFS_ARGS], registered, tmp_path,
                start_new_session=True)
    _kill_9_after_a_commit(proc, out)
    killed_at = time.time()
    partial = len(_read_output(spark, out))
    assert 0 < partial < len(images), "the kill must land mid-run for this test to mean anything"
    leases = list((out / "_leases").rglob("*.json"))
    assert len(leases) == 1

    def dead_lease() -> LeaseInfo:
        # read as a rerun reads it: a kill during a heartbeat's rewrite leaves the file empty (Hadoop's
        # create(overwrite) truncates first), and such a file counts as renewed when last modified
        text = leases[0].read_text()
        return LeaseInfo.from_json(text, 1, leases[0].stat().st_mtime, 8)

    assert dead_lease().local_lock is False  # viewfs: no flock

    # within the dead run's lease: nothing is touched (its staged chunk may still be committed by it)
    with pytest.raises(LeaseHeld, match="holds the lease"):
        _score(spark, registered, viewfs(src), viewfs(out), capsys, chunk_size=2, lease_seconds=8)
    assert len(_read_output(spark, out)) == partial

    time.sleep(max(0.0, dead_lease().renewed_at + 8 - time.time()) + 0.5)
    assert time.time() - killed_at < 60
    s = _score(spark, registered, viewfs(src), viewfs(out), capsys, chunk_size=2, lease_seconds=8)
    assert (s["newly scored"], s["skipped as already scored"]) == (len(images) - partial, partial)
    rows = _read_output(spark, out)
    assert rows["sha256"].is_unique and sorted(rows["sha256"]) == sorted(_sha(p) for p in images)
    assert not list((out / "_tmp").rglob("*.parquet"))  # the killed run's leftovers, cleaned after expiry
    assert not list((out / "_leases").rglob("*.json"))  # and the lease released


@pytest.mark.e2e
def test_unreachable_tracking_server_exits_75_and_is_retried_only_then(registered, ozturk_dir, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    _copy(_images(ozturk_dir, 1), src)
    with socket.socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = f"http://127.0.0.1:{port}"
    env = {"MLFLOW_TRACKING_URI": server, "MLFLOW_REGISTRY_URI": server,
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}  # fail fast
    proc = _cli(["--model", "models:/xray-test@champion", "--input", str(src), "--output", str(out),
                 "--retries", "1", "--retry-wait", "0.1"], registered, tmp_path, env=env)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 75, stderr
    failures = [line for line in stderr.splitlines() if line.startswith("xray-spark:")]
    assert len(failures) == 2 and all("unreachable" in line for line in failures), stderr  # tried twice
    assert not out.exists()

    # an output filesystem that cannot be reached (an HDFS namenode that is down): the real HDFS client
    hdfs_out = f"hdfs://127.0.0.1:{port}/predictions"
    proc = _cli(["--model", str(registered["base"] / "pipeline"), "--input", str(src), "--output", hdfs_out,
                 "--conf", "spark.hadoop.ipc.client.connect.max.retries=0"], registered, tmp_path)
    _, stderr = proc.communicate(timeout=300)
    failures = [line for line in stderr.splitlines() if line.startswith("xray-spark:")]
    assert proc.returncode == 75 and len(failures) == 1 and "java.net.ConnectException" in failures[0], stderr
