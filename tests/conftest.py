"""Shared fixtures: one real local[2] SparkSession per test session, and the real data folder."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

REPO = Path(__file__).resolve().parents[1]

# A Hadoop viewfs mount table over /tmp: a filesystem that is not `file:` (as `dbfs:` on Databricks) over
# local folders. `viewfs://v/tmp/x` is /tmp/x; the CLI arguments also make it Spark's default filesystem.
VIEWFS_MOUNT = ("spark.hadoop.fs.viewfs.mounttable.v.link./tmp", "file:///tmp")
VIEWFS_ARGS = ["--conf", "spark.hadoop.fs.defaultFS=viewfs://v/", "--conf", "=".join(VIEWFS_MOUNT)]


def viewfs(path: Path | str) -> str:
    """`/tmp/...` as the same folder seen through the viewfs mount (the test session knows the mount)."""
    assert str(path).startswith("/tmp/"), "the mount table maps /tmp"
    return f"viewfs://v{path}"


def _data_root() -> Path | None:
    """`$XRAY_SPARK_TEST_DATA`, else ../shared/data next to the repository (CI lays it there)."""
    env = os.environ.get("XRAY_SPARK_TEST_DATA")
    candidates = [Path(env)] if env else []
    candidates += [REPO.parent / "shared" / "data", REPO.parent.parent / "shared" / "data"]
    for c in candidates:
        if (c / "ozturk" / "manifest.csv").is_file():
            return c
    return None


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real data folder. Missing: skip on a developer machine, FAIL when `$CI` is set (non-empty), so a CI
    run that lost its data cannot pass by skipping every real-data test. Every test that reads real images
    gets them through this fixture (or ozturk_dir / raw_sample_dir, which depend on it)."""
    root = _data_root()
    if root is None:
        message = "real X-ray data not found: set XRAY_SPARK_TEST_DATA or place it at ../shared/data"
        if os.environ.get("CI", "").strip():
            pytest.fail(f"{message} (CI is set, so this is a failure, not a skip)", pytrace=False)
        pytest.skip(message)
    return root


@pytest.fixture(scope="session")
def ozturk_dir(data_root: Path) -> Path:
    return data_root / "ozturk"


@pytest.fixture(scope="session")
def raw_sample_dir(data_root: Path) -> Path:
    return data_root / "raw-sample"


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory):
    """A real local[2] Spark session built through the project's own helper."""
    from xray_spark.config import load_config
    from xray_spark.session import get_spark

    cfg = load_config(local=None)
    warehouse = tmp_path_factory.mktemp("warehouse")
    _JVM_STARTING.append(True)
    try:
        session = get_spark(
            cfg,
            master="local[2]",
            conf={
                "spark.sql.warehouse.dir": str(warehouse),
                "spark.driver.memory": "3g",
                "spark.sql.shuffle.partitions": "4",
                VIEWFS_MOUNT[0]: VIEWFS_MOUNT[1],
            },
            app_name="xray-spark-tests",
        )
    finally:
        _JVM_STARTING.pop()
    yield session
    session.stop()


def pytest_configure(config: pytest.Config) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))  # test helper modules (ingest_fixtures, cluster_utils)
    _watch_processes()


# ------------------------------------------------------------------------------------------------- tiers
# Every test has one tier marker, by what it costs (pyproject.toml declares them; `make test-fast` runs all
# but e2e):
#   unit  no JVM, no process of its own: pure functions, seconds for the whole tier;
#   spark the shared local[2] session (the `spark` fixture, directly or through another fixture);
#   e2e   end to end: starts processes (the CLI as a user runs it: exit codes, kill -9; a standalone
#         cluster, the newest pyspark, notebook kernels, a browser, fine-tuning's TensorFlow workers) or runs
#         a whole command (the demo). Marked by hand (`pytestmark = pytest.mark.e2e`, or E2E_FIXTURES);
#         a test that starts a process without the mark fails (the guard below), so the tiers stay true.
TIERS = ("unit", "spark", "e2e")
# Fixtures that start processes themselves: every test that uses one is e2e.
E2E_FIXTURES = {
    "ingested": "test_ingest: the console command on all 1,124 images with a 4 MiB driver result limit",
    "first_run": "test_finetune: fine-tunes ResNet50 in two TensorFlow worker processes (barrier tasks)",
    "finetune_champion": "test_train_finetune: train --heads finetune, two TensorFlow worker processes",
    "built_wheel": "scripts/build_wheel.sh in bash",
}
_RUNNING: list[str] = []  # nodeid of the test being set up, run or torn down
_SPAWNED: dict[str, list[str]] = {}  # test -> the commands it started
_JVM_STARTING: list[bool] = []  # the shared session's own JVM start is not the test's process


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        marks = {m.name for m in item.iter_markers()}
        if "cluster" in marks or E2E_FIXTURES.keys() & set(getattr(item, "fixturenames", ())):
            marks.add("e2e")
            item.add_marker("e2e")
        if not marks & set(TIERS):
            item.add_marker("spark" if "spark" in getattr(item, "fixturenames", ()) else "unit")


