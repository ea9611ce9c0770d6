"""Download a public dataset listed in `sources.SOURCES`, verifying every file's size and sha256.

Why this shape: downloads on slow or flaky links get interrupted, and a half-written image that decodes is
worse than a missing one. So every byte goes to a hidden partial `.<file>.part` next to its destination
(Spark's binaryFile source and ingest skip names starting with `.`, so a folder read mid-download never
sees it), is hashed while it streams, and only a file with the manifest's hash is renamed into place
(atomic on one filesystem). A rerun skips verified files without a request and resumes a partial with an
HTTP Range request when the server honours it.

Size: a response is cut off as soon as it passes the size it should have -- the manifest's optional `size`
column, else the length the server declares, never more than `max_bytes` -- so a wrong or endless response
cannot fill the disk; one that ends short of it fails too (its partial is kept, hidden, to resume from).

Per-file problems (HTTP errors, timeouts, wrong size or bytes) never raise: they are retried once and then
listed in `FetchResult.failed` with a reason, so one bad file does not cost the other thousand. Bad
arguments (unknown dataset, bad manifest, unusable target folder) raise `UserError`.

Layout written to `to_dir`: `<label>/<basename>` per file (canonical label folders) plus `manifest.csv`
(`path,label,source,patient_id,sha256`, paths relative to `to_dir`) listing the files this call verified,
so ingest can read either the class folders or the manifest. A limited fetch writes `manifest.limit.csv`
instead and never touches `manifest.csv` (see `fetch_dataset`).

Which files: a source's shipped manifest (ozturk2020: paths and sha256), or its listing file fetched from
`base_url` and parsed by the source's module (cohen2020: `metadata.csv`, `data/cohen.py`), whose hashes are
trusted on first download and verified from then on (`data/pins.py`). Either way the result says what was
kept per label and left out per reason; a dry run says only that, downloading at most the listing.
"""

from __future__ import annotations

import csv
import hashlib
import http.client
import io
import logging
import os
import re
import time
from collections import Counter, OrderedDict
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from email.message import Message
from pathlib import Path
from typing import IO
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tqdm.auto import tqdm

from xray_spark.config import DecodeConfig
from xray_spark.data.fetched import (
    PARTIAL_SUFFIX,
    USER_AGENT,
    FetchFailure,
    FetchResult,
    finish,
    hash_into,
    local_rel,
    partial_path,
    sha256_file,
)
from xray_spark.data.files import LIMIT_MANIFEST_NAME, MANIFEST_NAME
from xray_spark.data.pins import read_pins, record_pins
from xray_spark.data.source_listing import read_listing
from xray_spark.data.sources import (
    DatasetSource,
    ManifestRow,
    Selection,
    file_url,
    get_source,
    load_manifest,
    read_manifest_text,
)
from xray_spark.errors import UserError

__all__ = ["LIMIT_MANIFEST_NAME", "FetchFailure", "FetchResult", "fetch_dataset", "partial_path"]

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = DecodeConfig.max_file_bytes  # ingest quarantines larger files
_CHUNK = 1 << 16
_RETRY_DELAY = 1.0  # seconds
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")


@dataclass(frozen=True)
class _Outcome:
    status: str  # "downloaded" | "skipped" | "failed"
    nbytes: int = 0
    resumed: bool = False
    reason: str = ""
    sha256: str = ""  # of the file now in place (what a first download is pinned to)


@dataclass(frozen=True)
class _Job:
    """One file: where from and to, its sha256 ("" = not known yet: trusted on first download), its size
    when the manifest gives one, and a hard size cap."""

    url: str
    dest: Path
    sha256: str
    size: int | None
    max_bytes: int


class _PermanentError(Exception):
    """An HTTP answer that retrying will not change (404, 403, ...)."""


