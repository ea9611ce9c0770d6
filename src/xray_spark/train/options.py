"""CLI arguments + config -> a validated TrainSpec (CLI flags win over `train:` config keys)."""

from __future__ import annotations

import argparse

from xray_spark.config import Config
from xray_spark.data.files import check_data_args
from xray_spark.errors import UserError
from xray_spark.features.backbones import backbone_names
from xray_spark.features.run import check_weights_arg
from xray_spark.tasks import TASKS, parse_list
from xray_spark.train.calibrate import calibration_settings
from xray_spark.train.heads import check_param_names, get_head, head_names
from xray_spark.train.run import TrainSpec

# Higher is better for all of these: the champion is the row with the largest value.
SELECT_METRICS = ("macro_f1", "accuracy", "covid_f1", "covid_recall", "covid_precision", "roc_auc_macro")
# MulticlassClassificationEvaluator metric names that every head can be scored on (no probability needed).
CV_METRICS = ("f1", "accuracy", "weightedPrecision", "weightedRecall")


def _one_of(value: str, allowed: tuple[str, ...], key: str) -> None:
    if value not in allowed:
        raise UserError(f"config {key}: {value!r} is not one of {', '.join(allowed)}")


def check_train_config(cfg: Config) -> None:
    """The `train:` settings that name things (metrics, MLlib Params): wrong names fail here, before Spark."""
    tc = cfg.train
    _one_of(tc.select_metric, SELECT_METRICS, "train.select_metric")
    _one_of(tc.cv_metric, CV_METRICS, "train.cv_metric")
    for key, per_head in (("train.head_params", tc.head_params), ("train.param_grids", tc.param_grids)):
        for head, params in per_head.items():
            check_param_names(get_head(head), params or {}, f"{key}.{head}")


def resolve_train_options(args: argparse.Namespace, cfg: Config) -> TrainSpec:
    if not args.data:
        raise UserError("--data is required (an image folder or an ingest output folder)")
    check_data_args(args.data)
    tc = cfg.train
    backbones = parse_list(args.backbones or tc.backbones, backbone_names(), "backbone")
    heads = parse_list(args.heads or tc.heads, head_names(), "head")
    tasks = parse_list(args.tasks or tc.tasks, list(TASKS), "task")
    weights = args.weights or tc.weights
    if getattr(args, "calibration", None):  # argparse checked the choice
        calibration_settings(cfg).method = args.calibration
    check_train_config(cfg)
    check_weights_arg(weights)
    return TrainSpec(
        data=args.data, out_dir=args.out, backbones=backbones, heads=heads, tasks=tasks, weights=weights,
        tracking_uri=getattr(args, "tracking_uri", None), cache_dir=getattr(args, "cache_dir", None),
        baseline=not getattr(args, "no_baseline", False),
        loso=getattr(args, "eval", "internal") == "leave-one-source-out",
        int8_gate=getattr(args, "int8_gate", None),
    )
