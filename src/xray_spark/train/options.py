"""CLI arguments + config -> a validated TrainSpec (CLI flags win over `train:` config keys)."""

from __future__ import annotations

import argparse

from xray_spark.config import Config
from xray_spark.errors import UserError
from xray_spark.train.compare import TrainSpec
from xray_spark.train.heads import HEADS
from xray_spark.train.tasks import TASKS, parse_list


def resolve_train_options(args: argparse.Namespace, cfg: Config) -> TrainSpec:
    from xray_spark.data.manifest import check_data_dir
    from xray_spark.features.backbones import backbone_names
    from xray_spark.features.run import check_weights_arg

    if not args.data:
        raise UserError("--data is required (an image folder or an ingest output folder)")
    check_data_dir(args.data)
    tc = cfg.train
    backbones = parse_list(args.backbones or tc.backbones, backbone_names(), "backbone")
    heads = parse_list(args.heads or tc.heads, list(HEADS), "head")
    tasks = parse_list(args.tasks or tc.tasks, list(TASKS), "task")
    weights = args.weights or tc.weights
    check_weights_arg(weights)
    return TrainSpec(
        data=args.data, out_dir=args.out, backbones=backbones, heads=heads, tasks=tasks, weights=weights,
        tracking_uri=getattr(args, "tracking_uri", None), cache_dir=getattr(args, "cache_dir", None),
        baseline=not getattr(args, "no_baseline", False),
    )
