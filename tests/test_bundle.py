"""The Databricks asset bundle (databricks.yml + resources/*.yml) is consistent with the code it deploys.

No Databricks workspace is reachable from here and the Databricks CLI is not installed, so `databricks
bundle validate/deploy` cannot run. What can be checked locally is checked against the real thing: every
task's parameters go through the real `xray-spark` argument parser, every referenced file exists, every
`${var.*}` and `{{job.parameters.*}}` reference resolves, Volume paths and UC model names agree, and the
cluster settings match conf/spark-defaults.conf.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pytest
import yaml

from xray_spark.cli import build_parser
from xray_spark.config import load_config
from xray_spark.tracking import registered_name

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "databricks.yml"
VAR_REF = re.compile(r"\$\{var\.([A-Za-z0-9_]+)\}")
JOB_PARAM_REF = re.compile(r"\{\{\s*job\.parameters\.([A-Za-z0-9_]+)\s*\}\}")
FAKE_RUN_ID = "123456789"
FAKE_FILE_PATH = "/Workspace/Users/someone@example.com/.bundle/xray-spark/dev/files"
# jobs/<name>.py -> the CLI subcommand it runs (jobs/*.py are `main([<name>, *sys.argv[1:]])`)
JOB_SCRIPTS = {p.stem: p for p in (REPO / "jobs").glob("*.py")}


def _bundle() -> dict:
    return yaml.safe_load(BUNDLE.read_text())


def _resource_files() -> list[Path]:
    files: list[Path] = []
    for pattern in _bundle().get("include", []):
        files += sorted(REPO.glob(pattern))
    return files


def _jobs() -> list[tuple[Path, str, dict]]:
    out = []
    for f in _resource_files():
        for key, job in (yaml.safe_load(f.read_text()).get("resources", {}).get("jobs", {}) or {}).items():
            out.append((f, key, job))
    return out


def _variables() -> dict[str, str]:
    return {k: str(v["default"]) for k, v in _bundle()["variables"].items()}


def _substitute(value: str, job: dict) -> str:
    """What the bundle and the Jobs service would put in: variable defaults, job parameter defaults, run
    id."""
    params = {p["name"]: str(p["default"]) for p in job.get("parameters", [])}
    value = JOB_PARAM_REF.sub(lambda m: params[m.group(1)], value)
    value = VAR_REF.sub(lambda m: _variables()[m.group(1)], value)
    return (value.replace("{{job.run_id}}", FAKE_RUN_ID).replace("${workspace.file_path}", FAKE_FILE_PATH)
            .replace("${bundle.target}", "dev").replace("${bundle.name}", _bundle()["bundle"]["name"]))


def _task_argv(job: dict, task: dict) -> tuple[str, list[str]]:
    spt = task["spark_python_task"]
    command = Path(spt["python_file"]).stem
    return command, [_substitute(str(p), job) for p in spt.get("parameters", [])]


def _spark_defaults() -> dict[str, str]:
    out = {}
    for line in (REPO / "conf" / "spark-defaults.conf").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out[key] = value.strip()
    return out


def test_yaml_parses_and_includes_the_resources():
    bundle = _bundle()
    assert bundle["bundle"]["name"] == "xray-spark"
    names = {f.name for f in _resource_files()}
    assert {"train_job.yml", "score_job.yml"} <= names
    assert {key for _, key, _ in _jobs()} == {"xray_spark_train", "xray_spark_score"}
    assert bundle["targets"]["dev"].get("default") is True


def test_every_variable_reference_is_defined():
    defined = set(_variables())
    for f in [BUNDLE, *_resource_files()]:
        used = set(VAR_REF.findall(f.read_text()))
        assert used <= defined, f"{f.name} uses undefined variables {used - defined}"


@pytest.mark.e2e
@pytest.mark.parametrize("job_key", ["xray_spark_train", "xray_spark_score"])
def test_task_parameters_are_accepted_by_the_real_cli(job_key: str):
    parser = build_parser()
    (f, _, job), = [j for j in _jobs() if j[1] == job_key]
    declared = {p["name"] for p in job.get("parameters", [])}
    for task in job["tasks"]:
        raw = [str(p) for p in task["spark_python_task"].get("parameters", [])]
        referenced = {m for p in raw for m in JOB_PARAM_REF.findall(p)}
        assert referenced <= declared, f"{job_key}: undeclared job parameters {referenced - declared}"
        assert declared <= referenced, (
            f"{job_key}: job parameters never passed to the task {declared - referenced}")
        command, argv = _task_argv(job, task)
        assert command in JOB_SCRIPTS, f"{job_key}: {command} is not one of jobs/*.py"
        try:
            args = parser.parse_args([command, *argv])
        except SystemExit as exc:  # argparse error: the message went to stderr
            pytest.fail(f"{job_key}: `xray-spark {command}` rejects {argv} (exit {exc.code})")
        assert args.command == command
        if command == "train":
            assert len(args.data) == 1 and args.data[0].startswith("/Volumes/")
            assert args.out.endswith(FAKE_RUN_ID)
            assert args.tracking_uri == "databricks"
        if command == "score":
            assert args.model.startswith("models:/") and args.model.endswith("@champion")
            # retried on exit 75 by the command itself, never by Databricks (that would repeat bad input)
            assert args.retries >= 1 and task.get("max_retries", 0) == 0


def test_referenced_files_exist():
    for f, key, job in _jobs():
        for task in job["tasks"]:
            script = (f.parent / task["spark_python_task"]["python_file"]).resolve()
            assert script.is_file() and script.parent == REPO / "jobs", f"{key}: {script} missing"
            for p in task["spark_python_task"].get("parameters", []):
                if str(p).startswith("${workspace.file_path}/"):
                    rel = str(p).removeprefix("${workspace.file_path}/")
                    assert (REPO / rel).is_file(), f"{key}: {rel} is not in the repository"
            for lib in task.get("libraries", []):
                # resolved relative to the resource file; the artifact build writes the wheel there
                assert (f.parent / lib["whl"]).resolve().parent == REPO / "dist", (
                    f"{key}: wheel path {lib['whl']}")
    build = _bundle()["artifacts"]["xray_spark_wheel"]["build"]
    script, out_dir = build.split()[-2:]
    assert (REPO / script).is_file() and out_dir == "dist"


@pytest.mark.e2e
def test_the_wheel_glob_matches_what_the_build_script_writes(built_wheel: tuple[Path, Path]):
    """Run the artifact's build script for real (the session's build, shared with the cluster tests) and match
    the libraries glob against it."""
    import zipfile

    wheels = [built_wheel[0]]
    for _, _, job in _jobs():
        for task in job["tasks"]:
            for lib in task.get("libraries", []):
                assert fnmatch.fnmatch(wheels[0].name, Path(lib["whl"]).name)
    names = set(zipfile.ZipFile(wheels[0]).namelist())
    assert {"xray_spark/cli.py", "xray_spark/conf/base.yml"} <= names
    # every non-Python file the package reads at run time must be inside the wheel
    data_files = {str(p.relative_to(REPO / "src")) for p in (REPO / "src" / "xray_spark").rglob("*")
                  if p.is_file() and p.suffix in {".yml", ".yaml", ".csv", ".json"}}
    assert data_files <= names, (
        f"missing from the wheel (pyproject package-data): {sorted(data_files - names)}")


def test_data_and_weights_live_on_the_unity_catalog_volume():
    v = _variables()
    volume = f"/Volumes/{v['catalog']}/{v['schema']}/xray/"
    for _, key, job in _jobs():
        values = [_substitute(str(p["default"]), job) for p in job.get("parameters", [])]
        for task in job["tasks"]:
            values += _task_argv(job, task)[1]
        cluster = job["job_clusters"][0]["new_cluster"]
        values += [_substitute(str(x), job) for k, x in cluster.get("spark_env_vars", {}).items()
                   if not k.startswith("MLFLOW_")]  # MLflow names are workspace paths, not files
        paths = [x for x in values if x.startswith("/")]
        assert paths, key
        for p in paths:
            assert p.startswith((volume, FAKE_FILE_PATH)), (
                f"{key}: {p} is neither on {volume} nor a bundle file")
        assert _substitute(cluster["spark_env_vars"]["XRAY_SPARK_CACHE"], job) == volume + "weights"


def test_mlflow_goes_to_the_workspace_and_models_to_unity_catalog():
    v = _variables()
    overlay = REPO / "conf" / "databricks-jobs.yml"
    cfg = load_config(overlay, local=None)  # validates every key
    assert cfg.tracking_uri == "databricks"
    prefix = cfg.train.registered_model_prefix
    assert prefix == f"{v['catalog']}.{v['schema']}.xray-spark", (
        "keep the overlay's prefix in step with the bundle")
    for _, key, job in _jobs():
        env = job["job_clusters"][0]["new_cluster"]["spark_env_vars"]
        assert (env["MLFLOW_TRACKING_URI"] == "databricks"
                and env["MLFLOW_REGISTRY_URI"] == "databricks-uc"), key
        assert env["MLFLOW_EXPERIMENT_NAME"].startswith("/"), "workspace experiments are absolute paths"
    (_, _, score), = [j for j in _jobs() if j[1] == "xray_spark_score"]
    model = _substitute(next(p["default"] for p in score["parameters"] if p["name"] == "model"), score)
    assert model == f"models:/{registered_name(prefix, 'binary')}@champion"


def test_score_job_runs_on_a_schedule():
    (_, _, score), = [j for j in _jobs() if j[1] == "xray_spark_score"]
    sched = score["schedule"]
    cron = _substitute(sched["quartz_cron_expression"], score).split()
    assert len(cron) in (6, 7), "Quartz cron: sec min hour day-of-month month day-of-week [year]"
    assert sched["timezone_id"] and sched["pause_status"] in {"PAUSED", "UNPAUSED"}
    (_, _, train), = [j for j in _jobs() if j[1] == "xray_spark_train"]
    assert "schedule" not in train  # training is started on purpose, not by the clock


def test_cluster_settings_match_spark_defaults():
    defaults = _spark_defaults()
    for _, key, job in _jobs():
        cluster = job["job_clusters"][0]["new_cluster"]
        for k, value in cluster["spark_conf"].items():
            assert defaults.get(k) == str(value), (
                f"{key}: spark_conf {k}={value} differs from conf/spark-defaults.conf")
        for k, value in cluster["spark_env_vars"].items():
            spark_key = f"spark.executorEnv.{k}"
            if spark_key in defaults:
                assert defaults[spark_key] == str(value), (
                    f"{key}: {k}={value} differs from conf/spark-defaults.conf")
        assert {"TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"} <= set(cluster["spark_env_vars"])
        assert cluster["spark_conf"]["spark.python.worker.reuse"] == "true"
