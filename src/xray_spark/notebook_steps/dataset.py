"""Helpers behind notebooks/01_dataset.ipynb: class counts, decoded samples, duplicate groups, the metadata
shortcut."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from xray_spark.data.decode import decode_gray, resize
from xray_spark.notebook_steps.common import LABEL_COLORS, _figure
from xray_spark.paths import local_path


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
            "most common size": (f"{g['size'].mode().iloc[0]} "
                                 f"({(g['size'] == g['size'].mode().iloc[0]).mean():.0%})"),
            "median file KB": round(float(g["file_size"].median()) / 1024, 1),
        })
    return pd.DataFrame(rows).set_index("label")


def _gray_preview(path: str, size: int) -> np.ndarray:
    """The image as the pipeline normalises it (one luminance channel, full range), squeezed to
    size x size."""
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
        groups = pd.DataFrame(columns=["rel_path", "dup_group", "dup_kind", "group_size", "labels",
                                       "label_conflict"])
    if images is not None:
        groups = groups.merge(images[["rel_path", "path", "label"]], on="rel_path", how="left")
    groups["file"] = groups["rel_path"]
    first = [c for c in ("dup_group", "dup_kind", "label", "file", "group_size", "label_conflict")
             if c in groups]
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
    """Width x height scatter and format/mode bars by class: when these separate the classes, so can a
    model."""
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
