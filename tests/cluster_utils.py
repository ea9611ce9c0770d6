"""Test helpers for running the jobs on a real Spark standalone cluster on 127.0.0.1.

Why a standalone master + worker and not local[N]: in local mode the "executors" live inside the driver's
JVM and its Python sees whatever the driver sees, so a job can pass while depending on the source tree.
A standalone worker launches separate executor JVMs whose Python workers only get what spark-submit
ships (--py-files, addFile): that is the situation on a real cluster and on Databricks.

Everything here writes under the directory it is given (pytest's tmp_path).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
_CLASS_EXTS = {".png", ".jpg", ".jpeg"}


def spark_home() -> Path:
    """The installed pyspark package is a complete Spark distribution (bin/, jars/)."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment minus anything that would let Python find the source tree or a session, or
    an MLflow store: `mlflow.set_tracking_uri` in an earlier in-process test leaves MLFLOW_TRACKING_URI in
    os.environ, and a job given it would log into that test's store instead of its own default."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYSPARK_", "SPARK_", "PYTEST_", "MLFLOW_"))}
    for key in ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "MASTER"):
        env.pop(key, None)
    env.update(
        SPARK_HOME=str(spark_home()),
        SPARK_LOCAL_IP="127.0.0.1",
        SPARK_LOCAL_HOSTNAME="localhost",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    env.update(extra or {})
    return env


def _kill_group(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM the process group we created for `proc`, then SIGKILL whatever is left."""
    if proc.poll() is not None:
        return
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _get_json(url: str, timeout: float = 5.0) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # loopback only
            return json.loads(resp.read().decode())
    except (urllib.error.URLError, OSError, ValueError):
        return None


@dataclass
class StandaloneCluster:
    """One master and one worker started from the installed pyspark; `stop()` always cleans up."""

    root: Path
    cores: int = 2
    memory: str = "4g"
    master_port: int = field(default_factory=free_port)
    master_ui_port: int = field(default_factory=free_port)
    worker_ui_port: int = field(default_factory=free_port)
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def master_url(self) -> str:
        return f"spark://127.0.0.1:{self.master_port}"

    @property
    def master_ui(self) -> str:
        return f"http://127.0.0.1:{self.master_ui_port}"

    @property
    def work_dir(self) -> Path:
        return self.root / "worker-work"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    def _spawn(self, name: str, args: Sequence[str], cwd: Path) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        out = open(self.log_dir / f"{name}.log", "ab")  # closed with the process
        cmd = [str(spark_home() / "bin" / "spark-class"), *args]
        proc = subprocess.Popen(cmd, cwd=cwd, env=clean_env(), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        self.procs.append(proc)
        return proc

    def start(self, timeout: float = 90.0) -> StandaloneCluster:
        """Start master then worker (cwd = root, not the repository) and wait until the worker is ALIVE."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._spawn("master", ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                               "--port", str(self.master_port), "--webui-port", str(self.master_ui_port)],
                    self.root)
        self._spawn("worker", ["org.apache.spark.deploy.worker.Worker", self.master_url,
                               "--host", "127.0.0.1",
                               "--cores", str(self.cores), "--memory", self.memory,
                               "--webui-port", str(self.worker_ui_port), "--work-dir", str(self.work_dir)],
                    self.root)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"Spark daemon exited early ({p.args[1]}); logs:\n{self.logs_tail()}")
            state = self.master_json()
            if state and any(w.get("state") == "ALIVE" for w in state.get("workers", [])):
                log.info("standalone cluster up: %s (UI %s)", self.master_url, self.master_ui)
                return self
            time.sleep(0.5)
        raise TimeoutError(f"worker did not register with {self.master_url} in {timeout}s:\n"
                           f"{self.logs_tail()}")

    def master_json(self) -> dict | None:
        """The master web UI's /json: workers, active and completed applications with their executors."""
        return _get_json(f"{self.master_ui}/json/")

    def wait_app_completed(self, app_id: str, timeout: float = 60.0) -> dict:
        """The master's record of a finished application (it moves there once the driver disconnects)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.master_json() or {}
            for app in state.get("completedapps", []):
                if app.get("id") == app_id:
                    return app
            time.sleep(0.5)
        raise TimeoutError(f"application {app_id} did not complete on {self.master_url}: "
                           f"{self.master_json()}")

    def executor_dirs(self, app_id: str) -> list[Path]:
        """The worker's per-executor folders for one app: stdout, stderr and every shipped file land here."""
        return sorted(p for p in (self.work_dir / app_id).glob("*") if p.is_dir())

    def logs_tail(self, lines: int = 40) -> str:
        chunks = []
        for f in sorted(self.log_dir.glob("*.log")):
            text = f.read_text(errors="replace").splitlines()[-lines:]
            chunks.append(f"--- {f.name}\n" + "\n".join(text))
        return "\n".join(chunks)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            _kill_group(proc)
        self.procs.clear()


