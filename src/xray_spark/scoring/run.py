"""The scoring run: plan, then score and commit chunk by chunk, then one summary.

Per chunk: re-read the candidate files, keep those whose sha256 still matches the plan, run the stages up to
the featurizer once and persist that (without the image bytes), set aside rows with null features as
`quarantined` (reason from the featurizer's error column), run the head on the rest, and commit the union
as one Parquet file (see store.py). Each committed chunk is final: a crash loses at most the chunk in flight,
and the next run scores exactly what is missing.

Only the image's own faults (decode.py's reason codes) become `quarantined` rows: any other executor fault
(MemoryError, I/O) fails the task, which Spark retries (worker.py; session.py gives local masters retries).
Rows record `engine`, what made the features (`openvino:bf16`, `keras:fp32`; null when quarantined), and
`decoder`, the decoder stack that read the file, which lets a later run rescore files no decoder could read
(store.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from pyspark import StorageLevel
from pyspark.ml.functions import vector_to_array
from pyspark.sql import functions as F

from xray_spark.config import IMAGES_PER_TASK, WAVES_PER_CHUNK, Config
from xray_spark.errors import UserError
from xray_spark.models.drift import Drift, Tally, drift, drift_lines
from xray_spark.models.loading import (
    ModelRef,
    ScoringPipeline,
    featurizer_class,
    load_pipeline,
    resolve_model,
    split_pipeline,
)
from xray_spark.models.shift import CATEGORICAL, FEATURES_REASON, NUMERIC
from xray_spark.models.shift_stage import FLAG_COL, PROPS_COL, REASONS_COL, SHIFT_COL
from xray_spark.paths import glob_escape, is_local, local_path
from xray_spark.scoring.plan import Candidate, Plan, chunks, plan_run, read_contents
from xray_spark.scoring.store import OutputStore
from xray_spark.scoring.tracking_run import log_score_run
from xray_spark.spark_io import HadoopFS, balanced_partitions

if TYPE_CHECKING:
    from pyspark.ml import PipelineModel
    from pyspark.sql import Column, DataFrame, SparkSession

log = logging.getLogger(__name__)


def default_chunk_size(spark: SparkSession) -> int:
    """The `--chunk-size` default: defaultParallelism x IMAGES_PER_TASK x WAVES_PER_CHUNK (512 on 2 cores)."""
    return max(1, spark.sparkContext.defaultParallelism) * IMAGES_PER_TASK * WAVES_PER_CHUNK


@dataclass
class ScoreSummary:
    """Counts reconcile: files_seen = newly_scored + quarantined + skipped + too_recent + retry_later."""

    model: ModelRef
    files_seen: int = 0
    newly_scored: int = 0
    quarantined: int = 0
    skipped: int = 0  # already scored by this model version (same path, or same content elsewhere)
    too_recent: int = 0  # younger than --min-age: maybe still being copied, left for the next run
    retry_later: int = 0  # changed, vanished or unreadable during this run
    chunks: int = 0
    seconds: float = 0.0
    drift: Drift | None = None  # this run's images against the training images (models/drift.py)
    drift_n: int = 0
    mlflow_run_id: str | None = None  # the MLflow run its counts and drift went to (tracking_run.py)

    def lines(self) -> list[str]:
        out = [
            f"model: {self.model.name} version {self.model.version} ({self.model.uri})",
            f"files seen: {self.files_seen}",
            f"newly scored: {self.newly_scored}",
            f"skipped as already scored: {self.skipped}",
            f"quarantined: {self.quarantined}",
        ]
        if self.too_recent:
            out.append(f"left for the next run (younger than --min-age): {self.too_recent}")
        if self.retry_later:
            out.append(f"left for the next run (changed, vanished or unreadable): {self.retry_later}")
        if self.drift is not None:
            out += drift_lines(self.drift, self.drift_n)
        rate = (self.newly_scored + self.quarantined) / self.seconds if self.seconds else 0.0
        out.append(f"chunks committed: {self.chunks} in {self.seconds:.1f}s ({rate:.1f} images/s)")
        if self.mlflow_run_id:
            out.append(f"mlflow run: {self.mlflow_run_id} (experiment xray-spark-scoring)")
        return out


ENGINE_COL = "__xray_engine"  # the featurizer's engineCol while scoring, when the model did not set one


def _output_columns(pipe: ScoringPipeline) -> list[str]:
    return ["path", "sha256", "status", "reason", "predicted_label", *pipe.prob_columns(), "probability",
            SHIFT_COL, FLAG_COL, REASONS_COL, PROPS_COL, "model_name", "model_version", "model_uri", "engine",
            "decoder", "scored_at", "file_size", "modified_at"]


def record_engine(pipe: ScoringPipeline) -> str | None:
    """Make the featurizer stage report the engine that made each row's features (e.g. `openvino:bf16`):
    its own `engineCol` if the model set one, else a private column. None when the stage has no such Param
    (a custom featurizer): rows then say nothing about the engine. The stage belongs to this run's loaded
    model only, so setting the Param changes nothing persisted."""
    feat = pipe.featurize.stages[-1]
    if not feat.hasParam("engineCol"):
        return None
    param = feat.getParam("engineCol")
    if not feat.isDefined(param) or not feat.getOrDefault(param):
        feat.set(param, ENGINE_COL)
    return feat.getOrDefault(param)


def _ok_rows(pipe: ScoringPipeline, scored: DataFrame, engine_col: str | None) -> DataFrame:
    cols = [F.col(pipe.label_col).cast("string").alias("predicted_label")]
    if pipe.probability_col and pipe.probability_col in scored.columns:
        arr = vector_to_array(F.col(pipe.probability_col), "float64")
        cols += [F.get(arr, i).alias(name) for i, name in enumerate(pipe.prob_columns())]
        pairs = [x for i, label in enumerate(pipe.labels) for x in (F.lit(label), F.get(arr, i))]
        cols.append(F.create_map(*pairs).alias("probability"))
    else:  # LinearSVC / OneVsRest heads: no probabilities, same schema
        cols += [F.lit(None).cast("double").alias(name) for name in pipe.prob_columns()]
        cols.append(F.lit(None).cast("map<string,double>").alias("probability"))
    engine = F.col(engine_col) if engine_col else F.lit(None)
    return scored.select("path", "sha256", "file_size", "modified_at", F.lit("ok").alias("status"),
                         F.lit(None).cast("string").alias("reason"), *cols, *pipe.shift_columns(scored),
                         engine.cast("string").alias("engine"))


def _quarantine_rows(pipe: ScoringPipeline, df: DataFrame, reason: Callable) -> DataFrame:
    return df.select(
        "path", "sha256", "file_size", "modified_at", F.lit("quarantined").alias("status"),
        reason().cast("string").alias("reason"), F.lit(None).cast("string").alias("predicted_label"),
        *[F.lit(None).cast("double").alias(n) for n in pipe.prob_columns()],
        F.lit(None).cast("map<string,double>").alias("probability"),
        *pipe.shift_columns(nulls=True),
        F.lit(None).cast("string").alias("engine"),  # no features were made
    )


def _stamp(pipe: ScoringPipeline, df: DataFrame, store: OutputStore, scored_at: datetime) -> DataFrame:
    ref = store.ref
    df = df.select(
        "*", F.lit(ref.name).alias("model_name"), F.lit(ref.version).alias("model_version"),
        F.lit(ref.uri).alias("model_uri"), F.lit(store.decoder).alias("decoder"),
        F.lit(scored_at).cast("timestamp").alias("scored_at"),
    )
    return df.select(*_output_columns(pipe))


def _commit_refused(spark: SparkSession, pipe: ScoringPipeline, store: OutputStore, plan: Plan) -> int:
    """Files refused unread (over decode.max_file_bytes, special or empty files) get their quarantine row,
    keyed by path/size/mtime, so the next run knows them by path."""
    if not plan.refused:
        return 0
    rows = [(p, None, n, m, reason) for p, n, m, reason in plan.refused]
    df = spark.createDataFrame(rows,
                               "path string, sha256 string, file_size long, modified_at timestamp, r string")
    scored_at = datetime.now(timezone.utc)
    store.commit(_stamp(pipe, _quarantine_rows(pipe, df, lambda: F.col("r")), store, scored_at), scored_at)
    return len(rows)


def _chunk_tally() -> list[Column]:
    """What a committed chunk adds up to, per (format, mode, bit depth): every row, the ok ones, and the
    run-level drift tally of the ok rows with a shift score (models/drift.py Tally.add reads these)."""
    ok = F.col("status") == "ok"
    checked = ok & F.col(SHIFT_COL).isNotNull()
    count = lambda cond: F.sum(F.when(cond, 1).otherwise(0))  # noqa: E731
    sums = []
    for p in NUMERIC:
        value = F.when(checked & (F.col(f"{PROPS_COL}.{p}") > 0), F.log(F.col(f"{PROPS_COL}.{p}")))
        sums += [F.sum(value).alias(f"{p}_log_sum"), F.count(value).alias(f"{p}_log_n")]
    return [F.count(F.lit(1)).alias("all"), count(ok).alias("ok"), count(checked).alias("n"),
            count(checked & ~F.col(FLAG_COL)).alias("flagged"),
            count(checked & F.array_contains(REASONS_COL, FEATURES_REASON)).alias("by_features"), *sums]


def score_chunk(spark: SparkSession, pipe: ScoringPipeline, store: OutputStore,
                chunk: list[Candidate], engine_col: str | None = None) -> tuple[int, int, Tally]:
    """Score one chunk and commit it; returns (ok, quarantined, its drift tally). Rows whose bytes changed
    are left out.

    One Spark job does the work: the featurized rows are persisted (without the image bytes) and both
    branches (head on good rows, quarantine rows) read that cache; Spark's block locking makes the second
    reader of a partition wait for the first instead of featurizing it again. `repartition(1)` moves only
    the small output rows, so the featurizer keeps every core and the chunk still lands as one file.
    Counts are read back from the staged file (a small job), and the expected (path, sha256) pairs are an
    InSet: the same generated code for every chunk (less JIT work per chunk).
    """
    key = F.concat_ws("\u0000", "path", "sha256")
    local_reads = {c.path: c.read_path for c in chunk if c.read_path}
    current = (
        read_contents(spark, [c.path for c in chunk], local_reads)
        .withColumn("sha256", F.sha2(F.col("content"), 256))
        .where(key.isin([f"{c.path}\u0000{c.sha256}" for c in chunk]))  # unchanged since planning
        .select("path", "sha256", F.col("length").alias("file_size"),
                F.col("modificationTime").alias("modified_at"), F.col("content").alias(pipe.input_col))
        .repartition(balanced_partitions(len(chunk), spark.sparkContext.defaultParallelism, IMAGES_PER_TASK))
    )
    t0 = time.time()
    feats = pipe.featurize_frame(current).drop(pipe.input_col).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        scored_at = datetime.now(timezone.utc)
        good = _ok_rows(pipe, pipe.score_frame(feats.where(F.col(pipe.features_col).isNotNull())), engine_col)
        reason = lambda: F.coalesce(F.col(pipe.error_col), F.lit("no_features"))  # noqa: E731
        bad = _quarantine_rows(pipe, feats.where(F.col(pipe.features_col).isNull()), reason)
        rows = _stamp(pipe, good.unionByName(bad), store, scored_at)
        staged = store.stage(rows.repartition(1))
        # counts read back from the staged file (an Observation here broke later Python UDF jobs on the
        # same session in Spark 4.0: "Task not serializable: ObservationManager")
        n, n_ok, groups = 0, 0, []
        if staged is not None:
            keys = [F.col(f"{PROPS_COL}.{p}").alias(p) for p in CATEGORICAL]
            groups = spark.read.parquet(glob_escape(staged)).groupBy(*keys).agg(*_chunk_tally()).collect()
            n, n_ok = sum(int(g["all"]) for g in groups), sum(int(g["ok"]) for g in groups)
        if staged is None or n == 0:  # every file changed or vanished: commit nothing
            if staged is not None:
                store.discard(staged)
            return 0, 0, Tally()
        tally = Tally().add(g.asDict() for g in groups).add_components(_component_counts(pipe, feats))
        committed = store.publish(staged, scored_at)
        log.debug("chunk of %d: %d ok, %d quarantined in %.1fs -> %s", len(chunk), n_ok, n - n_ok,
                  time.time() - t0, committed)
        return n_ok, n - n_ok, tally
    finally:
        feats.unpersist()


def _component_counts(pipe: ScoringPipeline, feats: DataFrame) -> list[dict[str, int]]:
    """The chunk's images per drift bin of each top feature component (ShiftModel.component_counts), from
    the persisted features: one small aggregate job; none for a model without a shift check."""
    if pipe.shift is None:
        return []
    return pipe.shift.component_counts(feats.where(F.col(pipe.features_col).isNotNull()))


def score_folder(spark: SparkSession, cfg: Config, ref: ModelRef, *, input_dir: str, output_dir: str,
                 chunk_size: int | None = None, min_age_seconds: float | None = None,
                 verify_content: bool = False, featurizer_cls: type | None = None) -> ScoreSummary:
    """Score every image below `input_dir` that `ref` has not scored yet into `output_dir`.

    `chunk_size` None means `default_chunk_size(spark)`; `min_age_seconds` None means config
    `scoring.min_age_seconds`. `featurizer_cls` selects the stage after which bad rows are set aside
    (default: DeepImageFeaturizer). Raises LeaseHeld when another run of this model into this output is on.
    """
    if min_age_seconds is None:
        min_age_seconds = cfg.scoring.min_age_seconds
    t0 = time.time()
    check_chunk_size(chunk_size)
    if chunk_size is None:
        chunk_size = default_chunk_size(spark)
        log.info("chunk size %d (default for %d cores)", chunk_size, spark.sparkContext.defaultParallelism)
    if not HadoopFS(spark).is_dir(input_dir):
        raise UserError(f"--input {input_dir}: no such folder")
    store = OutputStore(spark, output_dir, ref)
    summary = ScoreSummary(model=ref)
    with store.leased(ttl=cfg.scoring.lease_seconds, settle=cfg.scoring.lease_settle_seconds):
        store.clean_stale()
        try:
            model, plan = _load_and_plan(spark, cfg, ref, store, input_dir, min_age_seconds, verify_content)
            pipe = split_pipeline(model, featurizer_cls or featurizer_class(), ref.uri)
            engine_col = record_engine(pipe)
            log.debug("model loaded and run planned in %.1fs", time.time() - t0)
            summary.files_seen = plan.files_seen
            summary.skipped = plan.known_by_path + plan.known_by_content
            summary.too_recent = plan.too_recent
            summary.retry_later = plan.not_ready
            if plan.refused:
                summary.quarantined += _commit_refused(spark, pipe, store, plan)
                summary.chunks += 1
            tally = _score_chunks(spark, pipe, store, plan, chunk_size, engine_col, summary)
            if pipe.shift is not None and tally.n:
                summary.drift = drift(tally, pipe.shift.getReference(), cfg.shift.drift_psi,
                                      cfg.shift.drift_z, 1.0 - cfg.shift.quantile)
                summary.drift_n = tally.n
        finally:
            store.finish()
    summary.seconds = time.time() - t0
    return summary


def _load_and_plan(spark: SparkSession, cfg: Config, ref: ModelRef, store: OutputStore, input_dir: str,
                   min_age_seconds: float, verify_content: bool) -> tuple[PipelineModel, Plan]:
    """The model and the run's plan. Loading the model and planning are independent Spark work: they
    overlap, so a run waits for the slower of the two instead of their sum."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="score-load-model") as pool:
        loading = pool.submit(load_pipeline, spark, ref, store.scratch_dir())
        ledger = store.ledger().persist()
        try:
            plan = plan_run(spark, input_dir, ledger, extensions=cfg.decode.extensions,
                            max_file_bytes=cfg.decode.max_file_bytes, min_age_seconds=min_age_seconds,
                            verify_content=verify_content)
        finally:
            ledger.unpersist()
        return loading.result(), plan


