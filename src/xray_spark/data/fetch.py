"""Download a public dataset listed in `sources.SOURCES`, verifying every file's sha256.

Why this shape: downloads on slow or flaky links get interrupted, and a half-written image that decodes is
worse than a missing one. So every byte goes to `<file>.part`, is hashed while it streams, and only a file
with the manifest's hash is renamed into place (atomic on one filesystem). A rerun skips verified files
without a request and resumes a `.part` with an HTTP Range request when the server honours it.

Per-file problems (HTTP errors, timeouts, wrong bytes) never raise: they are retried once and then listed in
`FetchResult.failed` with a reason, so one bad file does not cost the other thousand. Bad arguments (unknown
dataset, bad manifest, unusable target folder) raise `UserError`.

Layout written to `to_dir`: `<label>/<basename>` per file (canonical label folders) plus `manifest.csv`
(`path,label,source,patient_id,sha256`, paths relative to `to_dir`) listing the files this call verified,
so ingest can read either the class folders or the manifest.
"""

from __future__ import annotations

import csv
import hashlib
import http.client
import logging
import os
import re
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tqdm.auto import tqdm

from xray_spark.data.sources import ManifestRow, file_url, get_source, load_manifest
from xray_spark.errors import UserError

log = logging.getLogger(__name__)

OUTPUT_COLUMNS = ("path", "label", "source", "patient_id", "sha256")
_CHUNK = 1 << 16
_RETRY_DELAY = 1.0  # seconds
_USER_AGENT = "xray-spark-fetch/0.1 (+https://github.com/muhammedtalo/COVID-19 mirror client)"
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")


@dataclass(frozen=True)
class FetchFailure:
    """A file that could not be fetched and verified; `path` is relative to `to_dir`."""

    path: str
    url: str
    reason: str


@dataclass
class FetchResult:
    """What one `fetch_dataset` call did. Paths are relative to `to_dir` (e.g. `covid/x.jpeg`)."""

    name: str
    to_dir: Path
    base_url: str
    manifest_path: Path | None = None
    downloaded: list[str] = field(default_factory=list)
    skipped_existing: list[str] = field(default_factory=list)
    failed: list[FetchFailure] = field(default_factory=list)
    bytes_downloaded: int = 0
    resumed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        """One line for the CLI."""
        return (
            f"{self.name}: {len(self.downloaded)} downloaded ({self.bytes_downloaded / 1e6:.1f} MB), "
            f"{len(self.skipped_existing)} already present, {len(self.failed)} failed -> {self.to_dir}"
        )


@dataclass(frozen=True)
class _Outcome:
    status: str  # "downloaded" | "skipped" | "failed"
    nbytes: int = 0
    resumed: bool = False
    reason: str = ""


class _PermanentError(Exception):
    """An HTTP answer that retrying will not change (404, 403, ...)."""


def fetch_dataset(
    name: str,
    to_dir: str | Path,
    *,
    base_url: str | None = None,
    limit: int | None = None,
    progress: bool = True,
    workers: int = 4,
    timeout: float = 60,
    manifest_path: str | Path | None = None,
) -> FetchResult:
    """Download dataset `name` into `to_dir/<label>/<basename>` and write `to_dir/manifest.csv`.

    `base_url`: argument, else env `XRAY_SPARK_<NAME>_URL`, else the source's default (http(s) or file://).
    `limit`: fetch only N files, taken round-robin across labels in manifest order so a small sample still
    has every class. `manifest_path`: a CSV with the source manifest's columns, to fetch a custom subset.
    """
    source = get_source(name)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise UserError(f"limit must be a positive integer, got {limit!r}")
    if workers < 1:
        raise UserError(f"workers must be >= 1, got {workers!r}")
    if timeout <= 0:
        raise UserError(f"timeout must be > 0 seconds, got {timeout!r}")
    base = base_url or os.environ.get(source.env_var) or source.base_url
    if not base.startswith(("http://", "https://", "file://")):
        raise UserError(f"base URL must start with http://, https:// or file://, got {base!r}")
    rows = load_manifest(source, manifest_path)
    if limit is not None:
        rows = _balanced_head(rows, limit)
    root = _prepare_dir(Path(to_dir))

    result = FetchResult(name=name, to_dir=root, base_url=base)
    log.info("fetching %d file(s) of %s from %s into %s", len(rows), name, base, root)
    outcomes = _run_all(rows, base, root, workers=workers, timeout=timeout, progress=progress)

    present: list[ManifestRow] = []
    for row in rows:
        rel, out = _local_rel(row), outcomes[row.path]
        if out.status == "failed":
            result.failed.append(FetchFailure(rel, file_url(base, row.path), out.reason))
            continue
        present.append(row)
        if out.status == "skipped":
            result.skipped_existing.append(rel)
        else:
            result.downloaded.append(rel)
            result.bytes_downloaded += out.nbytes
            if out.resumed:
                result.resumed.append(rel)
    if present:
        result.manifest_path = _write_manifest(root, present)
    for f in result.failed:
        log.warning("failed %s: %s", f.path, f.reason)
    log.info(result.summary())
    return result


def _balanced_head(rows: list[ManifestRow], limit: int) -> list[ManifestRow]:
    """First `limit` rows taken round-robin over labels (manifest order within a label), kept in manifest
    order."""
    by_label: OrderedDict[str, list[ManifestRow]] = OrderedDict()
    for r in rows:
        by_label.setdefault(r.label, []).append(r)
    chosen: set[str] = set()
    depth = 0
    while len(chosen) < min(limit, len(rows)):
        for group in by_label.values():
            if depth < len(group) and len(chosen) < limit:
                chosen.add(group[depth].path)
        depth += 1
    return [r for r in rows if r.path in chosen]


