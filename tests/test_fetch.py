"""fetch_dataset against a real local HTTP server laid out like the GitHub folder, serving real originals."""

from __future__ import annotations

import csv
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from http_fixtures import RangeHandler, serve_dir
from xray_spark.data.fetch import LIMIT_MANIFEST_NAME, fetch_dataset, partial_path
from xray_spark.data.sources import (
    MANIFEST_COLUMNS,
    SOURCES,
    file_url,
    get_source,
    load_manifest,
    parse_manifest,
)
from xray_spark.errors import UserError

REPO = Path(__file__).resolve().parents[1]
REPO_MANIFEST = REPO / "data" / "manifests" / "ozturk2020.csv"
PKG_MANIFEST = REPO / "src" / "xray_spark" / "data" / "manifests" / "ozturk2020.csv"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- a real HTTP server (http_fixtures.py)


@dataclass
class Served:
    root: Path
    url: str
    server: ThreadingHTTPServer
    rows: list[dict[str, str]] = field(default_factory=list)  # ozturk2020.csv rows we can serve

    @property
    def requests(self) -> list[tuple[str, str | None]]:
        return self.server.requests

    def answer(self, row: dict[str, str], handler: Callable[[RangeHandler], None]) -> None:
        """Serve `row`'s file with `handler` instead of the normal file answer."""
        self.server.special[f"/X-Ray Image DataSet/{row['path']}"] = handler


@pytest.fixture(scope="module")
def servable_rows(raw_sample_dir: Path) -> list[tuple[dict[str, str], Path]]:
    """ozturk2020.csv rows whose original bytes we hold in raw-sample (matched by sha256)."""
    local = {r["sha256"]: raw_sample_dir / r["path"] for r in _read_csv(raw_sample_dir / "manifest.csv")}
    out = [(r, local[r["sha256"]]) for r in _read_csv(REPO_MANIFEST) if r["sha256"] in local]
    assert len(out) == 60, "every raw-sample original should appear in the ozturk2020 manifest"
    return out


@pytest.fixture
def served(tmp_path: Path, servable_rows: list[tuple[dict[str, str], Path]]) -> Iterator[Served]:
    """A directory laid out like 'X-Ray Image DataSet' (symlinks to the originals) behind a real server."""
    root = tmp_path / "X-Ray Image DataSet"
    for row, src in servable_rows:
        dst = root / row["path"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(src)
    with serve_dir(tmp_path) as (server, base):
        yield Served(root=root, url=f"{base}X-Ray%20Image%20DataSet/", server=server,
                     rows=[r for r, _ in servable_rows])


def _subset_manifest(tmp_path: Path, rows: list[dict[str, str]], per_label: int) -> Path:
    """A manifest with the first `per_label` servable rows of each label (real paths and hashes)."""
    taken: dict[str, int] = {}
    chosen = []
    for r in rows:
        if taken.get(r["label"], 0) < per_label:
            taken[r["label"]] = taken.get(r["label"], 0) + 1
            chosen.append(r)
    path = tmp_path / "subset.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(MANIFEST_COLUMNS))
        w.writeheader()
        w.writerows(chosen)
    return path


def _local(row: dict[str, str]) -> str:
    return f"{row['label']}/{row['path'].rsplit('/', 1)[-1]}"


def _hidden_part(out: Path, row: dict[str, str]) -> Path:
    return out / row["label"] / f".{row['path'].rsplit('/', 1)[-1]}.part"


def _visible_files(root: Path) -> set[str]:
    """What a folder reader that skips `.`/`_` names (Spark's binaryFile, ingest) lists under `root`."""
    out = set()
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith((".", "_"))]
        rel = Path(dirpath).relative_to(root)
        out |= {(rel / f).as_posix() for f in files if not f.startswith((".", "_"))}
    return out


