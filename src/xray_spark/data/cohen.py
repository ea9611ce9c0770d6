"""Cohen et al.'s covid-chestxray-dataset: its `metadata.csv` -> the rows to fetch, and what was left out.

Why a parser rather than a shipped manifest: the repository's own `metadata.csv` is the authoritative listing
(finding, view, modality, patient per image), and the reference report's merge needs exactly three findings
on frontal X-rays. Pure: text in, `Selection` out; the download lives in `fetch`.

Column names and values are the repository's (SCHEMA.md and metadata.csv of the pinned commit):
`patientid`, `finding` (hierarchical: `Pneumonia/Viral/COVID-19`, `Pneumonia/Bacterial/Streptococcus`,
`Pneumonia`, `No Finding`, `Tuberculosis`, `Unknown`, `todo`, ...), `view` (`PA`, `AP`, `AP Supine`, `L`,
`Axial`, `Coronal`, ...), `modality` (`X-ray`, `CT`), `folder` (`images`, `volumes`; absent in early
versions, where every file is under images/) and `filename`.
"""

from __future__ import annotations

import csv
import io
from collections import Counter

from xray_spark.data.sources import ManifestRow, Selection
from xray_spark.errors import UserError

SOURCE = "cohen2020"
PATIENT_PREFIX = "cohen-"  # a public dataset id, kept in clear with a prefix as Ozturk's `nih-<id>`
IMAGE_FOLDER = "images"
REQUIRED_COLUMNS = ("patientid", "finding", "view", "modality", "filename")
# frontal projections; lateral (`L`) and CT planes (`Axial`, `Coronal`) are not
FRONTAL_VIEWS = frozenset({"pa", "ap", "ap supine", "ap erect", "ap semi erect"})
XRAY_MODALITIES = frozenset({"x-ray", "xray"})
COVID_FINDINGS = frozenset({"pneumonia/viral/covid-19", "covid-19"})  # the second: early releases


def label_for_finding(finding: str) -> str | None:
    """Canonical label of a `finding` value, or None when it maps to none of the three.

    COVID-19 -> covid; any other finding under `Pneumonia` (viral, bacterial, fungal, lipoid, aspiration, or
    plain `Pneumonia`) -> pneumonia; `No Finding` -> no_findings. Tuberculosis, Unknown, todo, blank: None.
    """
    f = " ".join(finding.split()).lower()  # "Pneumonia/Viral/Herpes " has a trailing space in the data
    if f in COVID_FINDINGS:
        return "covid"
    if f == "pneumonia" or f.startswith("pneumonia/"):
        return "pneumonia"
    if f == "no finding":
        return "no_findings"
    return None


def select_rows(text: str, *, where: str = "metadata.csv") -> Selection:
    """`metadata.csv` text -> rows under `images/` to fetch (sha256 unknown: "") + left-out counts by reason.

    Checked in this order, each left-out row counted once under the first reason that applies:
    `modality <M>` (not an X-ray), `folder <F>` (not under images/), `view <V>` (not frontal; `view L` is a
    lateral), `finding <F>` (maps to no label), `repeated filename` (a file listed twice: the first row wins).
    """
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise UserError(f"{where}: missing column(s) {', '.join(missing)}; is this Cohen's metadata.csv?")
    rows: list[ManifestRow] = []
    left_out: Counter[str] = Counter()
    seen: set[str] = set()
    for rec in reader:
        rec = {(k or "").strip(): (v or "").strip() for k, v in rec.items() if k is not None}
        name = rec["filename"]
        modality, view, finding = rec["modality"], " ".join(rec["view"].split()), rec["finding"]
        folder = rec.get("folder") or IMAGE_FOLDER
        label = label_for_finding(finding)
        if modality.lower() not in XRAY_MODALITIES:
            left_out[f"modality {modality or '(blank)'}"] += 1
        elif folder != IMAGE_FOLDER:
            left_out[f"folder {folder}"] += 1
        elif view.lower() not in FRONTAL_VIEWS:
            left_out[f"view {view or '(blank)'}"] += 1
        elif label is None:
            left_out[f"finding {' '.join(finding.split()) or '(blank)'}"] += 1
        elif not name or "/" in name or "\\" in name or name in (".", ".."):
            left_out["unusable filename"] += 1
        elif name in seen:
            left_out["repeated filename"] += 1
        else:
            seen.add(name)
            pid = rec["patientid"]
            rows.append(ManifestRow(path=f"{IMAGE_FOLDER}/{name}", label=label, sha256="",
                                    patient_id=f"{PATIENT_PREFIX}{pid}" if pid else "", source=SOURCE))
    return Selection(rows=rows, left_out=left_out)
