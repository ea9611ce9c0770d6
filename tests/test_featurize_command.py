"""`xray-spark featurize` end to end on a raw folder: one listing and one pass over the bytes, no ingest,
counts that reconcile with every file of the folder; an ingest of the same folder then finds its features."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("weights_cache")

MAX_BYTES = 90_000  # decode.max_file_bytes for this test: one real image is over it


def _folder(ozturk_dir: Path, dest: Path) -> dict[str, int]:
    """Class folders with real images plus every kind of file a real folder holds; returns what was put."""
    covid = sorted((ozturk_dir / "covid").iterdir(), key=lambda p: p.stat().st_size)
    pneumonia = sorted((ozturk_dir / "pneumonia").iterdir())[:2]
    small, big = covid[:2], covid[-1]
    assert big.stat().st_size > MAX_BYTES > max(p.stat().st_size for p in small + pneumonia)
    for p in small + [big]:
        (dest / "covid").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, dest / "covid" / p.name)
    for p in pneumonia:
        (dest / "pneumonia").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, dest / "pneumonia" / p.name)
    shutil.copyfile(small[0], dest / "pneumonia" / "copy-of-a-covid-image.png")  # same content, 2nd path
    (dest / "covid" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really")  # decodes to an error
    (dest / "README.md").write_text("never an image, never counted")
    (dest / "covid" / "empty.png").write_bytes(b"")  # Spark's listing skips empty files
    shutil.copyfile(small[1], dest / "covid" / "_underscore.png")  # ... and `_`-named ones
    return {"distinct": 5, "read": 6, "too_large": 1, "unlisted": 2}  # 4 real + broken; 5 good + copy


def _summary(capsys) -> str:
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "distinct images" in ln]
    assert len(lines) == 1, lines
    return lines[0]


def test_featurize_lists_once_reads_once_and_counts_every_file(spark, ozturk_dir, tmp_path, capsys):
    from xray_spark.cli import main
    from xray_spark.config import load_config
    from xray_spark.data.ingest import ingest

    data, out = tmp_path / "data", tmp_path / "out"
    put = _folder(ozturk_dir, data)
    config = tmp_path / "small.yml"
    config.write_text(f"decode:\n  max_file_bytes: {MAX_BYTES}\n")
    args = ["featurize", "--config", str(config), "--data", str(data), "--backbone", "ResNet50",
            "--weights", "none", "--out", str(out), "--batch-size", "4"]

    assert main(args) == 0
    line = _summary(capsys)
    assert line.startswith(f"{put['distinct']} distinct images from {put['read']} files read"), line
    assert f"{put['distinct'] - 1} featurized now, 0 already cached, 1 could not be decoded" in line, line
    assert (f"{put['too_large'] + put['unlisted']} files not read: {put['too_large']} over "
            f"decode.max_file_bytes ({MAX_BYTES} bytes), {put['unlisted']} empty or `_`-named") in line, line
    assert not (out / "ingest").exists(), "a raw folder is featurized without an ingest"

    parts = list(out.glob("ResNet50/*/*/f32/part-*.parquet"))
    rows = {r.sha256: r for r in spark.read.parquet(*map(str, parts)).collect()}
    broken = hashlib.sha256((data / "covid" / "broken.png").read_bytes()).hexdigest()
    assert len(rows) == put["distinct"] and rows[broken].features is None
    assert rows[broken].featurize_error and not re.search(r"data|tmp", rows[broken].featurize_error)
    assert sum(r.features is not None for r in rows.values()) == put["distinct"] - 1

    assert main(args) == 0  # the second run: everything cached, nothing computed, no part file added
    assert f"0 featurized now, {put['distinct']} already cached" in _summary(capsys)
    assert len(list(out.glob("ResNet50/*/*/f32/part-*.parquet"))) == len(parts)

    # what `train --out` the same folder does first: ingest into OUT/ingest. featurize then reuses that
    # ingest (its ok images, so the broken file is no longer asked for) and finds all of them cached
    ingest(spark, str(data), str(out / "ingest"), load_config(str(config)))
    assert main(args) == 0
    line = _summary(capsys)
    assert line.startswith(f"{put['distinct'] - 1} distinct images from the ok images of the ingest"), line
    assert "0 featurized now" in line and "files not read" not in line, line