def _write_manifest(path: Path, rows: list[dict[str, str]], sizes: dict[str, int] | None = None) -> Path:
    """A source-format manifest of `rows`, with a `size` column when `sizes` (by manifest path) is given."""
    fields = list(MANIFEST_COLUMNS) + (["size"] if sizes is not None else [])
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({**r, **({"size": sizes.get(r["path"], "")} if sizes is not None else {})})
    return path


def _reconciles(res, n_rows: int) -> bool:
    return len(res.downloaded) + len(res.skipped_existing) + len(res.failed) == n_rows


# ---------------------------------------------------------------- downloads


def test_fresh_download_verifies_and_writes_class_folders_and_manifest(
    served: Served, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    all60 = tmp_path / "all.csv"
    with open(all60, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(MANIFEST_COLUMNS))
        w.writeheader()
        w.writerows(served.rows)

    res = fetch_dataset("ozturk2020", out, base_url=served.url, manifest_path=all60, progress=False)

    assert res.ok and not res.failed and not res.skipped_existing
    assert len(res.downloaded) == 60 and len(served.requests) == 60
    assert {p.name for p in out.iterdir()} == {"covid", "no_findings", "pneumonia", "manifest.csv",
                                                "selection.json"}
    assert not list(out.rglob("*.part"))
    for row in served.rows:
        assert _sha(out / _local(row)) == row["sha256"]
    written = _read_csv(out / "manifest.csv")
    assert list(written[0]) == ["path", "label", "source", "patient_id", "sha256"]
    assert [w["path"] for w in written] == [_local(r) for r in served.rows]
    assert all((out / w["path"]).is_file() and w["source"] == "ozturk2020" for w in written)
    nih = [w for w in written if w["label"] != "covid"]
    assert nih and all(w["patient_id"].startswith("nih-") for w in nih)
    assert res.bytes_downloaded == sum((out / w["path"]).stat().st_size for w in written)


def test_second_run_makes_no_requests(served: Served, tmp_path: Path) -> None:
    manifest = _subset_manifest(tmp_path, served.rows, per_label=2)
    out = tmp_path / "out"
    first = fetch_dataset("ozturk2020", out, base_url=served.url, manifest_path=manifest, progress=False)
    assert len(first.downloaded) == 6 and len(served.requests) == 6

    second = fetch_dataset("ozturk2020", out, base_url=served.url, manifest_path=manifest, progress=False)
    assert second.downloaded == [] and second.failed == []
    assert sorted(second.skipped_existing) == sorted(first.downloaded)
    assert len(served.requests) == 6, "verified files must be skipped without a request"
    assert second.manifest_path is not None and len(_read_csv(second.manifest_path)) == 6


def test_corrupted_file_is_refused_retried_once_and_reported(served: Served, tmp_path: Path) -> None:
    manifest = _subset_manifest(tmp_path, served.rows, per_label=1)
    bad = _read_csv(manifest)[1]
    victim = served.root / bad["path"]
    good_bytes = victim.read_bytes()
    victim.unlink()
    victim.write_bytes(good_bytes[:-10] + b"corrupted!")  # same length, wrong bytes
    out = tmp_path / "out"

    res = fetch_dataset("ozturk2020", out, base_url=served.url, manifest_path=manifest, progress=False)

    assert not res.ok and len(res.downloaded) == 2
    assert [f.path for f in res.failed] == [_local(bad)]
    assert "sha256 mismatch" in res.failed[0].reason
    assert not (out / _local(bad)).exists() and not list(out.rglob("*.part"))
    assert sum(1 for p, _ in served.requests if p.endswith(bad["path"])) == 2  # one retry, then give up
    assert _local(bad) not in {w["path"] for w in _read_csv(out / "manifest.csv")}


def test_resume_from_half_written_part_uses_range(served: Served, tmp_path: Path) -> None:
    manifest = _subset_manifest(tmp_path, served.rows, per_label=1)
    row = _read_csv(manifest)[0]
    data = (served.root / row["path"]).read_bytes()
    out = tmp_path / "out"
    part = _hidden_part(out, row)
    part.parent.mkdir(parents=True)
    half = len(data) // 2
    part.write_bytes(data[:half])

    res = fetch_dataset("ozturk2020", out, base_url=served.url, manifest_path=manifest, progress=False)

    assert res.ok and _local(row) in res.resumed
    assert _sha(out / _local(row)) == row["sha256"] and not part.exists()
    ranged = [(p, r) for p, r in served.requests if p.endswith(row["path"])]
    assert ranged == [(f"/X-Ray Image DataSet/{row['path']}", f"bytes={half}-")]
    others = sum((out / _local(r)).stat().st_size for r in _read_csv(manifest)[1:])
    assert res.bytes_downloaded == others + len(data) - half


def test_resume_falls_back_to_full_download_without_range_support(served: Served, tmp_path: Path) -> None:
    served.server.support_range = False
    manifest = _subset_manifest(tmp_path, served.rows, per_label=1)
    row = _read_csv(manifest)[2]
    data = (served.root / row["path"]).read_bytes()
    out = tmp_path / "out"
    part = _hidden_part(out, row)
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:1000])

    res = fetch_dataset("ozturk2020", out, base_url=served.url, manifest_path=manifest, progress=False)

    assert res.ok and res.resumed == []
    assert _sha(out / _local(row)) == row["sha256"]


