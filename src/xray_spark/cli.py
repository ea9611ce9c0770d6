"""`xray-spark` console script: argument parsing and exit codes only; the work lives in the package.

Exit codes (errors.py): 0 done, 2 bad arguments/config/input location/model, 75 an outage or a busy lease
worth retrying later, 1 anything else. Errors are one line on stderr; `--verbose` adds the traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

# lazy: every command imports its implementation inside its cmd_* function (pyspark, TensorFlow via the
# featurizer, scikit-learn, matplotlib, MLflow, OpenVINO, pandas...), so `--help`, `CMD --help` and argument
# errors answer at once; the parser needs only the light modules below (tests/test_imports.py checks both).
from xray_spark import paths
from xray_spark.config import (
    IMAGES_PER_TASK,
    WAVES_PER_CHUNK,
    Config,
    add_spark_arguments,
    load_config,
    parse_conf_pairs,
)
from xray_spark.errors import (
    EXIT_FAILED,
    EXIT_RETRY,
    EXIT_USAGE,
    TransientError,
    UserError,
    is_transient,
    one_line,
)
from xray_spark.evaluation.int8_config import GATE_MODES  # (also registers config `int8`)
from xray_spark.features import ENGINES
from xray_spark.finetune import config as _finetune_section  # noqa: F401  (registers config `finetune`)
from xray_spark.logs import setup_logging
from xray_spark.tasks import TASKS, get_task

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from xray_spark.train.run import TrainResult

log = logging.getLogger("xray_spark")

TOKEN_ENV = "XRAY_SPARK_SERVE_TOKEN"  # `serve --token`'s default: read here; the serving modules take a token


class _Parser(argparse.ArgumentParser):
    """argparse prints usage + error; the contract asks for one clear line and exit 2."""

    def error(self, message: str) -> None:
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(2)


def _context(args: argparse.Namespace) -> tuple[Config, Callable[[], SparkSession]]:
    """Config + SparkSession (started on first call) from the shared --config/--master/--conf arguments."""
    from xray_spark.session import get_spark

    cfg = load_config(args.config)
    conf = parse_conf_pairs(args.conf)
    app_name = f"{cfg.spark.app_name} {args.command}"  # e.g. "xray-spark score" in the cluster UI and history
    return cfg, (lambda: get_spark(cfg, master=args.master, conf=conf, app_name=app_name))


def cmd_ingest(args: argparse.Namespace) -> int:
    from xray_spark.data.files import check_data_args
    from xray_spark.data.ingest import format_summary, ingest

    check_data_args(args.data)  # fail fast (exit 2) before starting a JVM
    cfg, spark = _context(args)
    result = ingest(spark(), args.data, args.out, cfg)
    print(format_summary(result.summary))
    print(f"images table: {result.layout.images}\nsplit: {result.layout.split_csv}")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from xray_spark.data.chowdhury import import_dataset
    from xray_spark.data.fetch import fetch_dataset

    if args.from_dir is not None:
        if args.base_url is not None or args.limit is not None:
            raise UserError("--base-url and --limit do not apply to --from (an import of a local folder)")
        result = import_dataset(args.name, args.from_dir, args.to, dry_run=args.dry_run,
                                progress=not args.quiet)
    else:
        result = fetch_dataset(args.name, args.to, base_url=args.base_url, limit=args.limit,
                               progress=not args.quiet, workers=args.workers, timeout=args.timeout,
                               dry_run=args.dry_run)
    print(result.summary())
    print("\n".join(result.selection_lines()))
    for failure in result.failed:
        print(f"failed: {failure.path}: {failure.reason}")
    return 0 if result.ok else 1


def cmd_featurize(args: argparse.Namespace) -> int:
    from xray_spark.features.backbones import get_backbone
    from xray_spark.features.run import featurize_folder

    get_backbone(args.backbone)  # unknown name -> exit 2 before Spark starts
    cfg, spark = _context(args)
    summary = featurize_folder(spark(), cfg, data=args.data, backbone=args.backbone, weights=args.weights,
                               out_dir=args.out, batch_size=args.batch_size)
    print(summary)
    return 0


def _check_local_out(out: str) -> None:
    """Reports, plots and the default MLflow store under --out are written by the driver: a local folder
    (on Databricks a /Volumes/... path). Checked before a JVM starts."""
    if not paths.is_local(out):
        raise UserError(f"--out {out}: give a folder on the driver's disk (on Databricks a /Volumes/... "
                        "path); --data may be on any filesystem")


def cmd_train(args: argparse.Namespace) -> int:
    from xray_spark.train.options import resolve_train_options
    from xray_spark.train.run import run_training

    _check_local_out(args.out)
    cfg, spark = _context(args)
    spec = resolve_train_options(args, cfg)
    _print_train_result(run_training(spark(), cfg, spec))
    return 0


def _print_train_result(result: TrainResult) -> None:
    from xray_spark.train.report import format_reference_table

    for task in result.comparison["task"].drop_duplicates():
        print(f"\n{get_task(task).description} (test split, 95% intervals)")
        print(format_reference_table(result.comparison, task))
    print(f"\nreport: {result.files['report.md']}\ncomparison: {result.files['comparison.csv']}")
    for task, champ in result.champions.items():
        print(f"champion {task}: {champ['uri']} "
              f"(version {champ['version']}: {champ['backbone']} + {champ['head']})")
        if champ.get("int8"):
            print(f"  int8 {champ['int8']}")
    print(f"MLflow: {result.tracking_uri}  (UI: mlflow ui --backend-store-uri {result.tracking_uri})")


def cmd_finetune(args: argparse.Namespace) -> int:
    from xray_spark.data.files import check_data_args
    from xray_spark.features.backbones import get_backbone
    from xray_spark.features.run import check_weights_arg
    from xray_spark.finetune.run import FinetuneSpec, run_finetune

    get_backbone(args.backbone)  # every argument is checked (exit 2) before a JVM starts
    check_data_args(args.data)
    check_weights_arg(args.weights)
    _check_local_out(args.out)
    for name in ("epochs", "workers"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name} must be 1 or more, got {getattr(args, name)}")
    cfg, spark = _context(args)
    spec = FinetuneSpec(data=args.data, backbone=args.backbone, task=args.task, weights=args.weights,
                        out_dir=args.out, epochs=args.epochs, workers=args.workers,
                        tracking_uri=args.tracking_uri)
    print("\n".join(run_finetune(spark(), cfg, spec).lines()))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from xray_spark.scoring.run import score_command

    cfg, spark = _context(args)
    if args.tracking_uri:
        cfg.tracking_uri = args.tracking_uri
    summary = score_command(spark, cfg, model=args.model, input_dir=args.input, output_dir=args.output,
                            chunk_size=args.chunk_size, min_age_seconds=args.min_age,
                            verify_content=args.verify_content)
    print("\n".join(summary.lines()))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from xray_spark.data.files import check_local_data_dir
    from xray_spark.evaluation.external import evaluate_model
    from xray_spark.models.loading import resolve_model
    from xray_spark.tracking import tracking_uri_for

    check_local_data_dir(args.data)  # fail fast (exit 2) before starting a JVM
    _check_local_out(args.out)
    cfg, spark = _context(args)
    cfg.tracking_uri = tracking_uri_for(args.tracking_uri, cfg.tracking_uri, args.out)
    ref = resolve_model(args.model, cfg)  # an unknown model is exit 2 before Spark starts
    result = evaluate_model(spark(), cfg, model=args.model, data=args.data, out=args.out, ref=ref)
    print("\n".join(result.lines()))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from xray_spark.demo import run_demo

    _check_local_out(args.out)
    cfg, spark = _context(args)
    demo = run_demo(spark, cfg, args)
    banner = "=" * 78
    if demo.weights_fallback:
        print(f"{banner}\nImageNet weights are not available here ({demo.weights_fallback}).\n"
              "The demo continued with RANDOM (seeded) weights: its numbers are NOT ImageNet-feature "
              "results.\n"
              f"Pass --weights PATH or run once with internet to get the real thing.\n{banner}")
    _print_train_result(demo.train)
    for task, summary in demo.scores.items():
        print(f"\nscored {demo.n_test} test-split images with the {task} champion:")
        print("\n".join(f"  {line}" for line in summary.lines()))
    train = demo.train
    print(f"\n{banner}\nreport:      {train.files['report.md']}\n"
          f"comparison:  {train.files['comparison.csv']}")
    print(f"predictions: {demo.predictions}")
    for task, ev in demo.external.items():
        internal = demo.external_rows[task]
        print(f"external:    {task} champion on {ev.source} ({ev.n} images): accuracy "
              f"{ev.metrics['accuracy']:.3f} vs {internal['accuracy']:.3f} on the internal test split "
              f"-> {ev.files['report.md']}")
    print(f"MLflow UI:   mlflow ui --backend-store-uri {train.tracking_uri}   "
          "(then open http://127.0.0.1:5000)")
    if demo.weights == "none":
        print("NOTE: features came from randomly initialised backbones (no ImageNet weights were used).")
    print(banner)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from xray_spark.serving.app import Settings as ServeSettings
    from xray_spark.serving.run import serve_command

    settings = ServeSettings(
        host=args.host, port=args.port, token=args.token or os.environ.get(TOKEN_ENV) or None,
        workers=args.workers, queue=args.queue, max_upload_mb=args.max_upload_mb,
        cors_origins=tuple(args.cors_origin or ()),
    )
    serve_command(settings, bundle=args.bundle, model=args.model, engine=args.engine, threads=args.threads,
                  tracking_uri=args.tracking_uri)
    return 0


class _Command(NamedTuple):
    """One subcommand: its name, its code, the function adding its arguments, its one-line help."""

    name: str
    func: Callable[[argparse.Namespace], int]
    arguments: Callable[[argparse.ArgumentParser], None]
    help: str
    spark: bool = True  # takes --config/--master/--conf


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; each command's arguments are added by its own `_*_arguments` function."""
    parser = _Parser(prog="xray-spark", description="Spark-native chest X-ray classification pipeline")
    parser.add_argument("--verbose", action="store_true", help="debug logging and tracebacks on failure")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in _COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        if command.spark:
            add_spark_arguments(p)
        p.set_defaults(func=command.func)
        command.arguments(p)
    return parser


