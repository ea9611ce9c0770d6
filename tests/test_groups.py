"""Groups: patients and duplicate pairs joined transitively on integer ids; group ids from relative paths."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from conftest import local
from xray_spark.data.groups import assign_group_ids, component_frame, components, image_id_col, star_edges

ROWS_SCHEMA = "path string, rel_path string, label string, patient_id string"
# rel_path, patient_id: A twice (whitespace ignored), B, C, three images with no usable patient id
ROWS = [("a1.png", "A"), ("a2.png", " A "), ("b1.png", "B"), ("c1.png", "C"), ("u1.png", None),
        ("u2.png", ""), ("u3.png", "  ")]
DUPS = [("a2.png", "b1.png"), ("b1.png", "u1.png")]  # a-b via a duplicate, u1 via b1: transitive


def gid(prefix: str, *rel_paths: str) -> str:
    """The documented group id: prefix + first 12 hex of sha256 over the sorted member relative paths."""
    return prefix + hashlib.sha256("\n".join(sorted(rel_paths)).encode()).hexdigest()[:12]


def images_frame(spark, root: str, rows=ROWS, *, shuffle_seed: int | None = None):
    from pyspark.sql import functions as F

    data = [(f"{root}/{rel}", rel, "covid", pid) for rel, pid in rows]
    if shuffle_seed is not None:
        data = [data[i] for i in np.random.default_rng(shuffle_seed).permutation(len(data))]
    df = local(spark, data, ROWS_SCHEMA).withColumn("id", image_id_col(F.col("rel_path")))
    return df.repartition(3) if shuffle_seed is not None else df


def edges_by_path(spark, images, pairs):
    """(rel_path, rel_path) pairs -> (a, b) id edges, joined on executors as ingest does."""
    from pyspark.sql import functions as F

    p = local(spark, pairs, "ra string, rb string")
    ids = images.select("rel_path", "id")
    return (p.join(ids.select(F.col("rel_path").alias("ra"), F.col("id").alias("a")), "ra")
            .join(ids.select(F.col("rel_path").alias("rb"), F.col("id").alias("b")), "rb").select("a", "b"))


def grouped(spark, images, dups=DUPS) -> dict[str, dict]:
    """The ingest recipe: patient stars + duplicate edges -> group_id; duplicate edges alone -> dup_group."""
    dup = edges_by_path(spark, images, dups)
    out = assign_group_ids(images, component_frame(spark, dup.unionByName(star_edges(images, "patient_id"))),
                           "group_id", "g-")
    out = assign_group_ids(out, component_frame(spark, dup), "dup_group", "dup-", singletons=False)
    rows = out.collect()
    assert len(rows) == images.count()  # no image lost or duplicated by the joins
    assert set(out.columns) == set(images.columns) | {"group_id", "dup_group"}
    return {r["rel_path"]: r.asDict() for r in rows}


def test_image_ids_and_patient_stars(spark):
    from pyspark.sql import functions as F

    images = images_frame(spark, "/data")
    assert dict(images.dtypes)["id"] == "bigint"
    ids = {r["rel_path"]: r["id"] for r in images.select("rel_path", "id").collect()}
    assert len(set(ids.values())) == len(ROWS)
    again = local(spark, [("a1.png",)], "rel_path string").select(image_id_col(F.col("rel_path")).alias("i"))
    assert again.first()["i"] == ids["a1.png"]  # a function of the relative path alone

    edges = [tuple(r) for r in star_edges(images, "patient_id").collect()]
    # blanks never link
    assert edges == [(min(ids["a1.png"], ids["a2.png"]), max(ids["a1.png"], ids["a2.png"]))]

    many = local(spark, [(i, "P" if i % 2 else " P") for i in (9, -4, 17, 3, 250)] + [(8, "Q")],
                                 "id long, patient_id string")
    star = sorted(tuple(r) for r in star_edges(many, "patient_id").collect())
    assert star == [(-4, 3), (-4, 9), (-4, 17), (-4, 250)]  # a star from the smallest id: n - 1 edges


def test_components_roots_are_the_smallest_member():
    big, small = np.iinfo(np.int64).max, np.iinfo(np.int64).min
    edges = np.array([[5, 3], [3, 9], [9, 5], [-7, 100], [42, 42], [big, 0], [0, small], [3, 9]],
                     dtype=np.int64)
    nodes, roots = components(edges)
    assert nodes.dtype == roots.dtype == np.int64
    got = dict(zip(nodes.tolist(), roots.tolist(), strict=True))
    assert got == {3: 3, 5: 3, 9: 3, -7: -7, 100: -7, 42: 42, big: small, 0: small, small: small}
    n, r = components(np.empty((0, 2), dtype=np.int64))
    assert len(n) == len(r) == 0


def test_component_frame_on_executor_edges_and_on_no_edges(spark):
    edges = local(spark, [(5, 3), (3, 9), (-7, 100)], "a long, b long")
    assert sorted(tuple(r) for r in component_frame(spark, edges).collect()) == [
        (-7, -7), (3, 3), (5, 3), (9, 3), (100, -7)]
    empty = component_frame(spark, local(spark, [], "a long, b long"))
    assert empty.dtypes == [("id", "bigint"), ("root", "bigint")] and empty.count() == 0


def test_patients_and_duplicates_chain_into_one_group_and_singletons_stand_alone(spark):
    g = grouped(spark, images_frame(spark, "file:/data/xray"))
    joined = gid("g-", "a1.png", "a2.png", "b1.png", "u1.png")
    assert {p: r["group_id"] for p, r in g.items()} == {
        "a1.png": joined, "a2.png": joined, "b1.png": joined, "u1.png": joined,  # patient A + two duplicates
        "c1.png": gid("g-", "c1.png"),  # no edge: a group of its own
        "u2.png": gid("g-", "u2.png"), "u3.png": gid("g-", "u3.png"),  # unknown patients never link
    }
    dup = gid("dup-", "a2.png", "b1.png", "u1.png")  # a1 is only the same patient, not a duplicate
    assert {p: r["dup_group"] for p, r in g.items()} == {
        "a1.png": None, "a2.png": dup, "b1.png": dup, "u1.png": dup, "c1.png": None, "u2.png": None,
        "u3.png": None}
    assert g["a2.png"]["patient_id"] == " A " and g["c1.png"]["path"] == "file:/data/xray/c1.png"  # rows kept


def test_group_ids_depend_on_relative_paths_only(spark):
    here = grouped(spark, images_frame(spark, "file:/data/xray"))
    # moved, reordered
    there = grouped(spark, images_frame(spark, "s3a://bucket/elsewhere/copy", shuffle_seed=7))
    key = ("id", "group_id", "dup_group")
    assert {p: tuple(r[k] for k in key) for p, r in here.items()} == {p: tuple(r[k] for k in key)
                                                                       for p, r in there.items()}
    assert here["a1.png"]["path"] != there["a1.png"]["path"]


def test_no_edges_at_all(spark):
    images = images_frame(spark, "/d", rows=[("x.png", None), ("y.png", "")])
    out = {p: (r["group_id"], r["dup_group"]) for p, r in grouped(spark, images, dups=[]).items()}
    assert out == {"x.png": (gid("g-", "x.png"), None), "y.png": (gid("g-", "y.png"), None)}


@pytest.mark.parametrize("singletons", [True, False])
def test_roots_for_unknown_ids_are_ignored(spark, singletons: bool):
    """Edges may name ids that are not in this table (e.g. quarantined rows): they never add rows."""
    images = images_frame(spark, "/d", rows=[("x.png", None), ("y.png", None)])
    ids = {r["rel_path"]: r["id"] for r in images.collect()}
    roots = local(spark, [(ids["x.png"], -(2**63)), (-(2**63), -(2**63))], "id long, root long")
    out = {r["rel_path"]: r["g"]
           for r in assign_group_ids(images, roots, "g", "p-", singletons=singletons).collect()}
    assert out == {"x.png": gid("p-", "x.png"), "y.png": gid("p-", "y.png") if singletons else None}
