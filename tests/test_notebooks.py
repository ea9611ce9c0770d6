"""Execute notebooks/*.ipynb end to end on a small real subset, in a real Jupyter kernel (nbclient).

The kernel is this test's own interpreter (a kernelspec written to tmp_path and found through JUPYTER_PATH),
so a clean clone where only `pip install -e .[dev]` ran needs no `ipykernel install`. Parameters are injected
as a cell right after the notebook's `parameters` cell (papermill's convention); every path points into
tmp_path. Notebooks 02 and 03 read the session's real training run (`trained`: ResNet50 with seeded random
weights, MLflow sqlite) and its ingest output.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import manifest_subset

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

pytestmark = pytest.mark.e2e


REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
PER_CLASS = 8
KERNEL_NAME = "xray-spark-test"


def make_subset(ozturk: Path, dest: Path, per_class: int = PER_CLASS) -> Path:
    """`per_class` images per class plus one exact copy of a COVID image, with a manifest.csv (real
    sources)."""
    picked = manifest_subset(ozturk, dest, dict.fromkeys(("covid", "no_findings", "pneumonia"), per_class))
    first = picked[picked["label"] == "covid"].iloc[0].copy()
    copy_rel = str(Path(first["path"]).with_name("copy-of-" + Path(first["path"]).name))
    shutil.copyfile(ozturk / first["path"], dest / copy_rel)
    first["path"] = copy_rel
    picked = pd.concat([picked, first.to_frame().T], ignore_index=True)
    picked[["path", "label", "source", "patient_id"]].to_csv(dest / "manifest.csv", index=False)
    return dest


@pytest.fixture(scope="module")
def nb_env(tmp_path_factory: pytest.TempPathFactory, ozturk_dir: Path):
    """Data subset, a kernelspec for this interpreter, and a weights cache, all under tmp_path."""
    root = tmp_path_factory.mktemp("notebooks")
    kernels = root / "jupyter" / "kernels" / KERNEL_NAME
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "xray-spark tests", "language": "python",
    }))
    data = make_subset(ozturk_dir, root / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(root / "jupyter"))
        mp.setenv("XRAY_SPARK_CACHE", str(root / "weights-cache"))  # seeded random weights are built once
        yield {"root": root, "data": data}


@pytest.fixture(scope="module")
def kernel(nb_env):
    """One Jupyter kernel for the module's notebooks, as a user runs them one after another in one Jupyter
    server: each kernel start is a new Python that imports TensorFlow and starts its own JVM (~10 s), and
    the notebooks that start Spark get the running session (`common.start` -> get_spark). `run_notebook`
    clears the user namespace before each notebook, so none can lean on another's variables."""
    from jupyter_client import AsyncKernelManager  # what nbclient makes for itself
    from jupyter_core.utils import run_sync

    km = AsyncKernelManager(kernel_name=KERNEL_NAME)
    run_sync(km.start_kernel)(cwd=str(nb_env["root"]))
    try:
        yield km
    finally:
        run_sync(km.shutdown_kernel)(now=True)


