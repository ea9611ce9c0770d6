"""The shortcut baseline: the same heads on file metadata alone (width, height, format, mode, bit depth,
size).

Why: in the reference data every non-COVID image is a 1024x1024 grayscale NIH PNG. When a head that never
sees a pixel scores near the image models, the dataset, not the model, is being measured.
"""

from __future__ import annotations

from pyspark.ml import Pipeline
from pyspark.ml.feature import OneHotEncoder, StringIndexer, VectorAssembler
from pyspark.sql import functions as F

NUMERIC = ["width", "height", "bit_depth", "log_file_size"]
CATEGORICAL = ["format", "mode"]
BASELINE_NAME = "metadata-only"


def metadata_features(images_sdf):
    """images table rows -> same rows + `features` vector built from metadata only (a fitted Spark
    pipeline)."""
    df = images_sdf.withColumn("log_file_size", F.log1p(F.col("file_size").cast("double")))
    for c in ("width", "height", "bit_depth"):
        df = df.withColumn(c, F.coalesce(F.col(c).cast("double"), F.lit(0.0)))
    for c in CATEGORICAL:
        df = df.withColumn(c, F.coalesce(F.col(c), F.lit("unknown")))
    indexers = [StringIndexer(inputCol=c, outputCol=f"{c}_idx", handleInvalid="keep") for c in CATEGORICAL]
    encoder = OneHotEncoder(
        inputCols=[f"{c}_idx" for c in CATEGORICAL], outputCols=[f"{c}_vec" for c in CATEGORICAL],
        handleInvalid="keep"
    )
    assembler = VectorAssembler(inputCols=NUMERIC + [f"{c}_vec" for c in CATEGORICAL], outputCol="features")
    model = Pipeline(stages=[*indexers, encoder, assembler]).fit(df)
    return model.transform(df)
