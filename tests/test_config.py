"""Config layering and validation: a wrong key is an error naming the key and the file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from xray_spark.config import load_config
from xray_spark.errors import ConfigError
from xray_spark.session import parse_conf_pairs


def test_defaults_and_label_mapping() -> None:
    cfg = load_config(local=None)
    assert cfg.split.folds == 5 and cfg.split.test_fold == 0
    assert cfg.label_for("Covid-19") == "covid"
    assert cfg.label_for("No_findings") == "no_findings"
    assert cfg.label_for("PNEUMONIA") == "pneumonia"
    assert cfg.label_for("cats") is None


def test_layering_local_then_file(tmp_path: Path) -> None:
    local = tmp_path / "local.yml"
    local.write_text("split:\n  seed: 1\n  folds: 4\n")
    extra = tmp_path / "extra.yml"
    extra.write_text("split:\n  seed: 2\nspark:\n  conf:\n    spark.foo: true\n")
    cfg = load_config(extra, local=local)
    assert (cfg.split.seed, cfg.split.folds) == (2, 4)
    assert cfg.spark.conf["spark.foo"] == "true"
    assert cfg.spark.conf["spark.python.worker.reuse"] == "true"  # base keys survive a partial override


@pytest.mark.parametrize(
    "text, needle",
    [
        ("split:\n  sed: 1\n", "unknown config key 'split.sed'"),
        ("split:\n  folds: five\n", "'split.folds' must be an integer"),
        ("dedup:\n  pixel_min_correlation: high\n", "'dedup.pixel_min_correlation' must be a number"),
        ("labels:\n  cat: [cats]\n", "labels.cat"),
        ("split: [1, 2\n", "invalid YAML"),
    ],
)
def test_bad_config_names_key_and_file(tmp_path: Path, text: str, needle: str) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(bad, local=None)
    assert needle in str(err.value) and "bad.yml" in str(err.value)


def test_bad_config_from_cli_is_one_line_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("train:\n  heads: [lr]\n  nonsense: 1\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.png").write_bytes(b"x")
    proc = subprocess.run(
        [sys.executable, "-m", "xray_spark", "ingest", "--data", str(tmp_path / "data"),
         "--out", str(tmp_path / "o"), "--config", str(bad)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "train.nonsense" in proc.stderr


def test_conf_pairs() -> None:
    assert parse_conf_pairs(["a=1", "b = x=y"]) == {"a": "1", "b": "x=y"}


@pytest.mark.parametrize("name", ["train.yml", "score.yml", "databricks-jobs.yml"])
def test_shipped_example_configs_load(name: str) -> None:
    """The README points users at these files: each must pass the same validation as theirs."""
    cfg = load_config(Path(__file__).parents[1] / "conf" / name, local=None)
    assert cfg.train.heads and cfg.spark.master


def test_train_yml_passes_train_option_checks(tmp_path: Path) -> None:
    import argparse

    from xray_spark.train.options import resolve_train_options

    cfg = load_config(Path(__file__).parents[1] / "conf" / "train.yml", local=None)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.png").write_bytes(b"x")
    args = argparse.Namespace(data=str(tmp_path / "data"), out=str(tmp_path / "o"), backbones=None,
                              heads=None, tasks=None, weights=None)
    spec = resolve_train_options(args, cfg)
    assert spec.heads == ["lr", "rf", "dt", "gbt", "svc", "mlp"] and spec.weights == "imagenet"


@pytest.mark.parametrize(
    "text, needle",
    [
        ("train:\n  select_metric: brier\n", "train.select_metric: 'brier' is not one of"),
        ("train:\n  cv_metric: macro_f1\n", "train.cv_metric: 'macro_f1' is not one of"),
        ("train:\n  head_params:\n    rf: {numTree: 10}\n",
         "train.head_params.rf: RandomForestClassifier has no parameter 'numTree'"),
        ("train:\n  param_grids:\n    lr: {regParm: [0.1]}\n",
         "train.param_grids.lr: LogisticRegression has no"),
        ("train:\n  head_params:\n    xgb: {depth: 3}\n", "unknown head 'xgb'"),
    ],
)
def test_bad_train_settings_fail_before_spark(tmp_path: Path, text: str, needle: str) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(text)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.png").write_bytes(b"x")
    proc = subprocess.run(
        [sys.executable, "-m", "xray_spark", "train", "--data", str(tmp_path / "data"),
         "--out", str(tmp_path / "o"), "--config", str(bad), "--weights", "none"], capture_output=True,
         text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert needle in proc.stderr
    assert not (tmp_path / "o").exists()  # nothing was started