def _prepare_dir(root: Path) -> Path:
    if root.exists() and not root.is_dir():
        raise UserError(f"--to must be a folder, but {root} is a file")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {root}: {e.strerror or e}") from None
    return root.resolve()


def _local_rel(row: ManifestRow) -> str:
    return f"{row.label}/{row.path.rsplit('/', 1)[-1]}"


def _run_all(
    rows: list[ManifestRow], base: str, root: Path, *, workers: int, timeout: float, progress: bool
) -> dict[str, _Outcome]:
    """Fetch rows on a thread pool (I/O bound); progress is updated from this thread only."""
    outcomes: dict[str, _Outcome] = {}
    total_bytes = 0
    bar = tqdm(total=len(rows), unit="file", desc="fetch", disable=not progress, leave=True)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="xray-fetch")
    try:
        futures = {
            pool.submit(_fetch_one, file_url(base, r.path), root / _local_rel(r), r.sha256, timeout): r
            for r in rows
        }
        for fut in as_completed(futures):
            row = futures[fut]
            try:
                out = fut.result()
            except Exception as e:  # a bug or an OS error we did not foresee: still per-file, never fatal
                log.exception("unexpected error fetching %s", row.path)
                out = _Outcome("failed", reason=f"{type(e).__name__}: {e}")
            outcomes[row.path] = out
            total_bytes += out.nbytes
            bar.update(1)
            bar.set_postfix_str(f"{total_bytes / 1e6:.1f} MB", refresh=False)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        bar.close()
    pool.shutdown(wait=True)
    return outcomes


def _fetch_one(url: str, dest: Path, sha256: str, timeout: float) -> _Outcome:
    """Skip a verified file, else download to `.part` (resuming), verify, rename. Retries once."""
    if dest.is_file():
        if _sha256_file(dest) == sha256:
            log.debug("present and verified: %s", dest)
            return _Outcome("skipped")
        log.warning("%s exists with a different sha256; downloading it again", dest)
    part = dest.with_name(dest.name + ".part")
    if part.is_file() and _sha256_file(part) == sha256:  # a finished download whose rename was interrupted
        os.replace(part, dest)
        return _Outcome("downloaded", resumed=True)
    reason = ""
    for attempt in (1, 2):
        try:
            nbytes, resumed, digest = _download(url, part, timeout)
        except _PermanentError as e:
            return _Outcome("failed", reason=str(e))
        except (URLError, OSError, http.client.HTTPException) as e:
            reason = _describe(e)
            log.info("attempt %d for %s failed: %s", attempt, url, reason)
            if attempt == 1:
                time.sleep(_RETRY_DELAY)  # a transient network error deserves a moment before the retry
            continue
        if digest == sha256:
            os.replace(part, dest)
            log.debug("verified %s (%d bytes, resumed=%s)", dest, nbytes, resumed)
            return _Outcome("downloaded", nbytes=nbytes, resumed=resumed)
        part.unlink(missing_ok=True)
        reason = f"sha256 mismatch: expected {sha256[:12]}..., got {digest[:12]}..."
        log.info("attempt %d for %s: %s", attempt, url, reason)
    return _Outcome("failed", reason=reason)


def _download(url: str, part: Path, timeout: float) -> tuple[int, bool, str]:
    """Stream `url` into `part`, appending via Range when `part` already holds a prefix.

    Returns (bytes received in this call, whether it resumed, sha256 of the whole `part`).
    """
    offset = part.stat().st_size if part.is_file() else 0
    req = Request(url, headers={"User-Agent": _USER_AGENT})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    try:
        resp = urlopen(req, timeout=timeout)
    except HTTPError as e:
        e.close()
        if e.code == 416 and offset:  # our prefix is not a prefix of theirs: start over
            part.unlink(missing_ok=True)
            return _download(url, part, timeout)
        if 400 <= e.code < 500 and e.code not in (408, 429):
            raise _PermanentError(f"HTTP {e.code} {e.reason}") from None
        raise
    with resp:
        status = getattr(resp, "status", None) or 200  # file:// answers have no status
        resumed = bool(offset) and status == 206 and _range_start(resp.headers.get("Content-Range")) == offset
        h = hashlib.sha256()
        if resumed:
            _hash_into(h, part)
            log.debug("resuming %s at byte %d", url, offset)
        elif offset:
            log.debug("server ignored Range for %s; downloading it whole", url)
        n = 0
        part.parent.mkdir(parents=True, exist_ok=True)  # only now: a failed run leaves no empty class folders
        with open(part, "ab" if resumed else "wb") as f:
            while chunk := resp.read(_CHUNK):
                f.write(chunk)
                h.update(chunk)
                n += len(chunk)
    return n, resumed, h.hexdigest()


def _range_start(content_range: str | None) -> int | None:
    m = _CONTENT_RANGE.match(content_range or "")
    return int(m.group(1)) if m else None


def _describe(e: BaseException) -> str:
    if isinstance(e, HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, URLError):
        return f"cannot reach server: {e.reason}"
    return f"{type(e).__name__}: {e}"


def _hash_into(h: hashlib._Hash, path: Path) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    _hash_into(h, path)
    return h.hexdigest()


def _write_manifest(root: Path, rows: list[ManifestRow]) -> Path:
    """Write `manifest.csv` atomically (a crash never leaves a truncated manifest for ingest to trust)."""
    out = root / "manifest.csv"
    tmp = root / "manifest.csv.part"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(OUTPUT_COLUMNS)
        for r in rows:
            w.writerow([_local_rel(r), r.label, r.source, r.patient_id, r.sha256])
    os.replace(tmp, out)
    return out