class _SizeError(Exception):
    """A response longer than the file can be (cut off, partial deleted) or shorter (partial kept)."""


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
    max_bytes: int = DEFAULT_MAX_BYTES,
    dry_run: bool = False,
) -> FetchResult:
    """Download dataset `name` into `to_dir/<label>/<basename>` and write `to_dir/manifest.csv`.

    `base_url`: argument, else env `XRAY_SPARK_<NAME>_URL`, else the source's default (http(s) or file://).
    `limit`: fetch only N files, taken round-robin across labels in manifest order so a small sample still
    has every class. A limited fetch never writes `manifest.csv`: the files it verified are listed in
    `manifest.limit.csv` (replaced by each limited fetch), so a full manifest already in `to_dir` stays
    byte-identical and ingest of a folder without one reads the class folders, i.e. every verified file.
    `manifest_path`: a CSV with the source manifest's columns (plus an optional `size` column, bytes), to
    fetch a custom subset (manifest sources only). `max_bytes`: no file may be larger, whatever the manifest
    or server say. `dry_run`: work out what would be fetched (a listing source downloads its listing, nothing
    else), write nothing, and return the counts.
    """
    source = get_source(name)
    base = _check_arguments(source, name, base_url, manifest_path, limit, workers, timeout, max_bytes)
    root = check_target_dir(Path(to_dir))
    pins = read_pins(root) if source.listing else {}
    if source.listing:
        selection, listing_sha = read_listing(source, base, pins, timeout)
        sizes: dict[str, int] = {}
    else:
        selection, listing_sha = Selection(load_manifest(source, manifest_path), Counter()), ""
        sizes = _manifest_sizes(source, manifest_path)
    rows, left_out = selection.rows, Counter(selection.left_out)
    if limit is not None:
        rows = _balanced_head(rows, limit)
        if len(rows) < len(selection.rows):
            left_out[f"over --limit {limit}"] = len(selection.rows) - len(rows)
    result = FetchResult(name=name, to_dir=root, base_url=base, kept=Counter(r.label for r in rows),
                         left_out=left_out, dry_run=dry_run)
    if dry_run:
        log.info("dry run: %d file(s) of %s would be fetched from %s into %s", len(rows), name, base, root)
        return result
    _make_dir(root)
    if source.listing and source.listing not in pins:
        record_pins(root, {source.listing: listing_sha})  # trusted on first download, like every file

    log.info("fetching %d file(s) of %s from %s into %s", len(rows), name, base, root)
    jobs = {r.path: _Job(file_url(base, r.path), root / local_rel(r), r.sha256, sizes.get(r.path), max_bytes)
            for r in rows}
    outcomes = _run_all(jobs, workers=workers, timeout=timeout, progress=progress)
    present, first_seen = _tally(result, rows, outcomes, base)
    record_pins(root, first_seen)
    return finish(result, root, present, MANIFEST_NAME if limit is None else LIMIT_MANIFEST_NAME)


def _check_arguments(source: DatasetSource, name: str, base_url: str | None, manifest_path: str | Path | None,
                     limit: int | None, workers: int, timeout: float, max_bytes: int) -> str:
    """Every argument of `fetch_dataset` checked (one clear UserError) before anything is read or written;
    returns the base URL to download from."""
    if source.access == "import":
        raise UserError(f"{name} cannot be downloaded here (it is behind a login): download it from "
                        f"{source.homepage}, unzip it, and run: xray-spark fetch {name} --from DIR --to DIR")
    if manifest_path is not None and source.listing:
        raise UserError(f"{name} is listed by its {source.listing}, not by a manifest; manifest_path "
                        "does not apply")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise UserError(f"limit must be a positive integer, got {limit!r}")
    if workers < 1:
        raise UserError(f"workers must be >= 1, got {workers!r}")
    if timeout <= 0:
        raise UserError(f"timeout must be > 0 seconds, got {timeout!r}")
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise UserError(f"max_bytes must be a positive integer, got {max_bytes!r}")
    base = base_url or os.environ.get(source.env_var) or source.base_url
    if not base.startswith(("http://", "https://", "file://")):
        raise UserError(f"base URL must start with http://, https:// or file://, got {base!r}")
    return base


def _tally(result: FetchResult, rows: list[ManifestRow], outcomes: dict[str, _Outcome], base: str
           ) -> tuple[list[ManifestRow], dict[str, str]]:
    """Each row's download outcome into `result` (failed, skipped, downloaded, resumed); returns the rows
    now present (with the sha256 of files the source lists without one) and those first-seen digests."""
    present: list[ManifestRow] = []
    first_seen: dict[str, str] = {}
    for row in rows:
        rel, out = local_rel(row), outcomes[row.path]
        if out.status == "failed":
            result.failed.append(FetchFailure(rel, file_url(base, row.path), out.reason))
            continue
        if not row.sha256:
            first_seen[row.path] = out.sha256
            row = replace(row, sha256=out.sha256)
        present.append(row)
        if out.status == "skipped":
            result.skipped_existing.append(rel)
        else:
            result.downloaded.append(rel)
            result.bytes_downloaded += out.nbytes
            if out.resumed:
                result.resumed.append(rel)
    return present, first_seen


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


