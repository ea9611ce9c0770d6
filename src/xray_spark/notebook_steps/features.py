"""Helpers behind notebooks/02_features.ipynb: backbone features per image and their 2-D map."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from xray_spark.config import Config
from xray_spark.data.images import image_contents
from xray_spark.features.cache import featurize_to_cache
from xray_spark.notebook_steps.common import LABEL_COLORS, _figure, load_dataset

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

_OTHER_COLORS = ["#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#ff7f0e"]


def feature_table(
    spark: SparkSession, cfg: Config, data_dir: str | Path, out_dir: str | Path, backbone: str = "ResNet50",
    weights: str = "none", cache_dir: str | Path | None = None,
) -> pd.DataFrame:
    """One row per ok image: label, source, format, mode, size and its feature vector (column `features`).

    Uses the same feature cache as `xray-spark featurize/train`, so a second call computes nothing.
    """
    images, summary, _ = load_dataset(spark, cfg, data_dir, out_dir)
    contents = image_contents(spark, summary, cfg)
    cache = str(cache_dir or Path(out_dir) / "features")
    keys = spark.createDataFrame(images.loc[images["status"] == "ok", ["sha256"]].drop_duplicates())
    feats = featurize_to_cache(spark, contents, backbone, weights, cache, keys=keys)
    feats = feats.select("sha256", "features").toPandas()
    feats = feats[feats["features"].notna()]
    feats["features"] = [np.asarray(v.toArray() if hasattr(v, "toArray") else v, dtype=np.float32)
                         for v in feats["features"]]
    ok = images[images["status"] == "ok"][["sha256", "path", "label", "source", "format", "mode", "width",
                                             "height", "split"]]
    return ok.merge(feats, on="sha256", how="inner").reset_index(drop=True)


def embed_2d(vectors: Sequence[np.ndarray] | np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """(n, d) features -> (n, 2): PCA on standardised features, or t-SNE (on the top PCA components)."""
    x = np.vstack([np.asarray(v, dtype=np.float64) for v in vectors])
    x = x - x.mean(axis=0)
    std = x.std(axis=0)
    x = x / np.where(std > 0, std, 1.0)
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(x)
    if method == "tsne":
        reduced = PCA(n_components=min(50, x.shape[0], x.shape[1]), random_state=seed).fit_transform(x)
        perplexity = float(max(2, min(30, (x.shape[0] - 1) // 3)))
        return TSNE(n_components=2, perplexity=perplexity, init="pca",
                    random_state=seed).fit_transform(reduced)
    raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")


def embedding_plot(points: np.ndarray, table: pd.DataFrame, color_by: Sequence[str] = ("label", "format"),
                   title: str = "") -> Figure:
    """One scatter panel per column in `color_by`, same points, coloured by that column's values."""
    fig = _figure(figsize=(5.2 * len(color_by), 4.6))
    axes = np.atleast_1d(fig.subplots(1, len(color_by)))
    for ax, col in zip(axes, color_by, strict=True):
        values = table[col].fillna("(none)").astype(str)
        for i, value in enumerate(sorted(values.unique())):
            m = (values == value).to_numpy()
            color = LABEL_COLORS.get(value) if col == "label" else _OTHER_COLORS[i % len(_OTHER_COLORS)]
            ax.scatter(points[m, 0], points[m, 1], s=16, alpha=0.7, label=f"{value} ({int(m.sum())})",
                       color=color)
        ax.set_title(f"coloured by {col}")
        ax.legend(fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    return fig
