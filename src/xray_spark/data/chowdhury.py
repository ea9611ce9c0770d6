"""Chowdhury et al.'s COVID-19 Radiography Database, imported from a folder the user downloaded from Kaggle.

Why an import and not a download: the Kaggle page needs a login (and an API token to script it), which this
tool must not require. So `fetch chowdhury2020 --from DIR --to OUT` reads the unzipped folder and writes the
layout every fetch writes (`OUT/<label>/<basename>` + `manifest.csv` with sha256 computed from the local
files), hard-linking where the filesystem allows it and copying otherwise.

Layouts read (the class folder may sit under a wrapper folder such as `COVID-19_Radiography_Dataset/`):
first releases `COVID-19/` or `COVID/`, `NORMAL/` or `Normal/`, `Viral Pneumonia/`, with the images
directly inside; later ones `<class>/images/` plus `<class>/masks/`, a `Lung_Opacity/` class and
`<class>.metadata.xlsx` files. COVID -> covid, Normal -> no_findings, Viral Pneumonia -> pneumonia;
everything else is left out and counted by reason. `classify` and `select_files` are pure;
`import_dataset` does the I/O.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import Counter
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from xray_spark.data.fetched import (
    FetchFailure,
    FetchResult,
    finish,
    local_rel,
    partial_path,
    sha256_file,
)
from xray_spark.data.files import MANIFEST_NAME
from xray_spark.data.sources import ManifestRow, Selection, get_source
from xray_spark.errors import UserError

log = logging.getLogger(__name__)

SOURCE = "chowdhury2020"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
# class folder name (lower case, '_' and '-' as spaces) -> canonical label, or None = a class left out
CLASS_FOLDERS: dict[str, str | None] = {
    "covid": "covid", "covid 19": "covid",
    "normal": "no_findings",
    "viral pneumonia": "pneumonia",
    "lung opacity": None,  # non-COVID lung infection: not one of the report's three labels
}
MASK_FOLDER = "masks"


def _norm(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


def classify(rel_path: str) -> tuple[str | None, str]:
    """(label, "") for an image of one of the three classes, else (None, why it is left out).

    `rel_path` is relative to the downloaded folder, with `/` separators. The class is the first folder
    named like one; below it only the image itself or `images/<image>` are read."""
    parts = PurePosixPath(rel_path).parts
    suffix = PurePosixPath(rel_path).suffix.lower()
    for i, part in enumerate(parts[:-1]):
        key = _norm(part)
        if key not in CLASS_FOLDERS:
            continue
        below = [_norm(p) for p in parts[i + 1:-1]]
        if below == [MASK_FOLDER]:
            return None, "mask (segmentation, not an X-ray)"
        if suffix not in IMAGE_SUFFIXES:
            return None, f"not an image ({suffix or 'no extension'})"
        if below not in ([], ["images"]):
            return None, f"unexpected folder {'/'.join(parts[i + 1:-1])} under {part}"
        label = CLASS_FOLDERS[key]
        if label is None:
            return None, f"class {part} (not one of covid, no_findings, pneumonia)"
        return label, ""
    if suffix not in IMAGE_SUFFIXES:
        return None, f"not an image ({suffix or 'no extension'})"
    return None, "not under a class folder (COVID, Normal, Viral Pneumonia)"


def select_files(rel_paths: list[str]) -> Selection:
    """Rows (sha256 "" until the files are hashed) for the images of the three classes, in path order, plus
    left-out counts; two images of one class with the same file name keep the first (counted)."""
    rows: list[ManifestRow] = []
    left_out: Counter[str] = Counter()
    seen: set[tuple[str, str]] = set()
    for rel in sorted(rel_paths):
        label, why = classify(rel)
        if label is None:
            left_out[why] += 1
            continue
        dest = (label, rel.rsplit("/", 1)[-1])
        if dest in seen:
            left_out["same file name twice in one class"] += 1
            continue
        seen.add(dest)
        rows.append(ManifestRow(path=rel, label=label, sha256="", source=SOURCE))
    return Selection(rows=rows, left_out=left_out)


def import_dataset(name: str, from_dir: str | Path, to_dir: str | Path, *, dry_run: bool = False,
                   progress: bool = True) -> FetchResult:
    """Import a downloaded copy of `name` (chowdhury2020) from `from_dir` into `to_dir`, as fetch lays out.

    A file already in place with the source's bytes is left alone (rerunnable); each file is written under a
    hidden partial name and renamed, so a reader never sees half of one. Per-file errors are listed in
    `failed`, never raised; bad arguments raise UserError."""
    source = get_source(name)
    if source.access != "import":
        raise UserError(f"--from is for datasets imported from a folder ({SOURCE}); {name} is downloaded: "
                        "drop --from")
    src = Path(from_dir)
    if not src.is_dir():
        raise UserError(f"--from {src}: not a folder (unzip the Kaggle download first)")
    src, root = src.resolve(), Path(to_dir).resolve()
    if root.exists() and not root.is_dir():
        raise UserError(f"--to must be a folder, but {root} is a file")
    if root == src or src in root.parents or root in src.parents:
        raise UserError(f"--to {root} and --from {src} must not contain one another")
    selection = select_files(_walk(src))
    if not selection.rows:
        raise UserError(f"--from {src}: no COVID, Normal or Viral Pneumonia images found "
                        f"({sum(selection.left_out.values())} file(s) left out)")
    result = FetchResult(name=name, to_dir=root, base_url=src.as_uri(), kept=selection.kept,
                         left_out=Counter(selection.left_out), dry_run=dry_run, verb="imported")
    if dry_run:
        return result
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {root}: {e.strerror or e}") from None
    present: list[ManifestRow] = []
    for row in tqdm(selection.rows, unit="file", desc="import", disable=not progress):
        rel = local_rel(row)
        try:
            digest, copied, nbytes = _place(src / row.path, root / rel)
        except OSError as e:
            result.failed.append(FetchFailure(rel, (src / row.path).as_uri(), f"{type(e).__name__}: {e}"))
            continue
        present.append(ManifestRow(row.path, row.label, digest, row.patient_id, row.source))
        (result.downloaded if copied else result.skipped_existing).append(rel)
        result.bytes_downloaded += nbytes
    return finish(result, root, present, MANIFEST_NAME)


def _walk(root: Path) -> list[str]:
    """Every regular file under `root`, relative with `/`; dot-names (.DS_Store, ._x, .git/) are skipped."""
    out = []
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = Path(dirpath).relative_to(root)
        out += [(rel / f).as_posix() for f in files if not f.startswith(".")]
    return out


def _place(src: Path, dest: Path) -> tuple[str, bool, int]:
    """Put `src`'s bytes at `dest` (hard link, else copy) unless they are there already.
    Returns (sha256, whether it was placed now, its size)."""
    digest = sha256_file(src)
    if dest.is_file() and (dest.samefile(src) or sha256_file(dest) == digest):
        return digest, False, 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = partial_path(dest)
    part.unlink(missing_ok=True)
    try:
        os.link(src, part)
    except OSError:  # another filesystem, or links not allowed: copy, and check the copy
        shutil.copyfile(src, part)
        got = sha256_file(part)
    else:
        got = digest
    if got != digest:
        part.unlink(missing_ok=True)
        raise OSError(f"copy differs from the source (sha256 {got[:12]}... vs {digest[:12]}...)")
    nbytes = part.stat().st_size
    os.replace(part, dest)
    return digest, True, nbytes
