"""Config layering and validation: a wrong key is an error naming the key and the file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from xray_spark.cli import main
from xray_spark.config import _RANGES, load_config, parse_conf_pairs
from xray_spark.errors import ConfigError


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


def _config_error(tmp_path: Path, text: str) -> str:
    """The ConfigError message that loading `text` as tmp_path/bad.yml raises."""
    bad = tmp_path / "bad.yml"
    bad.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(bad, local=None)
    return str(err.value)


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
    message = _config_error(tmp_path, text)
    assert needle in message and "bad.yml" in message


@pytest.mark.parametrize(
    "text, needle",
    [
        ("split:\n  folds: 3\ntrain:\n  seed: 1\nsplit:\n  seed: 2\n",
         "line 5: duplicate key 'split' (first given at line 1)"),
        ("split:\n  folds: 3\n  seed: 1\n  folds: 4\n",
         "line 4: duplicate key 'split.folds' (first given at line 2)"),
        ("spark:\n  conf:\n    spark.a: 1\n    spark.b: 2\n    spark.a: 3\n",
         "line 5: duplicate key 'spark.conf.spark.a'"),
        ("train:\n  head_params:\n    rf: {numTrees: 10, maxDepth: 3, numTrees: 20}\n",
         "line 3: duplicate key 'train.head_params.rf.numTrees'"),
    ],
    ids=["top-level", "nested", "deeper", "flow-mapping"],
)
def test_duplicate_key_is_an_error_naming_key_file_and_line(tmp_path: Path, text: str, needle: str) -> None:
    message = _config_error(tmp_path, text)
    assert needle in message and str(tmp_path / "bad.yml") in message


def test_duplicate_key_in_local_layer_names_that_file(tmp_path: Path) -> None:
    local = tmp_path / "local.yml"
    local.write_text("dedup:\n  thumb_size: 64\n  thumb_size: 32\n")
    with pytest.raises(ConfigError, match=r"local\.yml line 3: duplicate key 'dedup\.thumb_size'"):
        load_config(None, local=local)


def test_merge_keys_may_be_overridden_without_being_duplicates(tmp_path: Path) -> None:
    ok = tmp_path / "ok.yml"
    ok.write_text("train:\n  head_params:\n    lr: &p {maxIter: 5, regParam: 0.1}\n"
                  "    mlp:\n      <<: *p\n      maxIter: 9\n")
    cfg = load_config(ok, local=None)
    assert cfg.train.head_params["mlp"] == {"maxIter": 9, "regParam": 0.1}


@pytest.mark.parametrize(
    "text, needle",
    [
        ("split:\n  folds: 1\n", "key 'split.folds' must be >= 2, got 1"),
        ("split:\n  test_fold: 5\n", "key 'split.test_fold' must be in [0, 4] (split.folds is 5), got 5"),
        ("split:\n  seed: -1\n", "key 'split.seed' must be in [0, 2**32 - 1]"),
        ("split:\n  folds: 2\ntrain:\n  cross_validate: true\n",
         "key 'split.folds' must be >= 3 when train.cross_validate is true"),
        ("decode:\n  max_file_bytes: 0\n", "key 'decode.max_file_bytes' must be >= 1, got 0"),
        ("dedup:\n  pixel_min_correlation: 0\n",
         "key 'dedup.pixel_min_correlation' must be in (0, 1], got 0.0"),
        ("dedup:\n  pixel_min_correlation: 1.5\n", "must be in (0, 1], got 1.5"),
        ("dedup:\n  phash_max_hamming: 9\n", "key 'dedup.phash_max_hamming' must be in [0, 8]"),
        ("train:\n  bootstrap_resamples: 0\n", "key 'train.bootstrap_resamples' must be >= 1, got 0"),
        ("train:\n  parallel_fits: 0\n", "key 'train.parallel_fits' must be >= 1, got 0"),
        ("train:\n  seed: -7\n", "key 'train.seed' must be in [0, 2**63 - 1]"),
    ],
)
def test_out_of_range_value_names_key_range_and_file(tmp_path: Path, text: str, needle: str) -> None:
    message = _config_error(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'bad.yml'}: ") and needle in message and "\n" not in message


def test_range_edges_are_accepted(tmp_path: Path) -> None:
    ok = tmp_path / "ok.yml"
    ok.write_text("split:\n  folds: 2\n  test_fold: 1\n  seed: 0\n"
                  "dedup:\n  pixel_min_correlation: 1\n  phash_max_hamming: 0\n")
    cfg = load_config(ok, local=None)
    assert (cfg.split.folds, cfg.split.test_fold, cfg.dedup.pixel_min_correlation) == (2, 1, 1.0)


def test_hamming_range_matches_what_dedup_covers() -> None:
    from xray_spark.data.dedup import MAX_HAMMING_COVERED

    ok, _ = _RANGES["dedup.phash_max_hamming"]
    assert ok(MAX_HAMMING_COVERED) and not ok(MAX_HAMMING_COVERED + 1)


def test_duplicate_key_from_cli_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`score` loads config before it starts Spark (cli._context): the error is one line and exit 2."""
    monkeypatch.chdir(tmp_path)  # no conf/local.yml from the working directory
    bad = tmp_path / "bad.yml"
    bad.write_text("split:\n  folds: 3\n  folds: 4\n")
    (tmp_path / "in").mkdir()

    code = main(["score", "--config", str(bad), "--model", "x", "--input", str(tmp_path / "in"),
                 "--output", str(tmp_path / "out")])

    err = capsys.readouterr().err
    assert code == 2
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err and "duplicate key 'split.folds'" in err and "bad.yml line 3" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.e2e
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
    """docs/configuration.md points users at these files: each must pass the same validation as theirs."""
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
@pytest.mark.e2e
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
