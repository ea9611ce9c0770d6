"""Local folders seen by Python, byte for byte: the independent count behind every listing, and the files
Spark's own listing skips or cannot open.

Why: Spark's file sources skip names starting with `_` or `.` and zero-byte files, and a JVM started
under the `C` locale (cron's) cannot even represent a name like `ünïcödé.png`; Hadoop's own count misses
the same files. Python walks a local (or locally mounted) folder with the file system's bytes, so every
file is counted, the ones Spark would not list are named, and special files (FIFOs, sockets, devices,
symlink loops, dangling links) get a reason that says what they are. No Spark here: the callers turn
these entries into rows. Only the entries Spark skips are kept in memory; the rest are only counted.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

UNDECODABLE = "undecodable_name: the file name is not valid UTF-8; rename the file"


@dataclass(frozen=True)
class Entry:
    """One file below a walked folder. `rel` uses `/`; `problem` says why it is not a readable file."""

    rel: str
    length: int
    modified: float | None  # seconds since the epoch (lstat for special files)
    problem: str | None = None


@dataclass
class Walk:
    """What a walk found: every file counted, `.`-prefixed clutter counted apart, the odd ones kept."""

    files: int = 0  # every file below the root, `.`-prefixed names excluded
    clutter: int = 0  # `.`-prefixed names (.DS_Store, ._x.png resource forks, .git/): skipped
    kept: list[Entry] = field(default_factory=list)  # entries `keep` chose (Spark would skip them)
    truncated: bool = False  # more entries matched than the walk's limit


def special_file_reason(path: Path) -> str | None:
    """Why `path` cannot be read as an image file (symlink loop, dangling link, FIFO, socket, device), or
    None for a regular file (a symlink to one included). Never opens the file: opening a FIFO blocks."""
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symlink_loop: the link leads back to itself; it points to no file"
        if os.path.islink(path):
            return "dangling_symlink: the link's target does not exist"
        return f"unreadable: {e.strerror or e}"
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return None
    kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a file")
    return f"not_a_regular_file: {kind}"


def printable(rel: str) -> str:
    """A name with bytes that are not UTF-8 (kept by Python as surrogates), as text Spark can carry."""
    return rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _entry(full: Path, rel: str) -> Entry:
    problem = special_file_reason(full)
    try:
        st = os.stat(full) if problem is None else os.lstat(full)
        length, modified = (st.st_size if problem is None else 0), st.st_mtime
    except OSError:
        length, modified = 0, None
    if problem is None and printable(rel) != rel:
        problem = UNDECODABLE
    return Entry(printable(rel), length, modified, problem)


def walk(root: Path, keep: Callable[[Entry], bool], limit: int = 100_000) -> Walk:
    """Count every file below `root` and keep the entries `keep` selects (at most `limit`).

    Folders are not followed through symlinks (as os.walk); `.`-prefixed names, and everything under a
    `.`-prefixed folder, are clutter: counted apart, never kept."""
    out = Walk()
    for rel, full in _files(root, out):
        entry = _entry(full, rel)
        out.files += 1
        if keep(entry):
            if len(out.kept) >= limit:
                out.truncated = True
                continue
            out.kept.append(entry)
    return out


def _files(root: Path, out: Walk) -> Iterator[tuple[str, Path]]:
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        rel_dir = here.relative_to(root).as_posix()
        prefix = "" if rel_dir == "." else f"{rel_dir}/"
        hidden_dirs = [d for d in dirnames if d.startswith(".")]
        for d in hidden_dirs:
            out.clutter += sum(len(f) for _, _, f in os.walk(here / d))
            dirnames.remove(d)
        for name in sorted(filenames):
            if name.startswith("."):
                out.clutter += 1
                continue
            yield prefix + name, here / name


def skipped_by_spark(names_utf8: bool) -> Callable[[Entry], bool]:
    """The rule for what Spark's binaryFile listing leaves out: `_`-prefixed names (at any level), empty
    and special files, names that are not UTF-8, and, when the JVM cannot represent non-ASCII names (it
    was started under the `C` locale), every name with a non-ASCII character."""

    def keep(e: Entry) -> bool:
        return (e.problem is not None or e.length == 0 or any(p.startswith("_") for p in e.rel.split("/"))
                or (not names_utf8 and not e.rel.isascii()))

    return keep


def read_file(path: str, max_bytes: int) -> bytes:
    """A regular file's bytes (for files Spark's file source cannot read by name). Raises OSError for
    anything else, and ValueError when it grew past `max_bytes` since it was listed."""
    reason = special_file_reason(Path(path))
    if reason is not None:
        raise OSError(reason)
    with open(path, "rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"file_too_large: more than {max_bytes} bytes")
    return data