def _ingest_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, action="append", metavar="[NAME=]DIR",
                   help="class subfolders, or a folder with manifest.csv; repeat as NAME=DIR to ingest "
                        "several sources together (each image keeps its source)")
    p.add_argument("--out", required=True, metavar="DIR", help="where the images table, split and reports go")


def _fetch_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="dataset name: ozturk2020, cohen2020, or chowdhury2020 (with --from)")
    p.add_argument("--to", required=True, metavar="DIR")
    p.add_argument("--from", dest="from_dir", metavar="DIR",
                   help="import a copy downloaded by hand (chowdhury2020: the unzipped Kaggle folder)")
    p.add_argument("--dry-run", action="store_true",
                   help="say what would be kept per label and left out per reason, and write nothing (a "
                        "listing such as cohen2020's metadata.csv is still downloaded)")
    p.add_argument("--base-url", metavar="URL", help="mirror to download from instead of the public source")
    p.add_argument("--limit", type=int, metavar="N",
                   help="only N files, round-robin over labels (smoke tests); listed in manifest.limit.csv, "
                        "an existing manifest.csv is left as it is")
    p.add_argument("--workers", type=int, default=4, metavar="N", help="parallel downloads")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS", help="per-request timeout")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _featurize_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="DIR", help="image folder, or an ingest output folder")
    p.add_argument("--backbone", required=True, metavar="NAME",
                   help="ResNet50, InceptionV3, Xception, VGG16, VGG19, DenseNet121")
    p.add_argument("--weights", default="imagenet", metavar="imagenet|none|PATH")
    p.add_argument("--out", required=True, metavar="DIR", help="feature cache folder")
    p.add_argument("--batch-size", type=int, default=None, metavar="N")


