"""data/local_files.py: the byte-exact walk behind every listing of a local folder, without Spark."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from xray_spark.data import local_files
from xray_spark.data.local_files import UNDECODABLE, read_file, skipped_by_spark, special_file_reason, walk


def odd_folder(root: Path, image: Path) -> dict[str, str | None]:
    """A folder of every kind of name and file a scanner export or a careless copy leaves; returns each
    relative path and the problem expected for it (None: a readable file)."""
    (root / "covid" / "_sub").mkdir(parents=True)
    (root / ".git").mkdir()
    names = ["2020-03-01T10:22:33.png", "scan:01.png", "ünïcödé.png", "_scan.png", "new\nline.png",
             "tab\there.png", "back\\slash.png", "q?.png", "star*.png", "_sub/inner.png", "plain.png"]
    for name in names:
        shutil.copy(image, root / "covid" / name)
    (root / "covid" / "empty.png").write_bytes(b"")
    os.mkfifo(root / "covid" / "fifo.png")
    os.symlink("loop.png", root / "covid" / "loop.png")
    os.symlink("nowhere.png", root / "covid" / "dangling.png")
    os.symlink("plain.png", root / "covid" / "link.png")  # a link to a regular file is that file
    for clutter in (".DS_Store", "._plain.png"):
        (root / "covid" / clutter).write_bytes(b"\0\1")
    (root / ".git" / "HEAD").write_text("ref")
    expected: dict[str, str | None] = {f"covid/{n}": None for n in [*names, "empty.png", "link.png"]}
    expected.update({"covid/fifo.png": "not_a_regular_file", "covid/loop.png": "symlink_loop",
                     "covid/dangling.png": "dangling_symlink"})
    return expected


def test_walk_counts_every_file_names_special_ones_and_skips_dot_clutter(ozturk_dir: Path,
                                                                         tmp_path: Path) -> None:
    image = next((ozturk_dir / "covid").iterdir())
    expected = odd_folder(tmp_path, image)
    got = walk(tmp_path, keep=lambda e: True)
    assert got.files == len(expected) and got.clutter == 3 and not got.truncated
    by_rel = {e.rel: e for e in got.kept}
    assert set(by_rel) == set(expected)
    for rel, problem in expected.items():
        e = by_rel[rel]
        assert (e.problem or "").split(":")[0] == (problem or ""), (rel, e)
    assert by_rel["covid/plain.png"].length == by_rel["covid/link.png"].length == image.stat().st_size
    assert by_rel["covid/empty.png"].length == 0 and by_rel["covid/fifo.png"].length == 0


def test_spark_rule_keeps_what_binaryfile_skips(ozturk_dir: Path, tmp_path: Path) -> None:
    """What Spark's listing leaves out: `_` at any level, empty and special files; non-ASCII names only when
    the JVM cannot represent them."""
    odd_folder(tmp_path, next((ozturk_dir / "covid").iterdir()))
    utf8 = {e.rel for e in walk(tmp_path, skipped_by_spark(names_utf8=True)).kept}
    assert utf8 == {"covid/_scan.png", "covid/_sub/inner.png", "covid/empty.png", "covid/fifo.png",
                    "covid/loop.png", "covid/dangling.png"}
    ascii_only = {e.rel for e in walk(tmp_path, skipped_by_spark(names_utf8=False)).kept}
    assert ascii_only == utf8 | {"covid/ünïcödé.png"}
    limited = walk(tmp_path, skipped_by_spark(names_utf8=True), limit=2)
    assert len(limited.kept) == 2 and limited.truncated and limited.files == 16


def test_a_name_that_is_not_utf8_is_named_not_dropped(tmp_path: Path) -> None:
    raw = os.fsencode(tmp_path) + b"/scan\xff.png"
    with open(raw, "wb") as fh:
        fh.write(b"\x89PNG")
    (entry,) = walk(tmp_path, keep=lambda e: True).kept
    assert entry.rel == "scan\\xff.png" and entry.problem == UNDECODABLE and entry.length == 4


def test_read_file_refuses_special_files_without_opening_them(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.png")  # opening a FIFO for reading would block this test forever
    os.symlink("loop.png", tmp_path / "loop.png")
    with pytest.raises(OSError, match="^not_a_regular_file"):
        read_file(str(tmp_path / "fifo.png"), 100)
    with pytest.raises(OSError, match="^symlink_loop"):
        read_file(str(tmp_path / "loop.png"), 100)
    (tmp_path / "grew.png").write_bytes(b"x" * 11)
    with pytest.raises(ValueError, match="^file_too_large"):
        read_file(str(tmp_path / "grew.png"), 10)
    assert read_file(str(tmp_path / "grew.png"), 11) == b"x" * 11
    assert special_file_reason(tmp_path / "grew.png") is None
    assert local_files.printable("plain") == "plain"
