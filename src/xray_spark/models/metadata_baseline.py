"""The shortcut baseline: the same heads on file metadata alone (width, height, format, mode, bit depth,
size).

Why: in the reference data every non-COVID image is a 1024x1024 grayscale NIH PNG. When a head that never
sees a pixel scores near the image models, the dataset, not the model, is being measured.

The metadata features are one fitted Spark pipeline that reads the images table's own columns, so the
baseline of a champion can be logged as a model and applied to another source's images table
(`xray-spark evaluate` puts it beside the model).
"""

from __future__ import annotations

from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import OneHotEncoder, SQLTransformer, StringIndexer, VectorAssembler
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

BASELINE_NAME = "metadata-only"
NUMERIC = ("width", "height", "bit_depth")  # as double, 0 when unknown; file size enters as log1p(size)
CATEGORICAL = ("format", "mode")  # one-hot, "unknown" when missing; unseen values get their own slot
INPUT_COLUMNS = (*NUMERIC, "file_size", *CATEGORICAL)  # what the baseline may read from the images table
_PREFIX = "meta_"  # the pipeline's own columns, so they never clash with the images table's


def baseline_input(images: DataFrame) -> DataFrame:
    """The ok images' metadata (what the shortcut baseline may use) with their labels and split."""
    return images.where("status = 'ok'").select(
        "path", "label", "split", F.col("fold").cast("int"), "group_id", "source", *INPUT_COLUMNS)


def _prepare() -> SQLTransformer:
    numeric = [f"coalesce(CAST({c} AS DOUBLE), 0.0) AS {_PREFIX}{c}" for c in NUMERIC]
    numeric.append(f"log1p(coalesce(CAST(file_size AS DOUBLE), 0.0)) AS {_PREFIX}log_file_size")
    categorical = [f"coalesce(CAST({c} AS STRING), 'unknown') AS {_PREFIX}{c}" for c in CATEGORICAL]
    return SQLTransformer(statement=f"SELECT *, {', '.join(numeric + categorical)} FROM __THIS__")


def metadata_feature_model(rows: DataFrame) -> PipelineModel:
    """Fit the metadata -> `features` pipeline on `rows` (any frame with INPUT_COLUMNS). Fitting only learns
    which formats and modes exist; the labels are never read."""
    indexers = [StringIndexer(inputCol=f"{_PREFIX}{c}", outputCol=f"{_PREFIX}{c}_idx", handleInvalid="keep")
                for c in CATEGORICAL]
    encoder = OneHotEncoder(inputCols=[f"{_PREFIX}{c}_idx" for c in CATEGORICAL],
                            outputCols=[f"{_PREFIX}{c}_vec" for c in CATEGORICAL], handleInvalid="keep")
    numeric = [f"{_PREFIX}{c}" for c in NUMERIC] + [f"{_PREFIX}log_file_size"]
    assembler = VectorAssembler(inputCols=numeric + [f"{_PREFIX}{c}_vec" for c in CATEGORICAL],
                                outputCol="features")
    return Pipeline(stages=[_prepare(), *indexers, encoder, assembler]).fit(rows)
