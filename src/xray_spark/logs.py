"""Logging setup shared by the CLI and the notebooks: one format, one list of loggers too chatty at INFO."""

from __future__ import annotations

import logging
from typing import IO

# Third-party loggers that flood INFO/DEBUG output (JVM gateway, plotting, HTTP, MLflow's store and
# migrations, Keras/TensorFlow); quieted to WARNING so the project's own progress lines stay readable.
NOISY_LOGGERS = ("py4j", "matplotlib", "PIL", "urllib3", "alembic", "mlflow.store", "h5py", "absl")


def setup_logging(level: int, stream: IO[str] | None = None) -> None:
    """Configure the root logger at `level` (to `stream`, stderr when None) and quiet NOISY_LOGGERS to
    WARNING.

    Like `logging.basicConfig`, does nothing to the root logger when it already has handlers.
    """
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=stream,
    )
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
