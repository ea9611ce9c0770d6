"""Trust on first download: the sha256 of a source's files as first downloaded, kept in the target folder.

Why: a source without published hashes (cohen2020: they could not be obtained when its entry was written)
cannot be verified the first time. What can be done is to record each file's sha256 when it first arrives
and refuse any later download into the same folder that differs -- a mirror serving other bytes, a changed
file at what should be a fixed commit. The record only grows: a file that later fails verification keeps
its pin (dropping it would let the next run trust the changed file).

The record is `<to_dir>/.sha256-pins.csv` (`path,sha256,first_seen_utc`, `path` as in the source's listing,
e.g. `images/x.jpeg` or `metadata.csv`); hidden, so ingest never reads it as data. Deleting it starts the
trust over.
"""

from __future__ import annotations

import csv
import os
import re
from datetime import datetime, timezone
from pathlib import Path

from xray_spark.errors import UserError

PINS_NAME = ".sha256-pins.csv"
PIN_COLUMNS = ("path", "sha256", "first_seen_utc")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def read_pins(root: Path) -> dict[str, str]:
    """path -> sha256 recorded in `root` ({} when nothing was recorded yet); a damaged record is an error to
    look at, never a reason to trust again."""
    f = root / PINS_NAME
    if not f.is_file():
        return {}
    pins: dict[str, str] = {}
    with open(f, newline="", encoding="utf-8") as fh:
        for line, rec in enumerate(csv.DictReader(fh), start=2):
            path, sha = (rec.get("path") or "").strip(), (rec.get("sha256") or "").strip().lower()
            if not path or not _SHA256.match(sha):
                raise UserError(f"{f}:{line}: damaged pin (path and 64-hex sha256 expected); fix it, or "
                                f"delete {PINS_NAME} to trust the next download again")
            pins[path] = sha
    return pins


def record_pins(root: Path, new: dict[str, str]) -> None:
    """Add `new` pins (path -> sha256) to `root`'s record, atomically. Existing pins are never changed."""
    if not new:
        return
    f = root / PINS_NAME
    rows: list[list[str]] = []
    if f.is_file():
        with open(f, newline="", encoding="utf-8") as fh:
            rows = [[r["path"], r["sha256"], r.get("first_seen_utc") or ""] for r in csv.DictReader(fh)]
    known = {r[0] for r in rows}
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    rows += [[p, sha, now] for p, sha in sorted(new.items()) if p not in known]
    tmp = f.with_name(f.name + ".part")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(PIN_COLUMNS)
        w.writerows(rows)
    os.replace(tmp, f)
