"""Find the images in a data folder and their labels: class subfolders, or a `manifest.csv`.

Why on the driver: listing and label mapping are cheap and must be exact (every file accounted for);
the bytes are read by Spark afterwards.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

from xray_spark.config import Config
from xray_spark.errors import UserError

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.csv"
COLUMNS = ["path", "rel_path", "label", "source", "patient_id", "label_status"]
# NIH ChestX-ray8 names files <8-digit patient>_<3-digit follow-up>.png: the patient is recoverable.
_NIH_NAME = re.compile(r"^(\d{8})_\d{3}\.png$", re.IGNORECASE)
IGNORED_NAMES = {MANIFEST_NAME, "readme.md", "readme.txt", "license", "license.txt", ".ds_store", "thumbs.db"}


def nih_patient_id(name: str) -> str | None:
    """`00000013_005.png` -> `nih-00000013`; None for names that do not follow the NIH scheme."""
    m = _NIH_NAME.match(name)
    return f"nih-{m.group(1)}" if m else None


def check_data_dir(data_dir: str | Path) -> Path:
    """A missing or empty --data folder is a user error (exit 2), not a job with zero rows."""
    p = Path(data_dir).expanduser()
    if not p.exists():
        raise UserError(f"--data folder does not exist: {p}")
    if not p.is_dir():
        raise UserError(f"--data is not a folder: {p}")
    if not any(p.iterdir()):
        raise UserError(f"--data folder is empty: {p}")
    return p.resolve()


def _clean(value: object) -> str | None:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    text = str(value).strip()
    return text or None


def _from_manifest(root: Path, cfg: Config) -> pd.DataFrame:
    manifest = root / MANIFEST_NAME
    try:
        raw = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas raises many types for malformed CSV
        raise UserError(f"{manifest}: cannot read manifest ({type(exc).__name__}: {exc})") from None
    missing = {"path", "label"} - set(raw.columns)
    if missing:
        raise UserError(f"{manifest}: missing column(s) {', '.join(sorted(missing))}; need path,label[,source][,patient_id]")
    rows = []
    for rec in raw.to_dict("records"):
        rel = _clean(rec.get("path"))
        if rel is None:
            continue
        path = Path(rel) if Path(rel).is_absolute() else root / rel
        canonical = cfg.label_for(rec.get("label", ""))
        patient = _clean(rec.get("patient_id")) or nih_patient_id(path.name)
        rows.append(
            {
                "path": str(path.resolve()),
                "rel_path": rel,
                "label": canonical or _clean(rec.get("label")),
                "source": _clean(rec.get("source")) or root.name,
                "patient_id": patient,
                "label_status": "ok" if canonical else f"unknown_label: {rec.get('label')!r} is not mapped in config labels",
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def _from_folders(root: Path, cfg: Config) -> pd.DataFrame:
    rows = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if path.name.lower() in IGNORED_NAMES or any(part.startswith(".") for part in rel.parts):
            continue
        folder = rel.parts[0] if len(rel.parts) > 1 else None
        canonical = cfg.label_for(folder) if folder else None
        if folder is None:
            status = "unlabelled: file is not inside a class folder"
        elif canonical is None:
            status = f"unknown_label: folder {folder!r} is not mapped in config labels"
        else:
            status = "ok"
        rows.append(
            {
                "path": str(path.resolve()),
                "rel_path": str(rel),
                "label": canonical or folder,
                "source": root.name,
                "patient_id": nih_patient_id(path.name),
                "label_status": status,
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def discover(data_dir: str | Path, cfg: Config) -> pd.DataFrame:
    """Every candidate file with its canonical label (or why it has none). Columns: see COLUMNS."""
    root = check_data_dir(data_dir)
    df = _from_manifest(root, cfg) if (root / MANIFEST_NAME).is_file() else _from_folders(root, cfg)
    if df.empty:
        raise UserError(f"--data folder has no image files: {root}")
    dupes = df["path"].duplicated(keep="first")
    if dupes.any():
        log.warning("%d manifest rows list a path twice; keeping the first", int(dupes.sum()))
        df = df[~dupes].reset_index(drop=True)
    return df