def run_notebook(kernel, name: str, params: dict[str, object], workdir: Path, evidence, timeout: int = 300):
    """Execute one notebook in the module's kernel, from a cleared namespace in `workdir`, with `params`
    injected; the executed copy is saved next to workdir for debugging. The first notebook that starts
    Spark pays for the JVM; 01 and 02 decode and featurize the subset."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    idx = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    injected = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in params.items()))
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(idx + 1, injected)
    reset = nbformat.v4.new_code_cell(f"%reset -f\nimport os\nos.chdir({str(workdir)!r})")
    reset.metadata["tags"] = ["injected-reset"]
    nb.cells.insert(0, reset)
    workdir.mkdir(parents=True, exist_ok=True)
    client = nbclient.NotebookClient(nb, km=kernel, timeout=timeout, startup_timeout=120)
    t0 = time.monotonic()
    try:
        client.execute()
    finally:
        if client.kc is not None:
            client.kc.stop_channels()
        nbformat.write(nb, workdir / f"executed-{name}")
    code = [c for c in nb.cells if c.cell_type == "code"]
    ran = sum(c.get("execution_count") is not None for c in code)
    evidence(f"notebook {name}: {ran}/{len(code)} code cells executed top to bottom in "
             f"{time.monotonic() - t0:.0f}s")
    return nb


def outputs(nb, kind: str) -> list:
    """All outputs of executed cells carrying MIME type `kind` (e.g. image/png, text/html, text/plain)."""
    found = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if kind == "stream" and out.get("output_type") == "stream":
                found.append(out.get("text", ""))
            elif kind in out.get("data", {}):
                found.append(out["data"][kind])
    return found


def test_notebooks_are_committed_without_outputs():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: exactly one cell tagged 'parameters'"
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name}: outputs not stripped"


def test_01_dataset(nb_env, kernel, evidence):
    work = nb_env["root"] / "nb01"
    nb = run_notebook(kernel, "01_dataset.ipynb", {"DATA_DIR": str(nb_env["data"]),
                                                   "OUT_DIR": str(work / "out"), "SAMPLES_PER_CLASS": 3},
                      work, evidence)
    text = "\n".join(outputs(nb, "stream"))
    assert f"files read: {3 * PER_CLASS + 1} = ok {3 * PER_CLASS + 1} + quarantined 0" in text
    html = "\n".join(outputs(nb, "text/html"))
    assert "ozturk2020" in html and "covid" in html and "quarantined" in html  # class counts by source
    assert "copy-of-" in html  # the injected exact duplicate shows up as a duplicate group
    # sample grid, duplicate group grid, metadata shortcut plot
    assert len(outputs(nb, "image/png")) == 3
    assert (work / "out" / "ingest" / "duplicates" / "duplicate_groups.csv").is_file()


def test_02_features(nb_env, kernel, small_ingest, trained, evidence):
    """DATA_DIR is the session's ingest output and OUT_DIR the session's `trained` run, whose feature cache
    already holds these images (same content hashes): the notebook reuses both instead of computing."""
    work, trained_out = nb_env["root"] / "nb02", trained.files["report.md"].parent
    nb = run_notebook(kernel, "02_features.ipynb", {"DATA_DIR": str(small_ingest),
                                                    "OUT_DIR": str(trained_out), "WEIGHTS": "none",
                                                    "METHOD": "pca"}, work, evidence)
    text = "\n".join(outputs(nb, "stream"))
    assert "36 images, 2048 features each (ResNet50, weights=none)" in text
    html = "\n".join(outputs(nb, "text/html"))
    assert "JPEG" in html and "PNG" in html
    assert len(outputs(nb, "image/png")) == 1


def test_03_results(nb_env, kernel, trained, evidence):
    """Reads the session's `trained` run (ResNet50 random weights; lr and dt; binary and multiclass; with
    the metadata baseline) from its MLflow store."""
    work = nb_env["root"] / "nb03"
    nb = run_notebook(kernel, "03_results.ipynb", {"TRACKING_URI": trained.tracking_uri,
                                           "ARTIFACT_DIR": str(work / "artifacts")}, work, evidence)
    html = "\n".join(outputs(nb, "text/html"))
    assert "ResNet50" in html and "metadata-baseline" in html
    assert "xray-spark-binary" in html and "xray-spark-multiclass" in html
    # confusion matrices per task: the best image model and the metadata baseline, read back from MLflow
    assert len(outputs(nb, "image/png")) == 4
    assert len(list((work / "artifacts").rglob("*.png"))) == 4


def test_04_sparkdl_readme(nb_env, kernel, evidence):
    """sparkdl's README example (DeepImageFeaturizer + LogisticRegression in a Pipeline) with its import
    changed, on two class folders of the subset, InceptionV3 with seeded random weights (no download)."""
    work = nb_env["root"] / "nb04"
    nb = run_notebook(kernel, "04_sparkdl_readme.ipynb", {"IMG_DIR": str(nb_env["data"]), "WEIGHTS": "none",
                                                  "MODEL_DIR": str(work / "model")}, work, evidence)
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "from xray_spark import DeepImageFeaturizer" in source and "import sparkdl" not in source
    text = "\n".join(outputs(nb, "stream"))
    accuracy = float(re.search(r"Test set accuracy = ([0-9.]+)", text).group(1))
    assert 0.0 <= accuracy <= 1.0
    assert re.search(r"reloaded: 2 stages \(DeepImageFeaturizer, LogisticRegressionModel\); "
                     r"modelName=InceptionV3, weights=none", text), text
