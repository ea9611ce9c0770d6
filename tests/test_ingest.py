"""Ingest on the real Ozturk data plus bad files: counts reconcile, nothing crashes, the split has no leak."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ingest_fixtures import EXPECTED, write_bad_files
from xray_spark.config import load_config
from xray_spark.data.ingest import ingest

CLI = [sys.executable, "-m", "xray_spark"]


@pytest.fixture(scope="module")
def dirty_copy(ozturk_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real dataset plus 9 kinds of bad files, an unmapped class folder and a listed-but-missing file."""
    root = tmp_path_factory.mktemp("ozturk_dirty") / "data"
    shutil.copytree(ozturk_dir, root)
    bad = write_bad_files(root / "covid")
    (root / "cats").mkdir()
    shutil.copy(next((ozturk_dir / "covid").iterdir()), root / "cats" / "not_a_class.jpg")
    with open(root / "manifest.csv", "a", newline="") as fh:
        w = csv.writer(fh)
        for p in bad:
            w.writerow([f"covid/{p.name}", "covid", "test", "", "", "", "", "", "", ""])
        w.writerow(["cats/not_a_class.jpg", "cat", "test", "", "", "", "", "", "", ""])
        w.writerow(["covid/listed_but_missing.png", "covid", "test", "", "", "", "", "", "", ""])
    return root


@pytest.fixture(scope="module")
def ingested(spark, dirty_copy: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("ingest_out")
    return ingest(spark, dirty_copy, out, load_config(local=None))


def test_real_images_all_ok_and_counts_reconcile(ingested) -> None:
    s = ingested.summary
    assert s["ok"] == 1124
    assert s["per_class_ok"] == {"covid": 124, "no_findings": 500, "pneumonia": 500}
    assert s["files_read"] == s["ok"] + s["quarantined"] == 1124 + len(EXPECTED) + 2


def test_every_bad_file_quarantined_with_its_own_reason(ingested) -> None:
    q = ingested.images[ingested.images["status"] == "quarantined"].copy()
    q["name"] = q["path"].map(lambda p: Path(p).name)
    codes = dict(zip(q["name"], q["reason"].str.split(":").str[0], strict=True))
    for name, code in EXPECTED.items():
        assert codes[name] == code, (name, q.set_index("name").loc[name, "reason"])
    assert codes["not_a_class.jpg"] == "unknown_label"
    assert codes["listed_but_missing.png"] == "missing_file"
    assert len(set(EXPECTED.values())) >= 7


def test_images_table_schema_and_metadata(ingested, spark) -> None:
    table = spark.read.parquet(str(ingested.files["images"])).toPandas()
    for col in ["path", "sha256", "label", "source", "patient_id", "width", "height", "format", "mode",
                "bit_depth", "file_size", "status", "reason", "split", "fold", "group_id"]:
        assert col in table.columns
    ok = table[table["status"] == "ok"]
    nih = ok[ok["label"] != "covid"]
    assert set(nih["format"]) == {"PNG"} and nih["width"].eq(320).all()  # downscaled NIH PNGs
    assert ok["sha256"].str.len().eq(64).all() and ok["reason"].isna().all()
    assert table[table["status"] != "ok"]["reason"].notna().all()


def test_split_is_grouped_stratified_and_persisted(ingested) -> None:
    split = pd.read_csv(ingested.files["split.csv"])
    assert len(split) == 1124 and set(split["split"]) == {"train", "test"}
    with_patient = split.dropna(subset=["patient_id"])
    sides = with_patient.groupby("patient_id")["split"].nunique()
    assert (sides == 1).all(), sides[sides > 1]
    assert (split.groupby("group_id")["split"].nunique() == 1).all()
    test_share = (split["split"] == "test").mean()
    assert 0.15 < test_share < 0.25
    by_class = split.groupby("label")["split"].apply(lambda s: (s == "test").mean())
    assert (by_class.between(0.12, 0.28)).all(), by_class


def test_duplicates_report_written(ingested) -> None:
    dup_dir = ingested.out_dir / "duplicates"
    assert (dup_dir / "duplicates.md").is_file() and (dup_dir / "duplicate_groups.csv").is_file()
    assert ingested.summary["duplicates"]["n_candidates"] >= ingested.summary["duplicates"]["n_near_pairs"]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["ingest", "--data", "/does/not/exist", "--out", "OUT"], "does not exist"),
        (["ingest", "--data", "EMPTY", "--out", "OUT"], "empty"),
        (["ingest", "--out", "OUT"], "--data"),
        (["ingest", "--data", "EMPTY", "--out", "OUT", "--conf", "novalue"], "KEY=VALUE"),
    ],
)
def test_bad_arguments_one_line_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    (tmp_path / "empty").mkdir()
    args = [a.replace("EMPTY", str(tmp_path / "empty")).replace("OUT", str(tmp_path / "out")) for a in args]
    if "--conf" in args:  # reach the --conf check: a non-empty folder
        (tmp_path / "empty" / "a.png").write_bytes(b"x")
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_ingest_small_folder_exit_0(ozturk_dir: Path, tmp_path: Path) -> None:
    """The real console entry point on class folders (no manifest) with bad files: exit 0, summary printed."""
    data = tmp_path / "data"
    for label, folder in (("Covid-19", "covid"), ("No_findings", "no_findings")):
        (data / label).mkdir(parents=True)
        for p in sorted((ozturk_dir / folder).iterdir())[:3]:
            shutil.copy(p, data / label / p.name)
    write_bad_files(data / "Covid-19")
    proc = subprocess.run([*CLI, "ingest", "--data", str(data), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"files read: {6 + len(EXPECTED)} = ok 6 + quarantined {len(EXPECTED)}" in proc.stdout
    split = pd.read_csv(tmp_path / "out" / "split.csv")
    assert set(split["label"]) == {"covid", "no_findings"}  # folder names mapped through config
    assert split["patient_id"].dropna().str.startswith("nih-").all()


def test_a_later_run_reuses_ingest_only_while_folder_and_settings_match(spark, ozturk_dir: Path,
                                                                        tmp_path: Path) -> None:
    """train/featurize reuse `--out/ingest`; a changed folder or split seed must not reuse a stale split."""
    from conftest import copy_subset
    from xray_spark.data.images import load_or_ingest

    data = copy_subset(ozturk_dir, tmp_path / "data", per_class=4)
    cfg = load_config(local=None)
    images, first = load_or_ingest(spark, data, tmp_path / "out", cfg)
    assert len(images) == 12
    written = (tmp_path / "out" / "ingest" / "summary.json").stat().st_mtime_ns
    _, again = load_or_ingest(spark, data, tmp_path / "out", cfg)
    assert again["ingest_key"] == first["ingest_key"]
    assert (tmp_path / "out" / "ingest" / "summary.json").stat().st_mtime_ns == written  # reused, not rerun

    shutil.copy(next((ozturk_dir / "covid").iterdir()), data / "covid" / "added_later.png")
    images, grown = load_or_ingest(spark, data, tmp_path / "out", cfg)
    assert grown["ingest_key"] != first["ingest_key"] and len(images) == 13

    cfg.split.seed = 1
    _, reseeded = load_or_ingest(spark, data, tmp_path / "out", cfg)
    assert reseeded["ingest_key"] != grown["ingest_key"]