def _manifest_sizes(source: DatasetSource, manifest_path: str | Path | None) -> dict[str, int]:
    """The manifest's optional `size` column (bytes) by path; {} without one (the built-in manifests carry
    only sha256, so there `max_bytes` and the server's declared length bound a download)."""
    if manifest_path is None:
        text, where = read_manifest_text(source), f"package manifest {source.manifest}"
    else:
        text, where = Path(manifest_path).read_text(encoding="utf-8"), str(manifest_path)
    reader = csv.DictReader(io.StringIO(text))
    if "size" not in (reader.fieldnames or []):
        return {}
    sizes: dict[str, int] = {}
    for line, rec in enumerate(reader, start=2):
        raw = (rec.get("size") or "").strip()
        if raw and not (raw.isascii() and raw.isdigit()):
            raise UserError(f"{where}:{line}: size must be a whole number of bytes, got {raw!r}")
        if raw:
            sizes[(rec.get("path") or "").strip().replace("\\", "/")] = int(raw)
    return sizes


def check_target_dir(root: Path) -> Path:
    """`--to` as an absolute path; a file there is the user's to fix. Nothing is created (a dry run)."""
    if root.exists() and not root.is_dir():
        raise UserError(f"--to must be a folder, but {root} is a file")
    return root.resolve()


def _make_dir(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {root}: {e.strerror or e}") from None


def _run_all(jobs: dict[str, _Job], *, workers: int, timeout: float, progress: bool) -> dict[str, _Outcome]:
    """Fetch jobs (by manifest path) on a thread pool (I/O bound); progress is updated from this thread
    only."""
    outcomes: dict[str, _Outcome] = {}
    total_bytes = 0
    bar = tqdm(total=len(jobs), unit="file", desc="fetch", disable=not progress, leave=True)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="xray-fetch")
    try:
        futures = {pool.submit(_fetch_one, job, timeout): key for key, job in jobs.items()}
        for fut in as_completed(futures):
            key = futures[fut]
            try:
                out = fut.result()
            except Exception as e:  # a bug or an OS error we did not foresee: still per-file, never fatal
                log.exception("unexpected error fetching %s", key)
                out = _Outcome("failed", reason=f"{type(e).__name__}: {e}")
            outcomes[key] = out
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


def _fetch_one(job: _Job, timeout: float) -> _Outcome:
    """Skip a verified file, else download to its hidden partial (resuming), verify, rename. Retries once.

    Without a known sha256 (trust on first download) nothing local is trusted: a file or partial already
    there is replaced by a whole fresh download, whose hash the outcome carries to be pinned."""
    url, dest, sha256 = job.url, job.dest, job.sha256
    if job.size is not None and job.size > job.max_bytes:
        return _Outcome("failed", reason=f"manifest size {job.size} is over the {job.max_bytes}-byte cap")
    part = partial_path(dest)
    _adopt_legacy_partial(dest, part)  # first: a visible old partial must not outlive this run
    if not sha256:
        part.unlink(missing_ok=True)  # a prefix from an unverified earlier attempt: not resumed
    if sha256 and dest.is_file():
        if sha256_file(dest) == sha256:
            log.debug("present and verified: %s", dest)
            return _Outcome("skipped", sha256=sha256)
        log.warning("%s exists with a different sha256; downloading it again", dest)
    if sha256 and part.is_file() and sha256_file(part) == sha256:  # finished, but the rename was interrupted
        os.replace(part, dest)
        return _Outcome("downloaded", resumed=True, sha256=sha256)
    reason = ""
    for attempt in (1, 2):
        try:
            nbytes, resumed, digest = _download(job, part, timeout)
        except _PermanentError as e:
            return _Outcome("failed", reason=str(e))
        except _SizeError as e:  # retried: a short read resumes from the partial, an oversize one restarts
            reason = str(e)
            log.info("attempt %d for %s: %s", attempt, url, reason)
            continue
        except (URLError, OSError, http.client.HTTPException) as e:
            reason = _describe(e)
            log.info("attempt %d for %s failed: %s", attempt, url, reason)
            if attempt == 1:
                time.sleep(_RETRY_DELAY)  # a transient network error deserves a moment before the retry
            continue
        if not sha256 or digest == sha256:
            os.replace(part, dest)
            log.debug("%s %s (%d bytes, resumed=%s)", "verified" if sha256 else "first download of", dest,
                      nbytes, resumed)
            return _Outcome("downloaded", nbytes=nbytes, resumed=resumed, sha256=digest)
        part.unlink(missing_ok=True)
        reason = f"sha256 mismatch: expected {sha256[:12]}..., got {digest[:12]}..."
        log.info("attempt %d for %s: %s", attempt, url, reason)
    return _Outcome("failed", reason=reason)


