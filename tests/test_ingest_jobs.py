"""Small ingests are small (issue 23): one `ingest` of the 36-image folder runs a fixed, small number of Spark
jobs (it ran 104, most of a minute, when every count and check was a job of its own); the pieces that make
it so keep their results: several small results come back from one job, and the leak check that rides on
the split's aggregate still sees a patient spread over two groups."""

from __future__ import annotations

import math
from types import SimpleNamespace

from conftest import job_group, local
from xray_spark.data.split import spanning_keys
from xray_spark.spark_io import collect_parts, first_rows, sql_conf, static_shuffles, union_all

MAX_JOBS = 25


def test_an_ingest_of_36_images_runs_at_most_25_spark_jobs(small_ingest_run: SimpleNamespace) -> None:
    """The session's shared ingest of small_data (conftest.small_ingest_run) counted its own jobs."""
    s, n = small_ingest_run.summary, small_ingest_run.jobs
    assert s["files_read"] == s["ok"] == 36 and s["split"]["train"] + s["split"]["test"] == 36
    assert 0 < n <= MAX_JOBS, f"{n} Spark jobs for one ingest of 36 images"


def test_several_small_results_come_back_from_one_job(spark) -> None:
    """Counts, a NaN, a null and a top-k sample, each part with its own columns, in one Spark job."""
    rows = local(spark, [(k, k % 3, None if k == 2 else f"p{k}") for k in range(10)],
                 "k long, g long, name string")
    rows = rows.selectExpr("*", "IF(k = 4, double('NaN'), k / 10) AS c")  # pandas would make NaN a null
    parts = {
        "by_g": rows.groupBy("g").count(),
        "top": first_rows(rows, 3, rows["c"].desc(), rows["k"]),
        "total": rows.agg({"k": "sum"}).withColumnRenamed("sum(k)", "s"),
        "named": rows.where("k in (2, 3)").select("k", "name"),
    }
    with sql_conf(spark, static_shuffles(spark, 10)), job_group(spark, "collect-parts") as jobs:
        got = collect_parts(parts)
        assert len(jobs()) == 1
    assert sorted((r["g"], r["count"]) for r in got["by_g"]) == [(0, 4), (1, 3), (2, 3)]
    top = sorted(got["top"], key=lambda r: r["_rank"])
    assert [r["k"] for r in top] == [4, 9, 8] and math.isnan(top[0]["c"])  # Spark orders NaN above all
    assert got["total"] == [{"s": 45}]
    assert sorted(got["named"], key=lambda r: r["k"]) == [{"k": 2, "name": None}, {"k": 3, "name": "p3"}]


def test_one_union_of_many_frames_keeps_every_row_and_leaves_no_view_behind(spark) -> None:
    """collect_parts' union: one analysis over temporary views (pairwise unions re-analysed the growing plan),
    which are gone once the frame exists; the frame still reads them."""
    frames = [local(spark, [(k, f"x{k}"), (k + 10, None)], "k long, v string") for k in range(4)]
    views = {t.name for t in spark.catalog.listTables()}
    both = union_all(frames)
    assert {t.name for t in spark.catalog.listTables()} == views
    assert sorted(tuple(r) for r in both.collect()) == sorted(
        [(k, f"x{k}") for k in range(4)] + [(k + 10, None) for k in range(4)])
    assert union_all(frames[:1]) is frames[0]


def test_keys_spread_over_two_groups_are_counted_for_the_leak_check(spark) -> None:
    schema = "rel_path string, patient_id string, group_id string, dup_group string"
    rows = [("a", "p1", "g-1", None), ("b", " p1", "g-1", "d-1"), ("c", "p2", "g-2", "d-1"),
            ("d", "", "g-3", None), ("e", " ", "g-4", None), ("f", None, "g-5", None)]
    counts = {r["column"]: r["n"] for r in spanning_keys(local(spark, rows, schema)).collect()}
    assert counts == {"patient_id": 0, "dup_group": 1}  # blank patient ids are unknown, never a key
    spread = [*rows, ("g", "p1", "g-6", None)]
    counts = {r["column"]: r["n"] for r in spanning_keys(local(spark, spread, schema)).collect()}
    assert counts == {"patient_id": 1, "dup_group": 1}
