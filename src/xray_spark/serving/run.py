"""`xray-spark serve`: check the settings, find and load the bundle, warm the model up, serve.

Why the order: every mistake a user can fix (an unsafe bind without a token, a bad port, a folder that is
not a bundle) fails in well under a second with one line and exit 2, before TensorFlow or the model loads.
No JVM and no SparkSession are ever started; the serving modules do not import pyspark.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from xray_spark.errors import UserError
from xray_spark.models.serving_bundle import load_bundle
from xray_spark.models.serving_mlflow import bundle_for_model
from xray_spark.serving.app import Settings, check_settings, run_server
from xray_spark.serving.predictor import Predictor

log = logging.getLogger("xray_spark.serving")


def resolve_bundle_folder(bundle: str | None, model: str | None, tracking_uri: str | None = None) -> Path:
    """The local bundle folder for `--bundle DIR` or `--model URI` (a bundle folder, or a registered model:
    the bundle `train` logged beside it, downloaded once; see models/serving_mlflow.py)."""
    if bundle:
        return Path(bundle).expanduser()
    if not model:
        raise UserError("give --bundle DIR or --model URI")
    return bundle_for_model(model, tracking_uri)


def serve_command(settings: Settings, *, bundle: str | None = None, model: str | None = None,
                  engine: str | None = None, threads: int | None = None,
                  tracking_uri: str | None = None) -> None:
    """Load and serve until interrupted. `threads`: TensorFlow/OpenVINO threads for the model (default:
    every core; one inference runs at a time, see predictor.py)."""
    check_settings(settings)
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be 1 or more, got {threads}")
    folder = resolve_bundle_folder(bundle, model, tracking_uri)
    loaded = load_bundle(folder)
    # worker.tf_threads() reads this when the model loads: this process is the server, not a Spark task
    if threads is not None:
        os.environ["XRAY_SPARK_TF_THREADS"] = str(threads)
    else:  # a user's own setting stands; else every core (one inference runs at a time)
        os.environ.setdefault("XRAY_SPARK_TF_THREADS", str(os.cpu_count() or 1))
    predictor = Predictor(loaded, engine=engine)
    predictor.warm_up()
    meta = loaded.meta
    log.info("serving %s version %s (%s, %s head, labels %s) with %s on http://%s:%d%s",
             meta.model_name or "unnamed model", meta.model_version or "-", loaded.backbone,
             loaded.head.classifier.kind, ", ".join(loaded.labels), predictor.engine, settings.host,
             settings.port, " (token required)" if settings.token else "")
    run_server(predictor, settings)