def build_wheel(out_dir: Path, repo: Path = REPO) -> tuple[Path, Path]:
    """(wheel, pyfiles zip) built by scripts/build_wheel.sh from a staged copy: the tree stays untouched."""
    out_dir.mkdir(parents=True, exist_ok=True)
    env = clean_env({"PYTHON": sys.executable})
    res = subprocess.run(["bash", str(repo / "scripts" / "build_wheel.sh"), str(out_dir)], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        raise RuntimeError(f"wheel build failed ({res.returncode}):\n{res.stdout[-3000:]}\n"
                           f"{res.stderr[-3000:]}")
    wheels = sorted(out_dir.glob("xray_spark-*.whl"))
    zips = sorted(out_dir.glob("xray_spark-*-pyfiles.zip"))
    if len(wheels) != 1 or len(zips) != 1:
        raise RuntimeError(f"expected one wheel and one pyfiles zip in {out_dir}, found {wheels + zips}")
    return wheels[0], zips[0]


def python_without_project(dest: Path, base_python: str = sys.executable) -> Path:
    """A Python that sees this virtualenv's third-party packages but NOT the editable `xray_spark` install.

    Why: the dev venv's `__editable__...pth` puts src/ on every interpreter's path, which would let executors
    import the package from the source tree and hide a packaging bug. A throwaway venv whose only .pth lists
    the dev venv's site-packages as a plain path gets numpy/pyspark/tensorflow... but no .pth processing of
    that folder, so `import xray_spark` works only from what spark-submit ships.
    """
    purelib = subprocess.run([base_python, "-c", "import sysconfig;print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    if dest.exists():
        shutil.rmtree(dest)
    subprocess.run([base_python, "-m", "venv", "--without-pip", str(dest)], check=True, capture_output=True)
    py = dest / "bin" / "python"
    target = subprocess.run([str(py), "-c", "import sysconfig;print(sysconfig.get_paths()['purelib'])"],
                            capture_output=True, text=True, check=True).stdout.strip()
    Path(target).mkdir(parents=True, exist_ok=True)
    (Path(target) / "devvenv_thirdparty.pth").write_text(purelib + "\n")
    return py


def spark_submit(
    cluster: StandaloneCluster,
    script: Path,
    args: Sequence[str],
    *,
    python: Path,
    py_files: Iterable[Path] = (),
    conf: Mapping[str, str] | None = None,
    properties_file: Path | None = None,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    log_name: str,
    timeout: float = 300.0,
) -> subprocess.CompletedProcess:
    """Run `spark-submit --master spark://... script args` in client mode; output goes to
    logs/<log_name>.log."""
    cmd = [str(spark_home() / "bin" / "spark-submit"), "--master", cluster.master_url,
           "--deploy-mode", "client"]
    if properties_file is not None:
        cmd += ["--properties-file", str(properties_file)]
    files = [str(p) for p in py_files]
    if files:
        cmd += ["--py-files", ",".join(files)]
    merged = {"spark.pyspark.python": str(python), "spark.pyspark.driver.python": str(python),
              "spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"}
    merged.update(conf or {})
    for k, v in merged.items():
        cmd += ["--conf", f"{k}={v}"]
    cmd += [str(script), *args]
    cluster.log_dir.mkdir(parents=True, exist_ok=True)
    log_path = cluster.log_dir / f"{log_name}.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=clean_env(env), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc, grace=5)
            rc = -9
    output = log_path.read_text(errors="replace")
    return subprocess.CompletedProcess(cmd, rc, output, "")


def copy_subset(src: Path, dest: Path, per_class: int) -> Path:
    """First `per_class` images (sorted by name) of each class folder of `src`, into class folders of
    `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    for cls in sorted(p for p in src.iterdir() if p.is_dir()):
        files = sorted(f for f in cls.iterdir() if f.suffix.lower() in _CLASS_EXTS)[:per_class]
        (dest / cls.name).mkdir(exist_ok=True)
        for f in files:
            shutil.copyfile(f, dest / cls.name / f.name)
    return dest