def _adopt_legacy_partial(dest: Path, part: Path) -> None:
    """Older versions downloaded to a visible `<file>.part`, which ingest reads as an image: move it to the
    hidden name (to resume from), or drop it when a hidden partial already exists."""
    legacy = dest.with_name(dest.name + PARTIAL_SUFFIX)
    if not legacy.is_file():
        return
    if part.exists():
        legacy.unlink()
    else:
        os.replace(legacy, part)


def _download(job: _Job, part: Path, timeout: float) -> tuple[int, bool, str]:
    """Stream `job.url` into `part`, appending via Range when `part` already holds a prefix; raise
    `_SizeError` as soon as the file passes its size limit, or when it ends short of the size it should have.

    Returns (bytes received in this call, whether it resumed, sha256 of the whole `part`).
    """
    url = job.url
    offset = part.stat().st_size if part.is_file() else 0
    if offset > (job.size if job.size is not None else job.max_bytes):
        part.unlink()  # longer than the file can be: not a prefix of it
        offset = 0
    req = Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    try:
        resp = urlopen(req, timeout=timeout)
    except HTTPError as e:
        e.close()
        if e.code == 416 and offset:  # our prefix is not a prefix of theirs: start over
            part.unlink(missing_ok=True)
            return _download(job, part, timeout)
        if 400 <= e.code < 500 and e.code not in (408, 429):
            raise _PermanentError(f"HTTP {e.code} {e.reason}") from None
        raise
    with resp:
        status = getattr(resp, "status", None) or 200  # file:// answers have no status
        resumed = bool(offset) and status == 206 and _range_start(resp.headers.get("Content-Range")) == offset
        start = offset if resumed else 0
        declared = _declared_size(resp.headers, resumed)
        expected, limit, why = _size_limits(job, declared)
        if declared is not None and declared > limit:  # not worth a byte
            part.unlink(missing_ok=True)
            raise _SizeError(f"larger than expected: the server declares {declared} bytes, more than {why}")
        h = hashlib.sha256()
        if resumed:
            hash_into(h, part)
            log.debug("resuming %s at byte %d", url, offset)
        elif offset:
            log.debug("server ignored Range for %s; downloading it whole", url)
        part.parent.mkdir(parents=True, exist_ok=True)  # only now: a failed run leaves no empty class folders
        total = _stream(resp, part, h, start=start, limit=limit, append=resumed)
    if total > limit:
        part.unlink(missing_ok=True)
        raise _SizeError(f"larger than expected: passed {why}; download aborted")
    if expected is not None and total < expected:
        raise _SizeError(f"short download: got {total} of {expected} bytes")
    return total - start, resumed, h.hexdigest()


def _stream(resp: IO[bytes], part: Path, h: hashlib._Hash, *, start: int, limit: int, append: bool) -> int:
    """Copy `resp` into `part` until it ends or the file would pass `limit` bytes (that chunk is not
    written); returns the file's size so far, which exceeds `limit` only when the stream was cut off."""
    total = start
    with open(part, "ab" if append else "wb") as f:
        while chunk := resp.read(_CHUNK):
            total += len(chunk)
            if total > limit:
                break
            f.write(chunk)
            h.update(chunk)
    return total


def _declared_size(headers: Message, resumed: bool) -> int | None:
    """The whole file's size as the server states it: Content-Range's total when resuming, else
    Content-Length; None when it does not say (chunked or close-delimited answers)."""
    if resumed:
        m = _CONTENT_RANGE.match(headers.get("Content-Range") or "")
        if not m:
            return None
        return int(m.group(3)) if m.group(3) != "*" else int(m.group(2)) + 1
    length = (headers.get("Content-Length") or "").strip()
    return int(length) if length.isascii() and length.isdigit() else None


def _size_limits(job: _Job, declared: int | None) -> tuple[int | None, int, str]:
    """(size the file should have, size it must not pass, that limit in words). The manifest's size wins
    over the server's: a mirror serving another file must not move the bar."""
    if job.size is not None:
        return job.size, job.size, f"the manifest's {job.size} bytes"
    if declared is not None and declared <= job.max_bytes:
        return declared, declared, f"the {declared} bytes the server declared"
    return declared, job.max_bytes, f"the {job.max_bytes}-byte cap (max_bytes)"


def _range_start(content_range: str | None) -> int | None:
    m = _CONTENT_RANGE.match(content_range or "")
    return int(m.group(1)) if m else None


def _describe(e: BaseException) -> str:
    if isinstance(e, HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, URLError):
        return f"cannot reach server: {e.reason}"
    return f"{type(e).__name__}: {e}"
