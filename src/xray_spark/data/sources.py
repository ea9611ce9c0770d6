"""Public dataset sources: one interface for every source, each citing its paper and URL.

Why a registry (the torchxrayvision convention): a dataset's provenance -- paper, homepage, where the files
live and what their bytes must hash to -- is data, not code scattered across scripts. `fetch_dataset` and
the docs read it from here, so adding a source is one entry plus one manifest CSV.

Manifests ship inside the package (`xray_spark/data/manifests/*.csv`, loaded with importlib.resources) so
they are readable from an installed wheel. `data/manifests/` in the repository holds the canonical copy for
people browsing the repo; a test asserts the two are byte-identical.

ozturk2020
    Ozturk T, Talo M, Yildirim EA, Baloglu UB, Yildirim O, Acharya UR. "Automated detection of COVID-19
    cases using deep neural networks with X-ray images." Computers in Biology and Medicine 121 (2020)
    103792. doi:10.1016/j.compbiomed.2020.103792. Files: github.com/muhammedtalo/COVID-19, folder
    "X-Ray Image DataSet" (`Covid-19/`, `No_findings/`, `Pneumonia/`). Non-COVID images come from NIH
    ChestX-ray8 (patient id in the file name); COVID images from Cohen et al.'s covid-chestxray-dataset.
    The published folder holds 125 COVID images; our manifest lists 1124 files (124 COVID, 500 no
    findings, 500 pneumonia) because the copy it was built from misses one COVID image, so that image is
    neither fetched nor verified. Hashes are sha256 of the original, unmodified files.

cohen2020
    Cohen JP, Morrison P, Dao L, Roth K, Duong TQ, Ghassemi M. "COVID-19 Image Data Collection: Prospective
    Predictions Are the Future." MELBA 2020. arXiv:2006.11988. Files:
    github.com/ieee8023/covid-chestxray-dataset, `metadata.csv` + `images/`, read at one pinned commit. No
    manifest ships: the listing is the repository's own `metadata.csv`, filtered by `data/cohen.py` (X-ray,
    frontal, three findings). Its files' sha256 were not known when this entry was written (no network), so
    they are trusted on first download and pinned (`data/pins.py`): every later fetch into the same folder
    verifies them.

chowdhury2020
    Chowdhury MEH et al. "Can AI help in screening Viral and COVID-19 pneumonia?" IEEE Access 8 (2020)
    132665-132676. doi:10.1109/ACCESS.2020.3010287. Files: kaggle.com/datasets/tawsifurrahman/
    covid19-radiography-database, behind a Kaggle login, so it is imported from a folder the user downloaded
    (`fetch chowdhury2020 --from DIR`, `data/chowdhury.py`); sha256 are computed from those local files.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import quote

from xray_spark.config import CANONICAL_LABELS
from xray_spark.errors import UserError

MANIFEST_COLUMNS = ("path", "label", "sha256", "patient_id", "source")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class DatasetSource:
    """Where a public dataset lives and how to verify it.

    `manifest` is a path relative to the `xray_spark` package (and, identically, to the repository root):
    the files and their sha256. A source without one has a `listing` instead, a file under `base_url` that
    names the files (Cohen's `metadata.csv`), parsed by that source's module; its hashes are trusted on first
    download (see `data/pins.py`). `access` is "download", or "import" for a source behind a login that is
    imported from a folder the user downloaded. `env_var` lets air-gapped sites point `base_url` at a mirror
    without code changes.
    """

    name: str
    citation: str
    homepage: str
    base_url: str
    manifest: str = ""
    listing: str = ""
    access: str = "download"
    license: str = "unknown"
    notes: str = ""

    @property
    def env_var(self) -> str:
        """Environment variable overriding `base_url`, e.g. XRAY_SPARK_OZTURK2020_URL."""
        return f"XRAY_SPARK_{re.sub(r'[^A-Za-z0-9]', '_', self.name).upper()}_URL"


@dataclass(frozen=True)
class ManifestRow:
    """One file of a source: `path` is relative to `base_url` (forward slashes, unquoted)."""

    path: str
    label: str
    sha256: str
    patient_id: str = ""
    source: str = ""


@dataclass(frozen=True)
class Selection:
    """What a source's listing gives: the rows kept (sha256 may be "" = not known yet) and, per reason, how
    many listed files were left out, so a run can say what it did not take and why."""

    rows: list[ManifestRow]
    left_out: Counter[str]

    @property
    def kept(self) -> Counter[str]:
        return Counter(r.label for r in self.rows)


COHEN_COMMIT = "6a4242344473ccb5ed0d2148d8c7bfb1691e4ed8"  # see the cohen2020 entry's notes

SOURCES: dict[str, DatasetSource] = {
    "ozturk2020": DatasetSource(
        name="ozturk2020",
        citation=(
            "Ozturk T, Talo M, Yildirim EA, Baloglu UB, Yildirim O, Acharya UR. Automated detection of "
            "COVID-19 cases using deep neural networks with X-ray images. Computers in Biology and Medicine "
            "2020;121:103792. doi:10.1016/j.compbiomed.2020.103792"
        ),
        homepage="https://github.com/muhammedtalo/COVID-19",
        base_url="https://raw.githubusercontent.com/muhammedtalo/COVID-19/master/X-Ray%20Image%20DataSet/",
        manifest="data/manifests/ozturk2020.csv",
        license="not stated by the repository; images derive from NIH ChestX-ray8 and "
                "covid-chestxray-dataset",
        notes="1124 of the 1125 published images (one COVID image is missing from the copy the manifest "
              "was built from)",
    ),
    "cohen2020": DatasetSource(
        name="cohen2020",
        citation=(
            "Cohen JP, Morrison P, Dao L, Roth K, Duong TQ, Ghassemi M. COVID-19 Image Data Collection: "
            "Prospective Predictions Are the Future. Machine Learning for Biomedical Imaging (MELBA) 2020. "
            "arXiv:2006.11988"
        ),
        homepage="https://github.com/ieee8023/covid-chestxray-dataset",
        base_url=f"https://raw.githubusercontent.com/ieee8023/covid-chestxray-dataset/{COHEN_COMMIT}/",
        listing="metadata.csv",
        license="per image: metadata.csv's `license` column (e.g. CC BY-NC-SA 4.0; blank = not stated)",
        notes=(
            f"pinned to commit {COHEN_COMMIT}: the commit of the stored copy of metadata.csv this entry was "
            "written from (offline; the commit was not re-checked against GitHub). Kept: modality X-ray, "
            "frontal views (PA, AP, AP Supine, AP erect, AP semi erect), folder images/; COVID-19 -> covid,"
            " any other Pneumonia... finding -> pneumonia, No Finding -> no_findings; everything else left "
            "out and counted. patient_id = cohen-<patientid> (a public dataset id, like Ozturk's nih-<id>)."
            " The per-file sha256 are NOT shipped (they could not be obtained offline): the first download "
            "of each file (and of metadata.csv) is trusted and pinned in the target folder's "
            ".sha256-pins.csv, and every later fetch into that folder verifies against it (trust on first "
            "download)"
        ),
    ),
    "chowdhury2020": DatasetSource(
        name="chowdhury2020",
        citation=(
            "Chowdhury MEH, et al. Can AI help in screening Viral and COVID-19 pneumonia? IEEE Access "
            "2020;8:132665-132676. doi:10.1109/ACCESS.2020.3010287"
        ),
        homepage="https://www.kaggle.com/datasets/tawsifurrahman/covid19-radiography-database",
        base_url="",
        access="import",
        license="see the Kaggle page and the per-class *.metadata.xlsx (images from several sources)",
        notes=(
            "behind a Kaggle login: download and unzip it yourself, then `xray-spark fetch chowdhury2020 "
            "--from DIR --to OUT`. Both layouts are read (COVID/ Normal/ Viral Pneumonia/ of the first "
            "releases; <class>/images/ + <class>/masks/ of later ones). COVID -> covid, Normal -> "
            "no_findings, Viral Pneumonia -> pneumonia; Lung_Opacity, masks/ and non-image files are left "
            "out and counted. sha256 are computed from the local files; there is no patient id"
        ),
    ),
}


def get_source(name: str) -> DatasetSource:
    """Look up a source by name; an unknown name is the user's to fix, so it names the known ones."""
    try:
        return SOURCES[name]
    except KeyError:
        known = ", ".join(sorted(SOURCES))
        raise UserError(f"unknown dataset '{name}'; known datasets: {known}") from None


def file_url(base_url: str, path: str) -> str:
    """Join `base_url` and a manifest path, URL-quoting each path segment (names may contain spaces)."""
    base = base_url if base_url.endswith("/") else base_url + "/"
    return base + "/".join(quote(seg, safe="") for seg in path.split("/"))


def read_manifest_text(source: DatasetSource) -> str:
    """The source's manifest CSV as text, read from the installed package (works from a wheel)."""
    if not source.manifest:
        raise UserError(f"'{source.name}' ships no manifest (its files are listed by "
                        f"{source.listing or 'a folder'})")
    res = resources.files("xray_spark").joinpath(*source.manifest.split("/"))
    try:
        return res.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"manifest for '{source.name}' not found in the package: {source.manifest}") from None


