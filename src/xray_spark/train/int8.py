"""`train`'s int8 gate, wired into the run: measure every image model, record it, let only passing models use
int8 (the measuring and the decision are evaluation/int8_gate.py's).

Per run: `gate_switch` decides once whether to measure (config `int8.gate`, `--int8-gate`). Per backbone:
`prepare` draws the calibration sample from the training split, featurizes the held-out images at fp32 and
int8 (feature cache) and carries the sample in the parent MLflow run (`int8/<Backbone>/<digest>/`: the .npz
and calibration.json with every image's sha256), beside the weights the run carries. Per image model (head x
task, in its own MLflow run): `for_model` measures it, logs `int8/*` metrics and the `int8_gate` tag (the
verdict's one line) and returns the featurizer Params its saved pipeline gets: the verdict always, the
calibration sample's URI and digest only when it passed (features/int8_params.py). At the end, `finish` tags
each champion's registered version with its verdict and adds a section to report.md.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from xray_spark.config import Config
from xray_spark.evaluation.int8_gate import (
    GateVerdict,
    Int8Check,
    gate_model,
    gate_switch,
    not_measured,
    prepare,
)
from xray_spark.features.engines import cpu_flags
from xray_spark.features.quantize import nncf_version
from xray_spark.train.compare import ComboResult
from xray_spark.train.report import append_section

log = logging.getLogger(__name__)

TAG = "int8_gate"  # MLflow tag on each image model's run and on each champion's registered version
INTRO = ("Whether each champion may featurize in int8 (OpenVINO + NNCF): its predictions on held-out images "
         "from int8 vs fp32 features. int8 is used only when at least {pct} of the labels agree and the AUC "
         "and {metric} 95% intervals overlap; otherwise the model keeps bf16/fp32.")


class Int8Gates:
    """The run's gate state: one check per backbone, one verdict per image model."""

    def __init__(self, cfg: Config, weights: str, cache_dir: str, mode: str | None = None) -> None:
        self.settings = cfg.int8
        self.mode = mode or self.settings.gate
        self.metric, self.resamples = cfg.train.select_metric, cfg.train.bootstrap_resamples
        self.weights, self.cache_dir = weights, cache_dir
        self.measure, self.why = gate_switch(self.mode, cpu_flags(), nncf_version())
        self.checks: dict[str, Int8Check] = {}
        self.carried: dict[str, tuple[str, str]] = {}  # backbone -> (calibration URI in MLflow, digest)
        self.verdicts: dict[tuple[str, str, str], GateVerdict] = {}
        log.info("int8 gate: %s (%s)", "measured" if self.measure else "not measured", self.why)

    def prepare(self, spark: SparkSession, backbone: str, labels: DataFrame, contents: DataFrame) -> None:
        """The backbone's calibration sample and held-out features (in the parent MLflow run)."""
        import mlflow  # lazy: a slow import that argument checks skip

        if not self.measure:
            self.checks[backbone] = Int8Check(skip=self.why)
            return
        check = prepare(spark, self.settings, labels, contents, backbone, self.weights, self.cache_dir)
        self.checks[backbone] = check
        if check.calibration is not None:
            cal = check.calibration
            folder = f"int8/{backbone}/{cal.digest[:16]}"
            mlflow.log_artifact(str(cal.path), folder)
            mlflow.log_dict(cal.describe(), f"{folder}/calibration.json")
            uri = f"runs:/{mlflow.active_run().info.run_id}/{folder}/{cal.path.name}"
            self.carried[backbone] = (uri, cal.digest)

    def for_model(self, res: ComboResult) -> dict[str, str]:
        """Measure one image model inside its active MLflow run; the featurizer Params of its pipeline."""
        import mlflow  # lazy: a slow import that argument checks skip

        key = (res.task.name, res.features.backbone, res.head)
        check = self.checks.get(res.features.backbone)
        if res.own_weights is not None:
            verdict = not_measured("a fine-tuned backbone (its own weights)")
        elif check is None:
            verdict = not_measured(self.why)
        else:
            verdict = gate_model(check, res.fit.model, res.task, self.settings, metric=self.metric,
                                 resamples=self.resamples)
        self.verdicts[key] = verdict
        mlflow.set_tag(TAG, verdict.line)
        if verdict.measured:
            mlflow.log_metrics({f"int8/{k}": v for k, v in verdict.figures.items() if v == v})  # not NaN
        log.info("%s/%s/%s int8 gate %s", *key, verdict.line)
        return self.params(*key)

    def params(self, task: str, backbone: str, head: str) -> dict[str, str]:
        """DeepImageFeaturizer Params for a model: its verdict; the calibration sample when it passed."""
        verdict = self.verdicts.get((task, backbone, head)) or not_measured(self.why)
        params = {"int8Gate": verdict.line}
        if verdict.passed:
            uri, digest = self.carried[backbone]
            params.update(calibration=uri, calibrationSha256=digest)
        return params

    def calibration_path(self, task: str, backbone: str, head: str) -> Path | None:
        """The local calibration file of a model that passed (the serving bundle copies it), else None."""
        verdict, check = self.verdicts.get((task, backbone, head)), self.checks.get(backbone)
        if verdict is None or not verdict.passed or check is None or check.calibration is None:
            return None
        return check.calibration.path

    def release(self, backbone: str) -> None:
        if backbone in self.checks:
            self.checks[backbone].release()

    def finish(self, champions: dict[str, dict[str, Any]], report: Path) -> None:
        """Each champion's verdict: on its registered version (tag), in `champions` and in report.md."""
        from mlflow import MlflowClient  # lazy: a slow import that argument checks skip

        lines = []
        for task, champ in champions.items():
            verdict = self.verdicts.get((task, champ["backbone"], champ["head"])) or not_measured(self.why)
            champ["int8"] = verdict.line
            MlflowClient().set_model_version_tag(champ["name"], champ["version"], TAG, verdict.line)
            lines.append(f"- {task} ({champ['backbone']} + {champ['head']}): {verdict.line}")
        pct = f"{100 * self.settings.min_agreement:.1f}%"
        append_section(report, "int8 features", INTRO.format(pct=pct, metric=self.metric), lines + [""])