def _train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", action="append", metavar="[NAME=]DIR",
                   help="image folder, or an ingest output folder; repeat as NAME=DIR for several sources")
    p.add_argument("--backbones", metavar="LIST",
                   help="e.g. ResNet50,InceptionV3 (default: config train.backbones)")
    p.add_argument("--heads", metavar="LIST",
                   help="e.g. lr,rf,dt,gbt,svc,mlp; finetune trains the backbone end to end (config section "
                        "finetune) (default: config train.heads)")
    p.add_argument("--tasks", metavar="LIST", help="binary,multiclass (default: config train.tasks)")
    p.add_argument("--weights", metavar="imagenet|none|PATH", help="default: config train.weights")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow tracking URI (default: config tracking_uri, else MLFLOW_TRACKING_URI, else "
                        "sqlite under --out)")
    p.add_argument("--cache-dir", metavar="DIR", help="feature cache (default: OUT/features)")
    p.add_argument("--no-baseline", action="store_true", help="skip the metadata-only shortcut baseline")
    p.add_argument("--calibration", choices=("temperature", "none"),
                   help="temperature: each image head's probabilities rescaled by one temperature fitted "
                        "out of fold on the training side (default: config calibration.method)")
    p.add_argument("--eval", choices=("internal", "leave-one-source-out"), default="internal",
                   help="leave-one-source-out: also refit each task's champion once per source, tested on "
                        "that source only (2+ sources: --data NAME=DIR repeated, or a manifest source "
                        "column)")
    p.add_argument("--int8-gate", choices=GATE_MODES, default=None,
                   help="measure each model on int8 vs fp32 features of held-out images; int8 is used only "
                        "by models that pass (auto: where the CPU runs int8 natively; default: config "
                        "int8.gate)")