def _watch_processes() -> None:
    """Record which test starts a process (subprocess.Popen underlies run, check_output and the CLIs'
    launchers), so `_tier_guard` can hold a test that is not marked e2e to it."""
    import subprocess

    if getattr(subprocess.Popen, "_xray_spark_watched", False):
        return
    original = subprocess.Popen.__init__

    def init(self, args, *rest, **kwargs):
        argv = str(args).split() if isinstance(args, (str, bytes)) else [str(a) for a in args]
        if _RUNNING and not _JVM_STARTING and argv and _heavy(argv[0]):
            _SPAWNED.setdefault(_RUNNING[-1], []).append(" ".join(argv[:3]))
        original(self, args, *rest, **kwargs)

    subprocess.Popen.__init__ = init
    subprocess.Popen._xray_spark_watched = True


def _heavy(program: str) -> bool:
    """A process that costs what e2e means (an interpreter, a JVM, a shell script, a browser), not the small
    helpers libraries run on their own (MLflow's `git`, platform's `uname`, matplotlib's `fc-list`)."""
    name = Path(program).name
    return name in ("bash", "sh") or name.startswith(("python", "java", "spark-", "chrom", "jupyter",
                                                       "xray-spark", "mlflow"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem):
    _RUNNING.append(item.nodeid)
    try:
        yield
    finally:
        _RUNNING.pop()


@pytest.fixture(autouse=True)
def _tier_guard(request: pytest.FixtureRequest):
    """A test (or the fixtures it set up first) that started a process must be marked e2e."""
    yield
    node = request.node
    if node.nodeid in _SPAWNED and node.get_closest_marker("e2e") is None:
        pytest.fail(f"{node.nodeid} started a process but is not marked e2e (tests/conftest.py: tiers): "
                    f"{_SPAWNED[node.nodeid][:3]}", pytrace=False)


def local(spark, rows, schema: str):
    """A small in-memory DataFrame through pandas/Arrow: a local relation, so scanning it needs no Python
    worker (a list of tuples becomes a Python RDD, several times slower per Spark job)."""
    import pandas as pd

    return spark.createDataFrame(pd.DataFrame(list(rows), columns=[c.split()[0] for c in schema.split(",")]),
                                 schema)


def copy_subset(src: Path, dest: Path, per_class: int, offset: int = 0) -> Path:
    """Class folders with `per_class` real images each (sorted, from `offset`): small, real, deterministic."""
    import shutil

    for label in ("covid", "no_findings", "pneumonia"):
        (dest / label).mkdir(parents=True, exist_ok=True)
        for p in sorted((src / label).iterdir())[offset : offset + per_class]:
            shutil.copy(p, dest / label / p.name)
    return dest


def manifest_subset(src: Path, dest: Path, per_label: dict[str, int]):
    """The first `n` images (by path) of each label of a folder with a manifest.csv, copied to `dest` with
    their manifest rows (also written to dest/manifest.csv): real images, fewer of them, same layout."""
    import shutil

    import pandas as pd

    manifest = pd.read_csv(src / "manifest.csv", dtype=str, keep_default_na=False)
    picked = pd.concat(manifest[manifest["label"] == label].sort_values("path").head(n)
                       for label, n in per_label.items())
    for rel in picked["path"]:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, dest / rel)
    picked.to_csv(dest / "manifest.csv", index=False)
    return picked