def _score_chunks(spark: SparkSession, pipe: ScoringPipeline, store: OutputStore, plan: Plan, chunk_size: int,
                  engine_col: str | None, summary: ScoreSummary) -> Tally:
    """Score the plan's candidates chunk by chunk (each committed on its own), counting into `summary`;
    returns the file properties tallied over every scored chunk (for the drift check)."""
    parts = chunks(plan.candidates, chunk_size)
    done, tally = 0, Tally()
    for i, chunk in enumerate(parts, 1):
        tc = time.time()
        n_ok, n_bad, chunk_tally = score_chunk(spark, pipe, store, chunk, engine_col)
        tally.merge(chunk_tally)
        summary.newly_scored += n_ok
        summary.quarantined += n_bad
        summary.retry_later += len(chunk) - n_ok - n_bad
        summary.chunks += 1 if n_ok + n_bad else 0
        done += len(chunk)
        dt = time.time() - tc
        log.info("chunk %d/%d: %d ok, %d quarantined, %d changed/unreadable in %.1fs "
                 "(%.1f images/s); %d of %d candidates done", i, len(parts), n_ok, n_bad,
                 len(chunk) - n_ok - n_bad, dt, (n_ok + n_bad) / dt if dt else 0.0, done,
                 len(plan.candidates))
    return tally