def load_manifest(source: DatasetSource, manifest_path: str | Path | None = None) -> list[ManifestRow]:
    """Rows of the source's manifest, or of `manifest_path` (same columns) when given, validated."""
    if manifest_path is None:
        text, where = read_manifest_text(source), f"package manifest {source.manifest}"
    else:
        p = Path(manifest_path)
        if not p.is_file():
            raise UserError(f"manifest not found: {p}")
        text, where = p.read_text(encoding="utf-8"), str(p)
    return parse_manifest(text, where=where, default_source=source.name)


def parse_manifest(text: str, *, where: str, default_source: str = "") -> list[ManifestRow]:
    """Parse and validate manifest CSV text; any bad row is a UserError naming the file and line."""
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in ("path", "label", "sha256") if c not in (reader.fieldnames or [])]
    if missing:
        raise UserError(f"{where}: missing column(s) {', '.join(missing)}")
    rows: list[ManifestRow] = []
    seen: set[tuple[str, str]] = set()
    for line, rec in enumerate(reader, start=2):
        path = (rec.get("path") or "").strip().replace("\\", "/")
        label = (rec.get("label") or "").strip()
        sha = (rec.get("sha256") or "").strip().lower()
        parts = path.split("/")
        if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise UserError(f"{where}:{line}: unsafe or empty path {path!r}")
        if label not in CANONICAL_LABELS:
            raise UserError(f"{where}:{line}: label {label!r} is not one of {', '.join(CANONICAL_LABELS)}")
        if not _SHA256.match(sha):
            raise UserError(f"{where}:{line}: sha256 must be 64 hex digits, got {sha!r}")
        dest = (label, parts[-1])
        if dest in seen:
            raise UserError(f"{where}:{line}: two files would both land at {label}/{parts[-1]}")
        seen.add(dest)
        rows.append(
            ManifestRow(
                path=path,
                label=label,
                sha256=sha,
                patient_id=(rec.get("patient_id") or "").strip(),
                source=(rec.get("source") or "").strip() or default_source,
            )
        )
    if not rows:
        raise UserError(f"{where}: manifest has no rows")
    return rows