@pytest.fixture(scope="session")
def small_data(ozturk_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 real images per class (36 in all) in class folders."""
    return copy_subset(ozturk_dir, tmp_path_factory.mktemp("small") / "data", per_class=12)


@contextmanager
def job_group(spark, name: str):
    """Jobs started on this thread (and on the JVM threads SQL broadcasts use, which inherit the group) are
    counted by Spark's status tracker under `name`; yields a function returning their ids."""
    sc = spark.sparkContext
    sc.setJobGroup(name, f"tests: {name}")
    try:
        yield lambda: sc.statusTracker().getJobIdsForGroup(name)
    finally:
        for key in ("spark.jobGroup.id", "spark.job.description", "spark.job.interruptOnCancel"):
            sc.setLocalProperty(key, None)  # later tests' jobs stay out of the group


@pytest.fixture(scope="session")
def small_ingest_run(spark, small_data: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """small_data ingested once per session (out: the folder; summary; jobs: the Spark jobs it ran, which
    test_ingest_jobs holds to its bound instead of ingesting the same folder again)."""
    from xray_spark.config import load_config
    from xray_spark.data.ingest import ingest

    out = tmp_path_factory.mktemp("small_ingest") / "ingest"
    with job_group(spark, f"small-ingest-{out.parent.name}") as jobs:
        result = ingest(spark, str(small_data), str(out), load_config(local=None))
        n_jobs = len(jobs())
    return SimpleNamespace(out=out, summary=result.summary, jobs=n_jobs)


@pytest.fixture(scope="session")
def small_ingest(small_ingest_run: SimpleNamespace) -> Path:
    """small_data's ingest output: `train` and `finetune` take an ingest output as their data (as users
    reuse one split), so the fixtures that train on small_data share this one."""
    return small_ingest_run.out


@pytest.fixture(scope="session")
def trained(spark, small_ingest: Path, tmp_path_factory: pytest.TempPathFactory):
    """One real `train` run (ResNet50 random init, lr + dt, both tasks) shared by the tests that need
    models. Over 60 s (~1-2 min): featurizes 36 images, fits 4 heads and the baseline, logs and registers."""
    from xray_spark.config import load_config
    from xray_spark.train.run import TrainSpec, run_training

    out = tmp_path_factory.mktemp("train_out")
    cfg = load_config(local=None)
    cfg.train.bootstrap_resamples = 1000
    spec = TrainSpec(data=str(small_ingest), out_dir=str(out), backbones=["ResNet50"], heads=["lr", "dt"],
                     tasks=["binary", "multiclass"], weights="none")
    return run_training(spark, cfg, spec)


@pytest.fixture(scope="session")
def built_wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(wheel, pyfiles zip) from scripts/build_wheel.sh, built once for the bundle and cluster tests (a test
    that uses it starts `bash`, so it is e2e)."""
    from cluster_utils import build_wheel

    return build_wheel(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def weights_cache(tmp_path_factory: pytest.TempPathFactory):
    """One weights cache per pytest session (shared by the feature test modules), never under $HOME."""
    path = tmp_path_factory.getbasetemp() / "xray-weights-cache"
    old = os.environ.get("XRAY_SPARK_CACHE")
    os.environ["XRAY_SPARK_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("XRAY_SPARK_CACHE", None)
    else:
        os.environ["XRAY_SPARK_CACHE"] = old


def auto_engine_atol() -> float:
    """Probability tolerance for a model run with engine='auto' (what pipelines and bundles use) against
    Keras fp32 on this CPU. `auto` picks OpenVINO bf16 where the CPU has native bf16 (AMX, AVX512-BF16):
    bf16 keeps ~3 significant digits, so probabilities move by up to ~1e-2 (3e-3 measured on the fine-tune
    test fold); fp32 engines agree within 1e-4. Tests of exact parity pin `precision='fp32'` instead."""
    from xray_spark.features.engines import resolve_engine

    return 1e-4 if resolve_engine("auto", None).precision == "fp32" else 2e-2


def isolate_mlflow(mp: pytest.MonkeyPatch) -> None:
    """MLflow keeps its URIs and active experiment in module globals and env vars: restore them afterwards
    so later test modules do not inherit this module's sqlite store."""
    import mlflow.tracking._model_registry.utils as registry_utils
    import mlflow.tracking._tracking_service.utils as tracking_utils
    import mlflow.tracking.fluent as fluent

    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID",
                "MLFLOW_EXPERIMENT_NAME"):
        mp.setenv(var, "")  # records the old value (or its absence), so MLflow's own exports are undone too
        mp.delenv(var)
    mp.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
    mp.setattr(registry_utils, "_registry_uri", registry_utils._registry_uri)
    mp.setattr(fluent, "_active_experiment_id", fluent._active_experiment_id)


_EVIDENCE: list[str] = []


@pytest.fixture
def evidence():
    """Append a line to the "evidence" section printed at the end of the run (so the CI log shows it)."""
    return _EVIDENCE.append


def pytest_terminal_summary(terminalreporter) -> None:  # pytest hook
    if _EVIDENCE:
        terminalreporter.section("evidence")
        for line in _EVIDENCE:
            terminalreporter.write_line(line)