def check_chunk_size(chunk_size: int | None) -> None:
    if chunk_size is not None and chunk_size < 1:
        raise UserError(f"--chunk-size must be at least 1, got {chunk_size}")


def check_arguments(input_dir: str, output_dir: str, chunk_size: int | None,
                    min_age_seconds: float | None = None) -> None:
    """Everything that can be checked without Spark (local paths only; other schemes are checked later)."""
    check_chunk_size(chunk_size)
    if min_age_seconds is not None and min_age_seconds < 0:
        raise UserError(f"--min-age must be 0 or more seconds, got {min_age_seconds:g}")
    if is_local(input_dir) and not local_path(input_dir).is_dir():
        raise UserError(f"--input {input_dir}: no such folder")
    if is_local(output_dir) and local_path(output_dir).exists() and not local_path(output_dir).is_dir():
        raise UserError(f"--output {output_dir} exists and is not a folder")


def score_command(spark_factory: Callable[[], SparkSession], cfg: Config, *, model: str, input_dir: str,
                  output_dir: str, chunk_size: int | None = None, min_age_seconds: float | None = None,
                  verify_content: bool = False) -> ScoreSummary:
    """`xray-spark score`: check arguments and resolve the model BEFORE starting Spark, then score.

    `chunk_size` None (the CLI default) means `default_chunk_size(spark)` once Spark is up; `min_age_seconds`
    None means config `scoring.min_age_seconds`.

    Bad arguments or an unusable model raise UserError (the CLI prints one line, exit 2); an unreachable
    tracking server or a busy lease raise TransientError (exit 75).
    """
    check_arguments(input_dir, output_dir, chunk_size, min_age_seconds)
    ref = resolve_model(model, cfg)
    log.debug("model %s -> %s version %s (load %s)", model, ref.name, ref.version, ref.load_uri)
    summary = score_folder(spark_factory(), cfg, ref, input_dir=input_dir, output_dir=output_dir,
                           chunk_size=chunk_size, min_age_seconds=min_age_seconds,
                           verify_content=verify_content)
    for line in summary.lines():
        log.info("score summary: %s", line)
    summary.mlflow_run_id = log_score_run(summary, cfg.tracking_uri, input_dir, output_dir)
    return summary
