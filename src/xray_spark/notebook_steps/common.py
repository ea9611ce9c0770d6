"""What more than one notebook uses: session start, the ingested images table, label colours, figures.

Plots are built on `matplotlib.figure.Figure` (not pyplot) so a notebook shows each figure exactly once, as
the cell's value.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import pandas as pd
from matplotlib.figure import Figure

from xray_spark.config import Config, load_config
from xray_spark.data.images import load_or_ingest
from xray_spark.logs import setup_logging
from xray_spark.paths import local_path
from xray_spark.session import get_spark

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

LABEL_COLORS = {"covid": "#d62728", "no_findings": "#2ca02c", "pneumonia": "#1f77b4"}


def start(
    master: str | None = "local[2]", config: str | None = None, conf: dict[str, str] | None = None
) -> tuple[Config, SparkSession]:
    """Config + SparkSession the same way the CLI builds them (the active session on Databricks)."""
    setup_logging(logging.INFO)
    cfg = load_config(config)
    return cfg, get_spark(cfg, master=master, conf=conf or {})


def load_dataset(spark: SparkSession, cfg: Config, data_dir: str | Path,
                 out_dir: str | Path) -> tuple[pd.DataFrame, dict, Path]:
    """(images table, ingest summary, ingest folder): ingests `data_dir` once, then reuses the output."""
    images, summary, layout = load_or_ingest(spark, str(data_dir), str(out_dir), cfg)
    return images.toPandas(), summary, local_path(layout.root)  # a notebook's look at a small dataset


def _figure(**kwargs: Any) -> Figure:
    """A pyplot-free Figure: shown exactly once, as the cell's value, and never leaked into pyplot's state."""
    _enable_inline_display()
    return Figure(layout="constrained", **kwargs)


def _enable_inline_display() -> None:
    """In a Jupyter kernel, make returned Figure objects render as PNG.

    The inline backend registers its Figure formatter when its module is imported, which pyplot does lazily
    (on the first pyplot figure). Helpers here never touch pyplot, so import the module when it is the
    backend.
    """
    try:
        from IPython import get_ipython  # optional: only present in a Jupyter/IPython kernel
    except ImportError:
        return
    if get_ipython() is not None and "inline" in str(matplotlib.rcParams["backend"]):
        try:
            import matplotlib_inline.backend_inline  # noqa: F401  (optional: registers the PNG formatter)
        except ImportError:
            pass