def _finetune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="DIR", help="image folder, or an ingest output folder")
    p.add_argument("--backbone", required=True, metavar="NAME", help="e.g. ResNet50, InceptionV3, VGG16")
    p.add_argument("--task", required=True, choices=tuple(TASKS))
    p.add_argument("--weights", default="imagenet", metavar="imagenet|none|PATH")
    p.add_argument("--epochs", type=int, default=None, metavar="N",
                   help="total epochs, counting those of a resumed checkpoint (default: config "
                        "finetune.epochs)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="shards, checkpoints, the final model.keras and finetune_metrics.json: on a cluster "
                        "a folder every executor sees at the same path (/dbfs, /Volumes, NFS)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="training workers = barrier tasks (default: config finetune.workers)")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow tracking URI (default: config tracking_uri, else MLFLOW_TRACKING_URI, else "
                        "sqlite under --out)")


def _score_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="URI",
                   help="models:/NAME@champion, runs:/..., or a PipelineModel path")
    p.add_argument("--input", required=True, metavar="DIR")
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument("--chunk-size", type=int, default=None, metavar="N",
                   help=f"images committed per step (default: {IMAGES_PER_TASK * WAVES_PER_CHUNK} per core "
                        f"of the cluster, e.g. {2 * IMAGES_PER_TASK * WAVES_PER_CHUNK} on 2 cores)")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow tracking/registry URI (default: config tracking_uri, else "
                        "MLFLOW_TRACKING_URI)")
    p.add_argument("--min-age", type=float, default=None, metavar="SECONDS",
                   help="leave files modified less than this long ago (maybe still being copied) for the "
                        "next run (default: config scoring.min_age_seconds, 5)")
    p.add_argument("--verify-content", action="store_true",
                   help="hash every file, also those whose path, size and modification time match a scored "
                        "one (catches files rewritten in place)")
    _add_retry_arguments(p)


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="URI",
                   help="models:/NAME@champion, models:/NAME/VERSION, runs:/..., or a PipelineModel path")
    p.add_argument("--data", required=True, metavar="DIR",
                   help="class subfolders, or a folder with manifest.csv (as for ingest)")
    p.add_argument("--out", required=True, metavar="DIR", help="metrics.json, report.md, confusion.png")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="default: config tracking_uri, else MLFLOW_TRACKING_URI, else sqlite under --out")


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="DIR", help="use this folder instead of fetching the Ozturk dataset")
    p.add_argument("--out", default="runs/demo", metavar="DIR")
    p.add_argument("--weights", default=None, metavar="imagenet|none|PATH",
                   help="default imagenet; falls back to none (said loudly) when ImageNet weights "
                        "cannot be had")
    p.add_argument("--backbones", default=None, metavar="LIST")
    p.add_argument("--heads", default=None, metavar="LIST")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="as for train: config tracking_uri, else MLFLOW_TRACKING_URI, else sqlite "
                        "under --out")
    p.add_argument("--external", metavar="DIR",
                   help="a labelled folder from another source (e.g. ../shared/data/figure1): each champion "
                        "is evaluated on it and report.md puts internal vs external side by side")


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--bundle", metavar="DIR",
                       help="a serving bundle folder (serving.json, head/, weights/)")
    which.add_argument("--model", metavar="URI",
                       help="a registered model, e.g. models:/xray-spark-binary@champion (its serving "
                            "bundle, logged by train), or a bundle folder")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow tracking URI for --model (default: MLFLOW_TRACKING_URI, else MLflow's "
                        "default)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; any other needs a token)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", metavar="TOKEN",
                   help=f"bearer token required on /predict (default: ${TOKEN_ENV}; prefer the variable, "
                        "arguments show in `ps`)")
    p.add_argument("--workers", type=int, default=2, metavar="N", help="inference threads (default 2)")
    p.add_argument("--queue", type=int, default=32, metavar="N",
                   help="requests admitted beyond the busy workers before answering 503 (default 32)")
    p.add_argument("--max-upload-mb", type=float, default=50.0, metavar="MB",
                   help="upload limit (default 50)")
    p.add_argument("--cors-origin", action="append", metavar="ORIGIN",
                   help="allow browser pages from this origin (repeat for several; default: CORS off)")
    p.add_argument("--engine", choices=ENGINES, default=None,
                   help="inference engine (default: the one the model was trained with)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="TensorFlow/OpenVINO threads for the model (default: all cores)")


def _add_retry_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--retries", type=int, default=0, metavar="N",
                   help=f"run again up to N times when the run ends with exit code {EXIT_RETRY} (an outage "
                        "or another run holding the lease), and only then")
    p.add_argument("--retry-wait", type=float, default=60.0, metavar="SECONDS",
                   help="seconds between such retries (default 60)")


