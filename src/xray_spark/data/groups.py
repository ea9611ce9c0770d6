"""Groups of images that must stay on one side of the split: patients joined with confirmed duplicates.

Why integer edges: connected components need the whole graph at once, but only its edges, as pairs of
64-bit image ids (16 bytes each: 16 MB at 1M images), so the driver holds ints, never paths or pixels.
Group ids come from the members' paths *relative to the data folder*, so the same data mounted under
another scheme or folder gets the same groups (and the same split).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from pyspark.sql import Window
from pyspark.sql import functions as F
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def image_id_col(rel_path):
    """A 64-bit id per image from its relative path (ingest checks the ids are distinct)."""
    return F.xxhash64(rel_path)


def star_edges(images: DataFrame, key: str) -> DataFrame:
    """Rows sharing a non-empty `key` -> edges (a, b) from the smallest id to each other one."""
    keyed = (images.where(F.col(key).isNotNull() & (F.trim(F.col(key)) != ""))
             .select("id", F.trim(key).alias("_k")))
    first = F.min("id").over(Window.partitionBy("_k"))
    return keyed.select(first.alias("a"), F.col("id").alias("b")).where(F.col("a") != F.col("b"))


def components(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 2) int64 edges -> (node ids, component root per node); the root is the component's smallest id."""
    if not len(edges):
        return np.empty(0, np.int64), np.empty(0, np.int64)
    nodes, inverse = np.unique(edges.ravel(), return_inverse=True)
    pairs = inverse.reshape(-1, 2)
    n = len(nodes)
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    roots = np.full(comp.max() + 1, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(roots, comp, nodes)  # nodes are sorted, so this is the first node of each component
    return nodes, roots[comp]


def component_frame(spark: SparkSession, edges: DataFrame) -> DataFrame:
    """Edges (a, b) on executors -> (id, root) for every node that has an edge; only int pairs cross."""
    pdf = edges.select("a", "b").toPandas()
    return roots_frame(spark, pdf[["a", "b"]].to_numpy(dtype=np.int64))


def roots_frame(spark: SparkSession, edges: np.ndarray) -> DataFrame:
    """(n, 2) int64 edges already on the driver (collected with other small results) -> (id, root) frame."""
    nodes, roots = components(np.asarray(edges, dtype=np.int64).reshape(-1, 2))
    return spark.createDataFrame(pd.DataFrame({"id": nodes, "root": roots}), "id long, root long")


def assign_group_ids(images: DataFrame, roots: DataFrame, column: str, prefix: str,
                     singletons: bool = True) -> DataFrame:
    """images (id, rel_path, ...) + (id, root) -> images with `column`: prefix + hash of the sorted member
    relative paths. Images without an edge form their own group (or get null when `singletons` is False)."""
    with_root = images.join(F.broadcast(roots), "id", "left")  # roots came from the driver: ints only
    if not singletons:
        grouped = with_root.where("root IS NOT NULL")
    else:
        grouped = with_root.withColumn("root", F.coalesce("root", "id"))
    ids = grouped.groupBy("root").agg(
        F.concat(F.lit(prefix),
                 F.substring(F.sha2(F.concat_ws("\n", F.sort_array(F.collect_list("rel_path"))), 256),
                             1, 12)).alias(column))
    if singletons:
        return grouped.join(ids, "root").drop("root")
    return with_root.join(ids, "root", "left").drop("root")

