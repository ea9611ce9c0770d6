"""Thin helpers behind notebooks/*.ipynb: each notebook cell is one call here, so notebooks hold no logic.

Why a module and not code in cells: notebooks are hard to test and review; these functions are imported,
linted and exercised by tests/test_notebooks.py like the rest of the package. Plots are built on
`matplotlib.figure.Figure` (not pyplot) so a notebook shows each figure exactly once, as the cell's value.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from xray_spark.paths import local_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from pyspark.sql import SparkSession

    from xray_spark.config import Config

log = logging.getLogger(__name__)

LABEL_COLORS = {"covid": "#d62728", "no_findings": "#2ca02c", "pneumonia": "#1f77b4"}
_OTHER_COLORS = ["#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#ff7f0e"]


# ------------------------------------------------------------------------------------------------ session


def _figure(**kwargs: Any) -> Figure:
    """A pyplot-free Figure: shown exactly once, as the cell's value, and never leaked into pyplot's state."""
    import matplotlib
    from matplotlib.figure import Figure

    _enable_inline_display(matplotlib)
    return Figure(layout="constrained", **kwargs)


def _enable_inline_display(matplotlib: Any) -> None:
    """In a Jupyter kernel, make returned Figure objects render as PNG.

    The inline backend registers its Figure formatter when its module is imported, which pyplot does lazily
    (on the first pyplot figure). Helpers here never touch pyplot, so import the module when it is the backend.
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return
    if get_ipython() is not None and "inline" in str(matplotlib.rcParams["backend"]):
        import matplotlib_inline.backend_inline  # noqa: F401


