"""What a fetch or an import leaves behind: its result, the manifest it writes, and hidden partial names.

Why a module of its own: `fetch` (downloads) and `chowdhury` (imports of a folder downloaded by hand) must
write the same layout -- `<label>/<basename>` plus `manifest.csv` (`path,label,source,patient_id,sha256`) --
and report in the same shape, so that ingest and the CLI treat every source alike.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from xray_spark.data.files import SELECTION_NAME
from xray_spark.data.sources import ManifestRow

log = logging.getLogger(__name__)

OUTPUT_COLUMNS = ("path", "label", "source", "patient_id", "sha256")
PARTIAL_SUFFIX = ".part"
USER_AGENT = "xray-spark-fetch/0.1 (+https://github.com/muhammedtalo/COVID-19 mirror client)"


@dataclass(frozen=True)
class FetchFailure:
    """A file that could not be fetched and verified; `path` is relative to `to_dir`."""

    path: str
    url: str
    reason: str


@dataclass
class FetchResult:
    """What one fetch/import did. Paths are relative to `to_dir` (e.g. `covid/x.jpeg`).

    `kept` counts the files the source's listing selected, per label; `left_out` the listed files it did not
    select, per reason (a lateral view, a CT, a finding that maps to no label, a mask...). A dry run fills
    only these two and writes nothing.
    """

    name: str
    to_dir: Path
    base_url: str
    manifest_path: Path | None = None
    downloaded: list[str] = field(default_factory=list)
    skipped_existing: list[str] = field(default_factory=list)
    failed: list[FetchFailure] = field(default_factory=list)
    bytes_downloaded: int = 0
    resumed: list[str] = field(default_factory=list)
    kept: Counter[str] = field(default_factory=Counter)
    left_out: Counter[str] = field(default_factory=Counter)
    dry_run: bool = False
    verb: str = "downloaded"  # "imported" for a local folder

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        """One line for the CLI."""
        if self.dry_run:
            return (f"{self.name} (dry run): would fetch {sum(self.kept.values())} file(s) from "
                    f"{self.base_url} into {self.to_dir}; nothing written")
        return (
            f"{self.name}: {len(self.downloaded)} {self.verb} ({self.bytes_downloaded / 1e6:.1f} MB), "
            f"{len(self.skipped_existing)} already present, {len(self.failed)} failed -> {self.to_dir}"
        )

    def selection_lines(self) -> list[str]:
        """What the listing kept per label and left out per reason (most first), one line each."""
        lines = [f"kept {sum(self.kept.values())}: "
                 + (", ".join(f"{k} {n}" for k, n in sorted(self.kept.items())) or "nothing")]
        if self.left_out:
            lines.append(f"left out {sum(self.left_out.values())}:")
            lines += [f"  {n:6d}  {why}" for why, n in sorted(self.left_out.items(), key=lambda kv: (-kv[1],
                                                                                                    kv[0]))]
        else:
            lines.append("left out 0")
        return lines


def partial_path(dest: Path) -> Path:
    """Where `dest` is written to first: hidden (dot-prefixed) in the same folder, so one rename finishes it
    and folder readers that skip `.` names (Spark's binaryFile, ingest) never see half an image."""
    return dest.with_name(f".{dest.name}{PARTIAL_SUFFIX}")


def local_rel(row: ManifestRow) -> str:
    """Where a source file lands under `to_dir`: `<label>/<basename>`."""
    return f"{row.label}/{row.path.rsplit('/', 1)[-1]}"


def hash_into(h: hashlib._Hash, path: Path) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    hash_into(h, path)
    return h.hexdigest()


def write_manifest(out: Path, rows: list[ManifestRow]) -> Path:
    """Write `out` atomically (a crash never leaves a truncated manifest for ingest to trust); the temporary
    file is hidden like a partial download."""
    tmp = partial_path(out)
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(OUTPUT_COLUMNS)
        for r in rows:
            w.writerow([local_rel(r), r.label, r.source, r.patient_id, r.sha256])
    os.replace(tmp, out)
    return out


def write_selection(root: Path, result: FetchResult) -> Path:
    """`<root>/selection.json`: the source, the files kept per label and the files left out per reason, so a
    merge's report can say what each source lost before ingest saw it (laterals, CT, unknown findings)."""
    out = root / SELECTION_NAME
    tmp = partial_path(out)
    tmp.write_text(json.dumps({"source": result.name, "kept": dict(sorted(result.kept.items())),
                               "left_out": dict(sorted(result.left_out.items()))}, indent=2) + "\n",
                   encoding="utf-8")
    os.replace(tmp, out)
    return out


def finish(result: FetchResult, root: Path, present: list[ManifestRow], manifest_name: str) -> FetchResult:
    """The end every fetch and import shares: the manifest and selection.json written for what is present
    (nothing when nothing is), each failure and the summary logged."""
    if present:
        result.manifest_path = write_manifest(root / manifest_name, present)
        write_selection(root, result)
    for f in result.failed:
        log.warning("failed %s: %s", f.path, f.reason)
    log.info(result.summary())
    return result