# The subcommands, in `--help` order.
_COMMANDS = (
    _Command("ingest", cmd_ingest, _ingest_arguments,
             "read, validate, de-duplicate and split an image folder"),
    _Command("fetch", cmd_fetch, _fetch_arguments,
             "download a public dataset (sha256-verified, resumable), or import one downloaded by hand",
             spark=False),
    _Command("featurize", cmd_featurize, _featurize_arguments,
             "turn images into feature vectors (cached by content hash)"),
    _Command("train", cmd_train, _train_arguments,
             "train and compare heads for each backbone and task, tracked in MLflow"),
    _Command("finetune", cmd_finetune, _finetune_arguments,
             "fine-tune a backbone + new softmax head end to end, distributed over Spark barrier tasks, with "
             "a checkpoint every epoch (a rerun resumes from it)"),
    _Command("score", cmd_score, _score_arguments,
             "score new images in a folder with a model, incrementally and exactly once"),
    _Command("evaluate", cmd_evaluate, _evaluate_arguments,
             "metrics of a trained model on any labelled folder (e.g. another hospital's images), tracked in "
             "MLflow"),
    _Command("demo", cmd_demo, _demo_arguments,
             "the main job: fetch (or --data), ingest, featurize, train, register, score"),
    _Command("serve", cmd_serve, _serve_arguments,
             "serve a model over HTTP, one image at a time, without Spark: upload page, REST API (/predict, "
             "/health, /version, /docs)", spark=False),
)


def _run_once(args: argparse.Namespace) -> int:
    """One attempt: the command's own code, or the exit code its error maps to (one line on stderr)."""
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        sys.stderr.write(f"xray-spark: error: {exc}\n")
        return EXIT_USAGE
    except TransientError as exc:
        sys.stderr.write(f"xray-spark: unavailable, retry later: {exc}\n")
        return EXIT_RETRY
    except KeyboardInterrupt:
        sys.stderr.write("xray-spark: interrupted\n")
        return EXIT_FAILED
    except Exception as exc:  # one line for people, the traceback for --verbose
        if args.verbose:
            log.exception("failed")
        if is_transient(exc):
            sys.stderr.write(f"xray-spark: unavailable, retry later: {one_line(exc)}\n")
            return EXIT_RETRY
        sys.stderr.write(f"xray-spark: failed: {one_line(exc)}\n")
        return EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO, sys.stderr)
    retries = getattr(args, "retries", 0)
    if retries < 0 or getattr(args, "retry_wait", 0.0) < 0:
        sys.stderr.write("xray-spark: error: --retries and --retry-wait must be 0 or more\n")
        return EXIT_USAGE
    code = _run_once(args)
    for attempt in range(1, retries + 1):
        if code != EXIT_RETRY:
            break
        log.warning("exit code %d (retry later): attempt %d of %d in %.0fs", code, attempt, retries,
                    args.retry_wait)
        time.sleep(args.retry_wait)
        code = _run_once(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