def start(
    master: str | None = "local[2]", config: str | None = None, conf: dict[str, str] | None = None
) -> tuple[Config, SparkSession]:
    """Config + SparkSession the same way the CLI builds them (the active session on Databricks)."""
    from xray_spark.config import load_config
    from xray_spark.session import get_spark

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("py4j", "matplotlib", "PIL", "h5py", "absl", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    cfg = load_config(config)
    return cfg, get_spark(cfg, master=master, conf=conf or {})


# ---------------------------------------------------------------------------------------- 01 dataset


def dataset(spark: SparkSession, cfg: Config, data_dir: str | Path, out_dir: str | Path) -> tuple[pd.DataFrame, dict, Path]:
    """(images table, ingest summary, ingest folder): ingests `data_dir` once, then reuses the output."""
    from xray_spark.data.images import load_or_ingest

    images, summary, layout = load_or_ingest(spark, str(data_dir), str(out_dir), cfg)
    return images.toPandas(), summary, local_path(layout.root)  # a notebook's look at a small dataset


def class_counts(images: pd.DataFrame) -> pd.DataFrame:
    """Images per source x label (ok rows), with quarantined files counted in their own column."""
    df = images.copy()
    df["source"] = df["source"].fillna("(none)")
    ok = df[df["status"] == "ok"]
    table = pd.crosstab(ok["source"], ok["label"], margins=True, margins_name="total")
    quarantined = df[df["status"] != "ok"].groupby("source").size()
    table["quarantined"] = quarantined.reindex(table.index).fillna(0).astype(int)
    table.loc["total", "quarantined"] = int(quarantined.sum())
    return table


def metadata_summary(images: pd.DataFrame) -> pd.DataFrame:
    """Per label: how the *files* differ (format, colour mode, size) — the cues a model can cheat with."""
    ok = images[images["status"] == "ok"].copy()
    ok["format/mode"] = ok["format"].astype(str) + "/" + ok["mode"].astype(str)
    ok["size"] = ok["width"].astype(str) + "x" + ok["height"].astype(str)
    rows = []
    for label, g in ok.groupby("label"):
        rows.append({
            "label": label,
            "images": len(g),
            "format/mode": ", ".join(f"{k} {v}" for k, v in g["format/mode"].value_counts().items()),
            "most common size": f"{g['size'].mode().iloc[0]} ({(g['size'] == g['size'].mode().iloc[0]).mean():.0%})",
            "median file KB": round(float(g["file_size"].median()) / 1024, 1),
        })
    return pd.DataFrame(rows).set_index("label")


def _gray_preview(path: str, size: int) -> np.ndarray:
    """The image as the pipeline normalises it (one luminance channel, full range), squeezed to size x size."""
    from xray_spark.data.decode import decode_gray, resize

    gray, _ = decode_gray(local_path(path).read_bytes())  # the images table names files by URI (file:/...)
    return resize(gray, size)


def sample_grid(images: pd.DataFrame, per_class: int = 4, size: int = 160, seed: int = 0) -> Figure:
    """A few random ok images per class, decoded the way the model sees them, titled with their metadata."""
    ok = images[images["status"] == "ok"]
    labels = sorted(ok["label"].unique())
    fig = _figure(figsize=(2.2 * per_class, 2.4 * max(1, len(labels))))
    axes = fig.subplots(max(1, len(labels)), per_class, squeeze=False)
    for r, label in enumerate(labels):
        rows = ok[ok["label"] == label]
        pick = rows.sample(n=min(per_class, len(rows)), random_state=seed)
        for c in range(per_class):
            ax = axes[r][c]
            ax.set_axis_off()
            if c >= len(pick):
                continue
            row = pick.iloc[c]
            ax.imshow(_gray_preview(row["path"], size), cmap="gray", vmin=0, vmax=255)
            ax.set_title(f"{label}\n{row['format']} {row['mode']} {row['width']}x{row['height']}", fontsize=8)
    fig.suptitle("Samples per class (as decoded for the model)")
    return fig


def duplicate_groups(ingest_dir: str | Path, images: pd.DataFrame | None = None) -> pd.DataFrame:
    """ingest's duplicates/duplicate_groups.csv (one row per image in a group, paths relative to the data
    folder), with each image's label and full path when `images` is given.

    Empty (same columns) when ingest found no duplicates.
    """
    path = Path(ingest_dir) / "duplicates" / "duplicate_groups.csv"
    try:
        groups = pd.read_csv(path).rename(columns={"path": "rel_path"})
    except (FileNotFoundError, pd.errors.EmptyDataError):
        groups = pd.DataFrame(columns=["rel_path", "dup_group", "dup_kind", "group_size", "labels", "label_conflict"])
    if images is not None:
        groups = groups.merge(images[["rel_path", "path", "label"]], on="rel_path", how="left")
    groups["file"] = groups["rel_path"]
    first = [c for c in ("dup_group", "dup_kind", "label", "file", "group_size", "label_conflict") if c in groups]
    return groups[first + [c for c in groups.columns if c not in first]]


def duplicate_group_grid(groups: pd.DataFrame, max_groups: int = 4, size: int = 128) -> Figure | str:
    """The largest duplicate groups side by side (label-conflicting groups first); a sentence when none."""
    if groups.empty:
        return "No duplicate groups in this data."
    g = groups.copy()
    if "label" not in g:
        g["label"] = g.get("labels", "?")
    if "label_conflict" not in g:
        g["label_conflict"] = g.groupby("dup_group")["label"].transform("nunique") > 1
    sizes = g.groupby("dup_group").size().rename("n")
    order = (
        g.drop_duplicates("dup_group").set_index("dup_group")[["label_conflict"]].join(sizes)
        .sort_values(["label_conflict", "n"], ascending=False).head(max_groups).index
    )
    width = int(min(6, sizes.loc[order].max()))
    fig = _figure(figsize=(2.2 * width, 2.4 * len(order)))
    axes = fig.subplots(len(order), width, squeeze=False)
    for r, gid in enumerate(order):
        members = g[g["dup_group"] == gid].head(width)
        for c in range(width):
            ax = axes[r][c]
            ax.set_axis_off()
            if c < len(members):
                m = members.iloc[c]
                ax.imshow(_gray_preview(m["path"], size), cmap="gray", vmin=0, vmax=255)
                ax.set_title(f"{gid}\n{m['label']}: {str(m['rel_path']).rsplit('/', 1)[-1][:22]}", fontsize=7)
    fig.suptitle("Duplicate groups (kept on one side of the split)")
    return fig


def metadata_shortcut_plot(images: pd.DataFrame) -> Figure:
    """Width x height scatter and format/mode bars by class: when these separate the classes, so can a model."""
    ok = images[images["status"] == "ok"].copy()
    fig = _figure(figsize=(13, 4.2))
    ax1, ax2, ax3 = fig.subplots(1, 3)
    rng = np.random.default_rng(0)
    spread = 0.004 * float(np.nanmedian(ok[["width", "height"]].to_numpy(dtype=float))) if len(ok) else 1.0
    for label, g in ok.groupby("label"):
        jitter = rng.normal(0, spread, size=(len(g), 2))  # identical sizes would hide each other
        ax1.scatter(g["width"] + jitter[:, 0], g["height"] + jitter[:, 1], s=14, alpha=0.6, label=label,
                    color=LABEL_COLORS.get(str(label)))
    ax1.set_xlabel("width (px)")
    ax1.set_ylabel("height (px)")
    ax1.set_title("image size by class")
    ax1.legend(fontsize=8)
    for ax, col in ((ax2, "format"), (ax3, "mode")):
        table = pd.crosstab(ok["label"], ok[col].fillna("?"), normalize="index")
        table.plot.bar(stacked=True, ax=ax, rot=0, colormap="tab20")
        ax.set_ylabel("share of class")
        ax.set_title(f"file {col} by class")
        ax.legend(fontsize=8, title=col)
    fig.suptitle("The metadata shortcut: file properties alone tell the classes apart")
    return fig


# --------------------------------------------------------------------------------------- 02 features


def features(
    spark: SparkSession, cfg: Config, data_dir: str | Path, out_dir: str | Path, backbone: str = "ResNet50",
    weights: str = "none", cache_dir: str | Path | None = None,
) -> pd.DataFrame:
    """One row per ok image: label, source, format, mode, size and its feature vector (column `features`).

    Uses the same feature cache as `xray-spark featurize/train`, so a second call computes nothing.
    """
    from xray_spark.data.images import image_contents
    from xray_spark.features.cache import featurize_to_cache

    images, summary, _ = dataset(spark, cfg, data_dir, out_dir)
    contents = image_contents(spark, summary, cfg)
    cache = str(cache_dir or Path(out_dir) / "features")
    keys = spark.createDataFrame(images.loc[images["status"] == "ok", ["sha256"]].drop_duplicates())
    feats = featurize_to_cache(spark, contents, backbone, weights, cache, keys=keys)
    feats = feats.select("sha256", "features").toPandas()
    feats = feats[feats["features"].notna()]
    feats["features"] = [np.asarray(v.toArray() if hasattr(v, "toArray") else v, dtype=np.float32)
                         for v in feats["features"]]
    ok = images[images["status"] == "ok"][["sha256", "path", "label", "source", "format", "mode", "width", "height",
                                             "split"]]
    return ok.merge(feats, on="sha256", how="inner").reset_index(drop=True)


def embed_2d(vectors: Sequence[np.ndarray] | np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """(n, d) features -> (n, 2): PCA on standardised features, or t-SNE (on the top PCA components)."""
    x = np.vstack([np.asarray(v, dtype=np.float64) for v in vectors])
    x = x - x.mean(axis=0)
    std = x.std(axis=0)
    x = x / np.where(std > 0, std, 1.0)
    from sklearn.decomposition import PCA

    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(x)
    if method == "tsne":
        from sklearn.manifold import TSNE

        reduced = PCA(n_components=min(50, x.shape[0], x.shape[1]), random_state=seed).fit_transform(x)
        perplexity = float(max(2, min(30, (x.shape[0] - 1) // 3)))
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(reduced)
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
            ax.scatter(points[m, 0], points[m, 1], s=16, alpha=0.7, label=f"{value} ({int(m.sum())})", color=color)
        ax.set_title(f"coloured by {col}")
        ax.legend(fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    return fig


# ---------------------------------------------------------------------------------------- 03 results

_METRICS = ("accuracy", "accuracy_ci_low", "accuracy_ci_high", "macro_f1", "macro_f1_ci_low", "macro_f1_ci_high",
            "covid_recall", "roc_auc_macro", "n_test")


def runs_table(tracking_uri: str, experiment: str | None = None) -> pd.DataFrame:
    """Every trained combination in the experiment (nested runs tagged with `kind`), best first per task."""
    import mlflow

    from xray_spark.tracking import EXPERIMENT

    name = experiment or EXPERIMENT
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        raise ValueError(f"no MLflow experiment {name!r} at {tracking_uri}")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.kind != ''", max_results=5000)
    rows: list[dict[str, Any]] = []
    for run in runs:
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        rows.append({
            "task": tags.get("task"), "kind": tags.get("kind"), "backbone": tags.get("backbone"),
            "head": tags.get("head"), "weights": params.get("weights"),
            **{m: metrics.get(m, np.nan) for m in _METRICS},
            "run_id": run.info.run_id, "started": pd.to_datetime(run.info.start_time, unit="ms"),
        })
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return table.sort_values(["task", "macro_f1", "accuracy"], ascending=[True, False, False]).reset_index(drop=True)


def champions(tracking_uri: str, tasks: Sequence[str] = ("binary", "multiclass"),
              config: str | None = None) -> pd.DataFrame:
    """Per task: the registered model, the version its `champion` alias points at, and that version's run."""
    import mlflow

    from xray_spark.config import load_config
    from xray_spark.tracking import CHAMPION, registered_name

    prefix = load_config(config).train.registered_model_prefix
    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    rows = []
    for task in tasks:
        name = registered_name(prefix, task)
        try:
            mv = client.get_model_version_by_alias(name, CHAMPION)
        except mlflow.exceptions.MlflowException as exc:
            rows.append({"task": task, "model": name, "version": None, "run_id": None,
                         "description": f"no champion: {str(exc).splitlines()[0]}"})
            continue
        rows.append({"task": task, "model": name, "version": mv.version, "run_id": mv.run_id,
                     "description": mv.description})
    return pd.DataFrame(rows)


def confusion_figure(tracking_uri: str, run_id: str, dest: str | Path) -> Figure:
    """Download the run's confusion-matrix PNG artifact (plots/*.png) into `dest` and show it."""
    import matplotlib.image as mpimg
    import mlflow
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    pngs = [a.path for a in client.list_artifacts(run_id, "plots") if a.path.endswith(".png")]
    if not pngs:
        raise ValueError(f"run {run_id} has no PNG under plots/")
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=pngs[0], dst_path=str(dest),
                                                tracking_uri=tracking_uri)
    img = mpimg.imread(local)
    fig = _figure(figsize=(img.shape[1] / 100, img.shape[0] / 100))
    ax = fig.subplots()
    ax.imshow(img)
    ax.set_axis_off()
    return fig