def test_garbage_part_is_discarded_and_redownloaded(served: Served, tmp_path: Path) -> None:
    manifest = _subset_manifest(tmp_path, served.rows, per_label=1)
    row = _read_csv(manifest)[0]
    out = tmp_path / "out"
    part = _hidden_part(out, row)
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\0" * 5000)  # not a prefix of the real file: the resumed result fails its hash

    res = fetch_dataset("ozturk2020", out, base_url=served.url, manifest_path=manifest, progress=False)

    assert res.ok and _sha(out / _local(row)) == row["sha256"]
    hits = [r for p, r in served.requests if p.endswith(row["path"])]
    assert hits == ["bytes=5000-", None]


def test_missing_file_on_server_is_a_failure_not_an_exception(served: Served, tmp_path: Path) -> None:
    manifest = _subset_manifest(tmp_path, served.rows, per_label=1)
    gone = _read_csv(manifest)[0]
    (served.root / gone["path"]).unlink()

    res = fetch_dataset(
        "ozturk2020", tmp_path / "out", base_url=served.url, manifest_path=manifest, progress=False
    )

    assert [f.path for f in res.failed] == [_local(gone)] and "404" in res.failed[0].reason
    assert len(res.downloaded) == 2


def test_env_var_base_url_and_balanced_limit(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XRAY_SPARK_OZTURK2020_URL", served.url)
    all_rows = tmp_path / "all.csv"
    with open(all_rows, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(MANIFEST_COLUMNS))
        w.writeheader()
        w.writerows(served.rows)

    res = fetch_dataset("ozturk2020", tmp_path / "out", limit=4, manifest_path=all_rows, progress=False)

    assert res.ok and res.base_url == served.url
    labels = sorted(p.split("/")[0] for p in res.downloaded)
    assert labels == ["covid", "covid", "no_findings", "pneumonia"]  # round-robin over labels
    assert res.manifest_path == tmp_path / "out" / LIMIT_MANIFEST_NAME
    assert not (tmp_path / "out" / "manifest.csv").exists(), "a limited fetch never writes manifest.csv"
    assert sorted(w["path"] for w in _read_csv(res.manifest_path)) == sorted(res.downloaded)


def test_file_url_base_works(served: Served, tmp_path: Path) -> None:
    manifest = _subset_manifest(tmp_path, served.rows, per_label=1)
    res = fetch_dataset(
        "ozturk2020", tmp_path / "out", base_url=served.root.as_uri(), manifest_path=manifest, progress=False
    )
    assert res.ok and len(res.downloaded) == 3 and served.requests == []


# ---------------------------------------------------------------- partials, sizes and --limit


def _largest(rows: list[dict[str, str]], root: Path) -> dict[str, str]:
    return max(rows, key=lambda r: (root / r["path"]).stat().st_size)


def test_partial_is_hidden_from_folder_readers_mid_download(served: Served, tmp_path: Path) -> None:
    row = _largest(served.rows, served.root)
    data = (served.root / row["path"]).read_bytes()
    release = threading.Event()

    def stall_halfway(h: RangeHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data[: len(data) // 2])
        release.wait(timeout=30)
        h.wfile.write(data[len(data) // 2 :])

    served.answer(row, stall_halfway)
    manifest = _write_manifest(tmp_path / "one.csv", [row])
    out = tmp_path / "out"
    part = _hidden_part(out, row)
    results = []
    worker = threading.Thread(target=lambda: results.append(fetch_dataset(
        "ozturk2020", out, base_url=served.url, manifest_path=manifest, progress=False)))
    worker.start()
    try:
        deadline = time.monotonic() + 20
        while not (part.is_file() and part.stat().st_size > 0) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert part.is_file() and part.stat().st_size > 0, "the download should be under way"
        assert partial_path(out / _local(row)) == part
        on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*")}
        assert on_disk == {row["label"], f"{row['label']}/{part.name}"}  # the partial sits next to its file
        assert _visible_files(out) == set(), "a half-written image must be invisible to folder readers"
    finally:
        release.set()
        worker.join(timeout=30)
    assert results and results[0].ok and results[0].downloaded == [_local(row)]
    assert _visible_files(out) == {_local(row), "manifest.csv", "selection.json"} and not part.exists()
    assert _sha(out / _local(row)) == row["sha256"]


def test_oversize_stream_is_cut_off_as_it_passes_the_manifest_size(served: Served, tmp_path: Path) -> None:
    manifest_rows = _read_csv(_subset_manifest(tmp_path, served.rows, per_label=1))
    bad = manifest_rows[1]
    size = (served.root / bad["path"]).stat().st_size
    endless, sent = 1 << 30, []

    def endless_stream(h: RangeHandler) -> None:  # no Content-Length: only the client can stop it
        h.send_response(200)
        h.end_headers()
        n = 0
        try:
            while n < endless:
                h.wfile.write(b"\0" * (1 << 16))
                n += 1 << 16
        except OSError:
            pass
        sent.append(n)

    served.answer(bad, endless_stream)
    sizes = {r["path"]: (served.root / r["path"]).stat().st_size for r in manifest_rows}
    manifest = _write_manifest(tmp_path / "sized.csv", manifest_rows, sizes)
    out = tmp_path / "out"

    res = fetch_dataset("ozturk2020", out, base_url=served.url, manifest_path=manifest, progress=False)

    assert _reconciles(res, 3) and len(res.downloaded) == 2
    assert [f.path for f in res.failed] == [_local(bad)]
    assert "larger than expected" in res.failed[0].reason and f"{size} bytes" in res.failed[0].reason
    assert len(sent) == 2 and max(sent) < 64 << 20, "the response must be cut off while streaming"
    assert not (out / _local(bad)).exists() and not _hidden_part(out, bad).exists()
    assert _local(bad) not in {w["path"] for w in _read_csv(out / "manifest.csv")}


@pytest.mark.parametrize("where", ["manifest", "max_bytes"])
def test_file_larger_than_expected_fails_with_a_reason(served: Served, tmp_path: Path, where: str) -> None:
    manifest_rows = _read_csv(_subset_manifest(tmp_path, served.rows, per_label=1))
    bad = manifest_rows[0]
    size = (served.root / bad["path"]).stat().st_size
    if where == "manifest":  # the mirror serves a bigger file than the manifest describes
        manifest = _write_manifest(tmp_path / "sized.csv", manifest_rows, {bad["path"]: size - 100})
        cap = 1 << 30
    else:
        manifest, cap = _write_manifest(tmp_path / "plain.csv", manifest_rows), size - 100
    out = tmp_path / "out"

    res = fetch_dataset("ozturk2020", out, base_url=served.url, manifest_path=manifest, progress=False,
                        max_bytes=cap)

    assert _reconciles(res, 3) and _local(bad) in {f.path for f in res.failed}
    reason = next(f.reason for f in res.failed if f.path == _local(bad))
    assert "larger than expected" in reason and str(size - 100) in reason
    assert f"the server declares {size} bytes" in reason, "refused from its Content-Length, before any body"
    assert not (out / _local(bad)).exists() and not _hidden_part(out, bad).exists()


def test_manifest_size_over_the_cap_fails_without_a_request(served: Served, tmp_path: Path) -> None:
    manifest_rows = _read_csv(_subset_manifest(tmp_path, served.rows, per_label=1))
    sizes = {r["path"]: (served.root / r["path"]).stat().st_size for r in manifest_rows}
    manifest = _write_manifest(tmp_path / "sized.csv", manifest_rows, sizes)
    cap = min(sizes.values())

    res = fetch_dataset("ozturk2020", tmp_path / "out", base_url=served.url, manifest_path=manifest,
                        progress=False, max_bytes=cap)

    assert _reconciles(res, 3) and len(res.downloaded) == 1 and len(res.failed) == 2
    assert all("-byte cap" in f.reason and "manifest size" in f.reason for f in res.failed)
    assert len(served.requests) == 1


def test_short_response_fails_and_keeps_only_a_hidden_partial(served: Served, tmp_path: Path) -> None:
    manifest_rows = _read_csv(_subset_manifest(tmp_path, served.rows, per_label=1))
    bad = manifest_rows[2]
    data = (served.root / bad["path"]).read_bytes()

    def truncated(h: RangeHandler) -> None:  # promises the whole file, sends half, hangs up
        h.send_response(200)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data[: len(data) // 2])
        h.close_connection = True

    served.answer(bad, truncated)
    out = tmp_path / "out"
    manifest = _write_manifest(tmp_path / "plain.csv", manifest_rows)

    res = fetch_dataset("ozturk2020", out, base_url=served.url, manifest_path=manifest, progress=False)

    assert _reconciles(res, 3) and len(res.downloaded) == 2
    assert [f.path for f in res.failed] == [_local(bad)]
    assert res.failed[0].reason == f"short download: got {len(data) // 2} of {len(data)} bytes"
    hits = [r for p, r in served.requests if p.endswith(bad["path"])]
    assert hits == [None, f"bytes={len(data) // 2}-"], "retried once, resuming from the partial"
    assert not (out / _local(bad)).exists()
    assert _hidden_part(out, bad).read_bytes() == data[: len(data) // 2]  # kept to resume from, hidden
    assert _local(bad) not in _visible_files(out)


def test_limit_leaves_an_existing_full_manifest_byte_identical(served: Served, tmp_path: Path) -> None:
    manifest = _subset_manifest(tmp_path, served.rows, per_label=2)
    out = tmp_path / "out"
    full = fetch_dataset("ozturk2020", out, base_url=served.url, manifest_path=manifest, progress=False)
    assert full.ok and full.manifest_path == out / "manifest.csv"
    before = (out / "manifest.csv").read_bytes()
    stamp = (out / "manifest.csv").stat().st_mtime_ns

    res = fetch_dataset("ozturk2020", out, base_url=served.url, manifest_path=manifest, limit=3,
                        progress=False)

    assert res.ok and len(res.skipped_existing) == 3 and len(served.requests) == 6
    assert (out / "manifest.csv").read_bytes() == before
    assert (out / "manifest.csv").stat().st_mtime_ns == stamp, "not even rewritten with the same bytes"
    assert len(_read_csv(out / "manifest.csv")) == 6
    assert res.manifest_path == out / LIMIT_MANIFEST_NAME
    assert sorted(w["path"] for w in _read_csv(res.manifest_path)) == sorted(res.skipped_existing)


def test_partial_from_an_older_version_is_hidden_and_resumed(served: Served, tmp_path: Path) -> None:
    manifest = _subset_manifest(tmp_path, served.rows, per_label=1)
    row = _read_csv(manifest)[0]
    data = (served.root / row["path"]).read_bytes()
    out = tmp_path / "out"
    legacy = out / (_local(row) + ".part")  # visible to ingest: the old layout
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(data[:1000])

    res = fetch_dataset("ozturk2020", out, base_url=served.url, manifest_path=manifest, progress=False)

    assert res.ok and _local(row) in res.resumed and not legacy.exists()
    assert ("/X-Ray Image DataSet/" + row["path"], "bytes=1000-") in served.requests
    assert _sha(out / _local(row)) == row["sha256"]


def test_bad_size_column_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "m.csv"
    bad.write_text("path,label,sha256,size\nCovid-19/x.png,covid," + "a" * 64 + ",12kB\n")
    with pytest.raises(UserError, match=r"m\.csv:2: size must be a whole number of bytes"):
        fetch_dataset("ozturk2020", tmp_path / "out", manifest_path=bad, progress=False)


# ---------------------------------------------------------------- registry and manifest


def test_unknown_dataset_name_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="ozturk2020"):
        get_source("chexpert-typo")
    with pytest.raises(UserError, match="unknown dataset 'nope'"):
        fetch_dataset("nope", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_bad_arguments_are_user_errors(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        fetch_dataset("ozturk2020", tmp_path / "file", progress=False)
    with pytest.raises(UserError, match="limit"):
        fetch_dataset("ozturk2020", tmp_path / "out", limit=0, progress=False)
    with pytest.raises(UserError, match="base URL"):
        fetch_dataset("ozturk2020", tmp_path / "out", base_url="ftp://x/", progress=False)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("../etc/passwd,covid," + "a" * 64, "unsafe"),
        ("Covid-19/x.png,cats," + "a" * 64, "label"),
        ("Covid-19/x.png,covid,abc", "sha256"),
    ],
)
def test_bad_manifest_rows_name_the_line(line: str, message: str) -> None:
    with pytest.raises(UserError, match=rf"m\.csv:2: .*{message}"):
        parse_manifest("path,label,sha256\n" + line + "\n", where="m.csv")


def test_file_url_quotes_each_segment() -> None:
    src = get_source("ozturk2020")
    assert file_url(src.base_url, "Covid-19/a b#1.png") == (
        "https://raw.githubusercontent.com/muhammedtalo/COVID-19/master/X-Ray%20Image%20DataSet/Covid-19/a%20b%231.png"
    )
    assert src.env_var == "XRAY_SPARK_OZTURK2020_URL"
    assert all(s.citation and s.homepage.startswith("https://") for s in SOURCES.values())


def test_package_manifest_is_identical_to_repo_manifest() -> None:
    assert PKG_MANIFEST.read_bytes() == REPO_MANIFEST.read_bytes()
    rows = load_manifest(get_source("ozturk2020"))  # read through importlib.resources
    assert len(rows) == 1124
    counts = {lab: sum(r.label == lab for r in rows) for lab in ("covid", "no_findings", "pneumonia")}
    assert counts == {"covid": 124, "no_findings": 500, "pneumonia": 500}
    prefixes = {r.label: r.path.split("/")[0] for r in rows}
    assert prefixes == {"covid": "Covid-19", "no_findings": "No_findings", "pneumonia": "Pneumonia"}


def test_manifest_matches_shared_ozturk_manifest(ozturk_dir: Path) -> None:
    shared = _read_csv(ozturk_dir / "manifest.csv")
    ours = _read_csv(REPO_MANIFEST)
    assert len(ours) == len(shared) == 1124
    assert list(ours[0]) == list(MANIFEST_COLUMNS)
    by_path = {r["original_name"]: r for r in shared}
    assert set(by_path) == {r["path"] for r in ours}
    for r in ours:
        s = by_path[r["path"]]
        assert (r["sha256"], r["label"], r["patient_id"], r["source"]) == (
            s["original_sha256"],
            s["label"],
            s["patient_id"],
            s["source"],
        )
