"""One way to build the SparkSession, shared by the CLI, spark-submit jobs and notebooks.

Why one helper: Spark settings that matter for the featurizer (Arrow batch size, Python worker reuse,
TensorFlow thread caps) must be the same wherever the pipeline runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from pyspark import SparkConf, SparkContext
from pyspark.sql import SparkSession

from xray_spark.config import Config
from xray_spark.errors import UserError

log = logging.getLogger(__name__)


def add_spark_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --config, --master and --conf k=v to any parser (CLI subcommands and jobs/*.py)."""
    parser.add_argument("--config", metavar="FILE", help="YAML config layered over the defaults")
    parser.add_argument("--master", metavar="URL", help="Spark master (default: config spark.master)")
    parser.add_argument(
        "--conf",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="extra Spark setting, repeatable (e.g. --conf spark.driver.memory=8g)",
    )


def parse_conf_pairs(pairs: Sequence[str]) -> dict[str, str]:
    """Turn ['k=v', ...] into a dict; a pair without '=' is a user error."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--conf expects KEY=VALUE, got {pair!r}")
        out[key.strip()] = value.strip()
    return out



def _submitted_conf() -> dict[str, str]:
    """Settings spark-submit already passed to this driver (empty when Python started the JVM itself)."""
    if not os.environ.get("PYSPARK_GATEWAY_PORT"):
        return {}

    SparkContext._ensure_initialized()
    return dict(SparkConf().getAll())


def get_spark(
    cfg: Config,
    master: str | None = None,
    conf: dict[str, str] | None = None,
    app_name: str | None = None,
) -> SparkSession:
    """Return the active session (spark-submit, Databricks, notebooks) or build one from config.

    Under spark-submit the master and confs given on its command line win; config only fills gaps.
    """
    settings = dict(cfg.spark.conf)
    settings.update(conf or {})
    # Python workers run TensorFlow: give each concurrent task a share of the cores, not all of them.
    settings.setdefault("spark.executorEnv.TF_NUM_INTRAOP_THREADS",
                        os.environ.get("TF_NUM_INTRAOP_THREADS", "1"))
    settings.setdefault("spark.executorEnv.TF_NUM_INTEROP_THREADS", "1")
    settings.setdefault("spark.executorEnv.TF_CPP_MIN_LOG_LEVEL", "2")
    settings.setdefault("spark.executorEnv.KERAS_BACKEND", "tensorflow")
    settings.setdefault("spark.executorEnv.PYTHONHASHSEED", "0")
    # local mode: keep Spark's own scratch space out of the repository
    active = SparkSession.getActiveSession()
    if active is not None:
        for key, value in (conf or {}).items():
            try:
                active.conf.set(key, value)
            except Exception:  # static confs cannot change on a live session; say so instead of failing
                log.warning("cannot change %s on the running Spark session", key)
        return active
    builder = SparkSession.builder.appName(app_name or cfg.spark.app_name)
    submitted = _submitted_conf()
    if master:
        builder = builder.master(master)
    elif "spark.master" not in submitted and not os.environ.get("MASTER"):
        builder = builder.master(cfg.spark.master)
    for key, value in settings.items():
        if key in submitted and key not in (conf or {}):
            continue  # spark-submit --conf / spark-defaults.conf win over our config defaults
        builder = builder.config(key, value)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("XRAY_SPARK_SPARK_LOG_LEVEL", "WARN"))
    log.info("Spark %s, master %s", spark.version, spark.sparkContext.master)
    return spark
