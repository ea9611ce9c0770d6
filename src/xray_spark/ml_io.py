"""Saving the project's Python pipeline stages (featurizer, shift, calibration, ...) without a Spark job.

Why: pyspark's `DefaultParamsWriter` writes a stage's one-line metadata JSON with `createDataFrame` of a
Python list, a Python-worker job: 0.34 s per stage on average in a warm 36-image `train` (26 such writes,
8.7 s of job time, measured from Spark's event log); a JVM stage's metadata takes 0.04 s. `ParamsWritable`
writes the same JSON (pyspark's own `_get_metadata_to_save`) to the same place, `<path>/metadata/part-00000`
and `_SUCCESS`, through the Hadoop FileSystem API, so any scheme works. Reading is left to pyspark
(`DefaultParamsReadable`, `PipelineModel.load`, MLflow): it loads these folders and those saved before.
Side by side in one warm session: 0.034 s vs 0.32 s to save one stage (median of 10).
"""

from __future__ import annotations

from pyspark.ml.util import DefaultParamsWritable, DefaultParamsWriter, MLWriter

from xray_spark.spark_io import HadoopFS


class MetadataWriter(DefaultParamsWriter):
    """`DefaultParamsWriter` whose `saveImpl` writes the metadata file directly (see the module docstring).
    `save` keeps pyspark's overwrite handling; without `overwrite()` an existing stage folder is refused,
    as pyspark's writer refuses it."""

    def saveImpl(self, path: str) -> None:
        spark = self.sparkSession
        folder = f"{path.rstrip('/')}/metadata"
        fs = HadoopFS(spark)
        if fs.exists(folder):
            raise FileExistsError(f"{folder} already exists; write().overwrite().save(path) replaces it")
        text = DefaultParamsWriter._get_metadata_to_save(self.instance, spark)
        fs.write_text(f"{folder}/part-00000", text + "\n")
        fs.write_text(f"{folder}/_SUCCESS", "")


class ParamsWritable(DefaultParamsWritable):
    """`DefaultParamsWritable` for stages whose state is all simple Params, saved by `MetadataWriter`."""

    def write(self) -> MLWriter:
        return MetadataWriter(self)
