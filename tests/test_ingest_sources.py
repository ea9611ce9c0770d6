"""Several sources in one ingest (`--data ozturk=DIR --data figure1=DIR`): every image keeps its source, ids
stay unique, and one image published by two sources is one group that never straddles the split."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import copy_subset
from xray_spark.config import load_config
from xray_spark.data.files import DataArg, parse_data_args
from xray_spark.data.images import existing_ingest, load_or_ingest
from xray_spark.data.ingest import ingest
from xray_spark.errors import UserError


def test_data_arguments_name_their_sources():
    assert parse_data_args("/data/x") == [DataArg("/data/x")]
    assert parse_data_args(["ozturk=/d/o", "figure1=/d/f"]) == [DataArg("/d/o", "ozturk"),
                                                                DataArg("/d/f", "figure1")]
    assert parse_data_args("/data/run=3/x") == [DataArg("/data/run=3/x")]  # a path with '=' is a path
    assert parse_data_args(["/a/ozturk", "/b/figure1"]) == [DataArg("/a/ozturk"), DataArg("/b/figure1")]
    with pytest.raises(UserError, match="ozturk"):
        parse_data_args(["/a/ozturk", "/b/ozturk"])  # two folders with one name: name them
    with pytest.raises(UserError, match="given twice"):
        parse_data_args(["x=/a", "x=/b"])


@pytest.fixture(scope="module")
def merged(spark, ozturk_dir: Path, data_root: Path,
           tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """ozturk (4 per class) + figure1 (6 COVID, 3 No-findings, and one ozturk COVID image republished),
    with the selection.json `fetch` writes beside figure1's manifest, ingested once for this module."""
    root = tmp_path_factory.mktemp("merged")
    ozturk = copy_subset(ozturk_dir, root / "o", per_class=4)
    figure1 = root / "f"
    for label, n in (("covid", 6), ("no_findings", 3)):
        (figure1 / label).mkdir(parents=True)
        for p in sorted((data_root / "figure1" / label).iterdir())[:n]:
            shutil.copy(p, figure1 / label / p.name)
    shared = sorted((ozturk / "covid").iterdir())[0]
    shutil.copy(shared, figure1 / "covid" / "republished.png")  # the same image, published by both sources
    # what `fetch` left out of a source reaches the merge's report (data/fetched.py writes selection.json)
    (figure1 / "selection.json").write_text(json.dumps({"source": "figure1", "kept": {"covid": 6},
                                                        "left_out": {"view L": 2, "modality CT": 1}}))
    data = [f"ozturk={ozturk}", f"figure1={figure1}"]
    result = ingest(spark, data, str(root / "ingest"), load_config(local=None))  # where load_or_ingest looks
    return SimpleNamespace(root=root, ozturk=ozturk, figure1=figure1, shared=shared, data=data, result=result)


def test_two_sources_in_one_ingest(spark, merged: SimpleNamespace):
    ozturk, figure1, shared, data, result = (merged.ozturk, merged.figure1, merged.shared, merged.data,
                                             merged.result)
    cfg = load_config(local=None)
    images = result.images.toPandas()
    ok = images[images["status"] == "ok"]
    assert len(images) == 12 + 10 and len(ok) == 22
    assert ok.groupby("source").size().to_dict() == {"figure1": 10, "ozturk": 12}
    assert ok["rel_path"].str.split("/").str[0].eq(ok["source"]).all()  # rel paths carry their source
    assert images["path"].is_unique
    pair = ok[ok["sha256"] == ok.loc[ok["rel_path"] == f"ozturk/covid/{shared.name}", "sha256"].iloc[0]]
    assert sorted(pair["source"]) == ["figure1", "ozturk"]
    assert pair["group_id"].nunique() == 1 and pair["split"].nunique() == 1  # never on both sides
    assert result.summary["data_dirs"] == [f"file:{ozturk}", f"file:{figure1}"]
    assert result.summary["per_source"] == {"figure1": {"ok": 10, "quarantined": 0},
                                            "ozturk": {"ok": 12, "quarantined": 0}}

    # the same sources again: the earlier ingest is reused; renaming a source makes it a different dataset
    written = (merged.root / "ingest" / "summary.json").stat().st_mtime_ns
    _, reused, _ = load_or_ingest(spark, data, str(merged.root), cfg)
    assert reused["ingest_key"] == result.summary["ingest_key"]
    assert (merged.root / "ingest" / "summary.json").stat().st_mtime_ns == written
    assert existing_ingest(spark, [f"ozturk={ozturk}", f"fig1={figure1}"], str(merged.root), cfg) is None


def test_leave_one_source_out_puts_held_out_sources_beside_internal(spark, merged: SimpleNamespace,
                                                                   monkeypatch):
    """ozturk (3 classes) + figure1 (COVID and No-findings), trained from the module's ingest output: figure1
    can be held out of the multiclass task; ozturk cannot (figure1 alone has no pneumonia to train on) and
    the report says why."""
    import mlflow

    from conftest import isolate_mlflow
    from xray_spark.train.calibrate import calibration_settings
    from xray_spark.train.run import TrainSpec, run_training

    isolate_mlflow(monkeypatch)
    spec = TrainSpec(data=str(merged.root / "ingest"), out_dir=str(merged.root / "train"),
                     backbones=["ResNet50"], heads=["lr"], tasks=["multiclass"], weights="none", loso=True,
                     baseline=False)
    cfg = load_config(local=None)
    calibration_settings(cfg).method = "none"  # held-out sources are checked here, the temperature elsewhere
    result = run_training(spark, cfg, spec)
    report = result.files["report.md"].read_text()
    sources = report[report.index("## Sources"):report.index("## Per source")]
    assert "| figure1 | 10 | 0 | view L 2; modality CT 1 |" in sources, sources
    assert "| ozturk | 12 | 0 | n/a (not fetched) |" in sources
    assert "found and grouped: 1 pair(s)" in sources  # republished.png, an exact copy
    by_source = report[report.index("## Per source (internal test split)"):report.index("## Leave-one")]
    assert "| figure1 |" in by_source and "| ozturk |" in by_source  # both sources in the test split
    section = report[report.index("## Leave-one-source-out"):]
    assert "held out figure1" in section and "held-out figure1 (n=10)" in section
    assert "not held out: ozturk (the other sources have no pneumonia to train on)" in section
    runs = mlflow.MlflowClient(tracking_uri=result.tracking_uri).search_runs(
        [mlflow.get_experiment_by_name("xray-spark").experiment_id],
        filter_string="tags.kind = 'leave-one-source-out'")
    assert [(r.data.tags["held_out"], r.data.tags["task"]) for r in runs] == [("figure1", "multiclass")]
    assert 0 <= runs[0].data.metrics["accuracy"] <= 1
