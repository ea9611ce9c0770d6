"""Small ingests are small (issue 23): one `ingest` of the 36-image folder runs a fixed, small number of Spark
jobs (it ran 104, a minute of scheduling, when every count and check was a job of its own)."""

from __future__ import annotations

from pathlib import Path

import pytest

from xray_spark.config import load_config
from xray_spark.data.ingest import ingest

MAX_JOBS = 25


@pytest.mark.spark
def test_an_ingest_of_36_images_runs_at_most_25_spark_jobs(spark, small_data: Path, tmp_path: Path) -> None:
    """Counted by Spark's status tracker for a job group set on this thread; the SQL broadcasts run in other
    JVM threads, which inherit the group, so every job of the call is in it."""
    sc = spark.sparkContext
    group = f"ingest-jobs-{tmp_path.name}"
    sc.setJobGroup(group, "test_ingest_jobs: one ingest of 36 images")
    try:
        result = ingest(spark, str(small_data), str(tmp_path / "out"), load_config(local=None))
    finally:
        for key in ("spark.jobGroup.id", "spark.job.description", "spark.job.interruptOnCancel"):
            sc.setLocalProperty(key, None)  # later tests' jobs stay out of the group
    jobs = sc.statusTracker().getJobIdsForGroup(group)
    s = result.summary
    assert s["files_read"] == s["ok"] == 36 and s["split"]["train"] + s["split"]["test"] == 36
    assert 0 < len(jobs) <= MAX_JOBS, f"{len(jobs)} Spark jobs for one ingest of 36 images"
