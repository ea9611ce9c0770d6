"""Ingest on the real Ozturk data plus bad files: counts reconcile, nothing crashes, the split has no leak."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from ingest_fixtures import EXPECTED, write_bad_files
from xray_spark.config import load_config
from xray_spark.data.ingest import ingest
from xray_spark.data.layout import IngestLayout
from xray_spark.paths import local_path

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
    """The real console command on the whole dataset with a driver result limit of 4 MiB: per-image data
    (thumbnails, bytes) must stay on executors, or Spark refuses to bring it to the driver. Over 60 s: all
    1,124 images are decoded, hashed and compared, in a process of its own (the limit is set at JVM start)."""
    out = tmp_path_factory.mktemp("ingest_out")
    proc = subprocess.run([*CLI, "ingest", "--data", str(dirty_copy), "--out", str(out),
                           "--conf", "spark.driver.maxResultSize=4m"], capture_output=True, text=True,
                         timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    layout = IngestLayout(f"file:{out}")
    summary = json.loads((out / "summary.json").read_text())
    return SimpleNamespace(summary=summary, layout=layout, out_dir=out, stdout=proc.stdout,
                           images=spark.read.parquet(layout.images).toPandas())


def test_real_images_all_ok_and_counts_reconcile(ingested) -> None:
    s = ingested.summary
    assert s["ok"] == 1124
    assert s["per_class_ok"] == {"covid": 124, "no_findings": 500, "pneumonia": 500}
    assert s["files_read"] == s["ok"] + s["quarantined"] == 1124 + len(EXPECTED) + 2


def test_every_bad_file_quarantined_with_its_own_reason(ingested) -> None:
    q = ingested.images[ingested.images["status"] == "quarantined"].copy()
    q["name"] = q["path"].map(lambda p: p.rsplit("/", 1)[-1])
    codes = dict(zip(q["name"], q["reason"].str.split(":").str[0], strict=True))
    for name, code in EXPECTED.items():
        assert codes[name] == code, (name, q.set_index("name").loc[name, "reason"])
    assert codes["not_a_class.jpg"] == "unknown_label"
    assert codes["listed_but_missing.png"] == "missing_file"
    assert len(set(EXPECTED.values())) >= 7


def test_images_table_schema_and_metadata(ingested) -> None:
    table = ingested.images
    for col in ["path", "sha256", "label", "source", "patient_id", "width", "height", "format", "mode",
                "bit_depth", "file_size", "status", "reason", "split", "fold", "group_id"]:
        assert col in table.columns
    ok = table[table["status"] == "ok"]
    nih = ok[ok["label"] != "covid"]
    assert set(nih["format"]) == {"PNG"} and nih["width"].eq(320).all()  # downscaled NIH PNGs
    assert ok["sha256"].str.len().eq(64).all() and ok["reason"].isna().all()
    assert table[table["status"] != "ok"]["reason"].notna().all()


def test_split_is_grouped_stratified_and_persisted(ingested) -> None:
    split = pd.read_csv(local_path(ingested.layout.split_csv))
    assert len(split) == 1124 and set(split["split"]) == {"train", "test"}
    with_patient = split.dropna(subset=["patient_id"])
    sides = with_patient.groupby("patient_id")["split"].nunique()
    assert (sides == 1).all(), sides[sides > 1]
    assert (split.groupby("group_id")["split"].nunique() == 1).all()
    test_share = (split["split"] == "test").mean()
    assert 0.15 < test_share < 0.25
    by_class = split.groupby("label")["split"].apply(lambda s: (s == "test").mean())
    assert (by_class.between(0.12, 0.28)).all(), by_class


def test_duplicates_found_on_executors_match_the_known_pairs(ingested) -> None:
    """The Ozturk copy holds 1 byte-identical pair and 4 near-duplicate pairs (286 pHash candidates at <= 8
    bits, the rest rejected by pixel correlation); they join 803 groups with the patients."""
    d = ingested.summary["duplicates"]
    assert (d["n_exact_pairs"], d["n_near_pairs"], d["n_candidates"]) == (1, 4, 286)
    assert d["n_rejected_candidates"] == 282 and d["n_groups"] == 5
    assert ingested.summary["split"]["groups"] == 803
    dup_dir = local_path(ingested.layout.duplicates)
    pairs = pd.read_csv(dup_dir / "duplicates_pairs.csv")
    assert sorted(pairs["kind"]) == ["exact", "near", "near", "near", "near"]
    assert (pairs["correlation"] >= 0.95).all() and not pairs["path_a"].str.startswith("/").any()  # relative
    assert len(pd.read_csv(dup_dir / "rejected_candidates.csv")) == 282
    groups = pd.read_csv(dup_dir / "duplicate_groups.csv")
    split = pd.read_csv(local_path(ingested.layout.split_csv)).set_index("rel_path")
    for _, g in groups.groupby("dup_group"):  # a duplicate group never straddles the split
        assert split.loc[g["path"], "split"].nunique() == 1
    assert "## All groups" in (dup_dir / "duplicates.md").read_text()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["ingest", "--data", "/does/not/exist", "--out", "OUT"], "does not exist"),
        (["ingest", "--data", "EMPTY", "--out", "OUT"], "empty"),
        (["ingest", "--out", "OUT"], "--data"),
        (["ingest", "--data", "EMPTY", "--out", "OUT", "--conf", "novalue"], "KEY=VALUE"),
    ],
)
@pytest.mark.e2e
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


@pytest.mark.e2e
def test_cli_ingest_small_folder_exit_0(spark, ozturk_dir: Path, tmp_path: Path, capsys) -> None:
    """The CLI's `main` (what the console script calls) on class folders (no manifest) with bad files, on
    the shared session: exit 0, summary printed. (The console script in a process of its own: `ingested`.)"""
    from xray_spark.cli import main

    data = tmp_path / "data"
    for label, folder in (("Covid-19", "covid"), ("No_findings", "no_findings")):
        (data / label).mkdir(parents=True)
        for p in sorted((ozturk_dir / folder).iterdir())[:3]:
            shutil.copy(p, data / label / p.name)
    write_bad_files(data / "Covid-19")
    code = main(["ingest", "--data", str(data), "--out", str(tmp_path / "out")])
    out = capsys.readouterr()
    assert code == 0, out.err[-2000:]
    assert f"files read: {6 + len(EXPECTED)} = ok 6 + quarantined {len(EXPECTED)}" in out.out
    split = pd.read_csv(tmp_path / "out" / "split.csv")
    # folder names mapped through config
    assert len(split) == 6 and set(split["label"]) == {"covid", "no_findings"}
    assert split["patient_id"].dropna().str.startswith("nih-").all()


def test_a_later_run_reuses_ingest_only_while_folder_and_settings_match(spark, ozturk_dir: Path,
                                                                        tmp_path: Path) -> None:
    """train/featurize reuse `--out/ingest`; a changed folder or split seed must not reuse a stale split."""
    from conftest import copy_subset
    from xray_spark.data.images import existing_ingest, load_or_ingest

    data = copy_subset(ozturk_dir, tmp_path / "data", per_class=4)
    cfg = load_config(local=None)
    images, first, _ = load_or_ingest(spark, str(data), str(tmp_path / "out"), cfg)
    assert images.count() == 12
    written = (tmp_path / "out" / "ingest" / "summary.json").stat().st_mtime_ns
    _, again, _ = load_or_ingest(spark, str(data), str(tmp_path / "out"), cfg)
    assert again["ingest_key"] == first["ingest_key"]
    assert (tmp_path / "out" / "ingest" / "summary.json").stat().st_mtime_ns == written  # reused, not rerun

    shutil.copy(next((ozturk_dir / "covid").iterdir()), data / "covid" / "added_later.png")
    images, grown, _ = load_or_ingest(spark, str(data), str(tmp_path / "out"), cfg)
    assert grown["ingest_key"] != first["ingest_key"] and images.count() == 13

    cfg.split.seed = 1  # same folder, another split: the ingest there is not reused (a new one would run)
    assert existing_ingest(spark, str(data), str(tmp_path / "out"), cfg) is None
    cfg.split.seed = load_config(local=None).split.seed
    assert existing_ingest(spark, str(data), str(tmp_path / "out"), cfg) is not None


def test_odd_names_huge_empty_and_special_files_each_get_a_row(spark, ozturk_dir: Path,
                                                               tmp_path: Path) -> None:
    """Names with a percent-escape, '+', a space, a colon (Hadoop's checksummed filesystem cannot open
    them), a newline, non-ASCII or a leading `_` (Spark's listing skips those) are all read as they are; a
    sparse file over 2 GiB is quarantined from its length without being read (Spark's binaryFile cannot
    hold it); an empty file, a FIFO, a symlink loop and a dangling link get rows with their true reasons;
    `.`-prefixed OS clutter is skipped."""
    data = tmp_path / "data"
    real = sorted((ozturk_dir / "no_findings").iterdir())
    odd = ["scan%20one.png", "a+b.png", "with space.png", "ünïcödé.png", "2020-03-01T10:22:33.png",
           "scan:01.png", "new\nline.png", "_hidden.png"]
    for label, offset in (("covid", 0), ("no_findings", 10), ("pneumonia", 20)):
        (data / label).mkdir(parents=True)
        for i in range(3):
            shutil.copy(real[offset + i], data / label / f"plain{i}.png")
    for i, name in enumerate(odd):
        shutil.copy(real[40 + i], data / "covid" / name)
    with open(data / "pneumonia" / "huge.png", "wb") as fh:
        fh.truncate(2200 * 1024 * 1024)  # sparse: takes no disk space
    (data / "pneumonia" / "empty.png").write_bytes(b"")
    os.mkfifo(data / "no_findings" / "fifo.png")
    os.symlink("loop.png", data / "no_findings" / "loop.png")
    os.symlink("gone.png", data / "no_findings" / "dangling.png")
    (data / "no_findings" / ".DS_Store").write_bytes(b"\0")
    result = ingest(spark, str(data), str(tmp_path / "out"), load_config(local=None))
    rows = result.images.toPandas().set_index("rel_path")
    for name in odd:
        row = rows.loc[f"covid/{name}"]
        assert row["status"] == "ok" and row["path"] == f"file:{data}/covid/{name}", row.to_dict()
    reasons = {rel: r.split(":")[0] for rel, r in rows["reason"].dropna().items()}
    assert reasons == {"pneumonia/huge.png": "file_too_large", "pneumonia/empty.png": "empty_file",
                       "no_findings/fifo.png": "not_a_regular_file", "no_findings/loop.png": "symlink_loop",
                       "no_findings/dangling.png": "dangling_symlink"}
    assert rows.loc["pneumonia/huge.png", "reason"].startswith("file_too_large: 2306867200 bytes")
    s = result.summary
    assert s["files_read"] == 9 + len(odd) + 5 == s["ok"] + s["quarantined"] and s["quarantined"] == 5
