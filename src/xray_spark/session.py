"""One way to build the SparkSession, shared by the CLI, spark-submit jobs and notebooks.

Why one helper: Spark settings that matter for the featurizer (Arrow batch size, Python worker reuse,
TensorFlow thread caps, task retries in local mode) must be the same wherever the pipeline runs.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from pyspark import SparkConf, SparkContext
from pyspark.sql import SparkSession

from xray_spark.config import Config

log = logging.getLogger(__name__)


_LOCAL_MASTER = re.compile(r"^local(?:\[\s*(\*|\d+)\s*\])?$")
DEFAULT_TASK_RETRIES = 4  # Spark's own spark.task.maxFailures default on clusters
UTF8_LOCALE = "C.UTF-8"  # in every glibc since 2.35 and in musl; a UTF-8 locale without translations


def with_task_retries(master: str, max_failures: str | None = None) -> str:
    """`local`, `local[N]`, `local[*]` -> `local[N,F]`: in local mode Spark ignores spark.task.maxFailures
    and never retries a failed task (F is 1), so one executor fault (a MemoryError, a lost file) would fail
    the whole job. F is spark.task.maxFailures when given, else 4 like on a cluster. Masters that already
    say F (`local[2,1]` turns retries off), cluster masters and `local-cluster[...]` are returned as they
    are."""
    m = _LOCAL_MASTER.match(master.strip())
    if m is None:
        return master
    failures = (max_failures or "").strip()
    failures = failures if failures.isdigit() and int(failures) > 0 else str(DEFAULT_TASK_RETRIES)
    return f"local[{m.group(1) or 1},{failures}]"


def _submitted_conf() -> dict[str, str]:
    """Settings spark-submit already passed to this driver (empty when Python started the JVM itself)."""
    if not os.environ.get("PYSPARK_GATEWAY_PORT"):
        return {}

    SparkContext._ensure_initialized()
    return dict(SparkConf().getAll())


def _winning(settings: dict[str, str], submitted: dict[str, str],
             conf: dict[str, str] | None) -> dict[str, str]:
    """The settings to apply: spark-submit --conf / spark-defaults.conf win over our config defaults,
    explicit `conf` wins over both."""
    return {k: v for k, v in settings.items() if k not in submitted or k in (conf or {})}


@contextmanager
def utf8_launch_locale() -> Iterator[None]:
    """Around the launch of the driver's JVM: a UTF-8 locale when the caller's is not (LANG=C under cron).
    Java takes its file name encoding from the locale at start (`-Dsun.jnu.encoding` is ignored on Java
    17), and under `C` it lists no file whose name has a non-ASCII character. Only the launched JVM sees
    the change; this process's environment is restored."""
    effective = next((os.environ[k] for k in ("LC_ALL", "LC_CTYPE", "LANG") if os.environ.get(k)), "")
    if re.search(r"utf-?8", effective, re.IGNORECASE):
        yield
        return
    previous = os.environ.get("LC_ALL")
    os.environ["LC_ALL"] = UTF8_LOCALE
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("LC_ALL", None)
        else:
            os.environ["LC_ALL"] = previous


def get_spark(
    cfg: Config,
    master: str | None = None,
    conf: dict[str, str] | None = None,
    app_name: str | None = None,
) -> SparkSession:
    """Return the active session (spark-submit, Databricks, notebooks) or build one from config.

    Under spark-submit the master and confs given on its command line win; config only fills gaps.
    A local master gets task retries (`local[2]` runs as `local[2,4]`, see `with_task_retries`), so a
    task that fails for a reason other than its data is retried as it would be on a cluster.
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
    # file names are bytes: every JVM and Python worker decodes them as UTF-8 whatever the caller's
    # locale (cron's is C); see utf8_launch_locale for the driver
    settings.setdefault("spark.executorEnv.LC_ALL", UTF8_LOCALE)
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
    outside = submitted.get("spark.master") or os.environ.get("MASTER")  # spark-submit's, if any
    chosen = master or outside or cfg.spark.master
    applied = _winning(settings, submitted, conf)
    retrying = with_task_retries(chosen, {**submitted, **applied}.get("spark.task.maxFailures"))
    if master or not outside or retrying != chosen:
        builder = builder.master(retrying)
    if retrying != chosen:
        log.debug("master %s runs as %s: failed tasks are retried in local mode too", chosen, retrying)
    for key, value in applied.items():
        builder = builder.config(key, value)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with utf8_launch_locale():
        spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("XRAY_SPARK_SPARK_LOG_LEVEL", "WARN"))
    log.info("Spark %s, master %s", spark.version, spark.sparkContext.master)
    return spark
