"""Files of the OpenVINO IR cache on one machine: a folder per key, published whole, built once.

Why a module of its own: the fp32 IR (engines.py, converted from Keras) and the int8 IR (quantize.py, NNCF on
the fp32 IR) live side by side under `<weights cache>/openvino/<Backbone>/<key digest>/` and are made the same
way: into a temp folder beside the target, renamed into place (a reader sees no IR or a whole one; a rename
onto an existing IR fails instead of mixing files), under a lock file that makes the other Python workers of
the machine wait for the first build instead of repeating it (where the filesystem has no locks they build
too, and the first rename wins).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)

MODEL_XML = "model.xml"


def ir_folder(root: Path, key: dict[str, str]) -> Path:
    """`<root>/<Backbone>/<sha256 of the key, 24 hex>`: one folder per key."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return root / key["backbone"] / digest


def publish_folder(tmp: Path, target: Path) -> bool:
    """Rename `tmp` to `target`; when `target` already holds an IR (a concurrent writer), keep that one."""
    try:
        os.rename(tmp, target)
        return True
    except OSError:
        if (target / MODEL_XML).is_file():
            return False
        raise


@contextlib.contextmanager
def lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes of this machine; none where the filesystem refuses locks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:
            log.debug("no lock on %s: concurrent builds are still safe (atomic rename)", path)
        yield  # closing the file releases the lock


def build_once(target: Path, build: Callable[[Path], None], key: dict[str, str]) -> bool:
    """Make sure `target/model.xml` exists: if not, `build(tmp)` writes a whole IR (and whatever else
    belongs beside it) into a temp folder, which is published as `target` with `key.json`. True when this call
    built it; False when it was there already or another process published first."""
    if (target / MODEL_XML).is_file():
        return False
    with lock(target.parent / f".{target.name}.lock"):
        if (target / MODEL_XML).is_file():  # another worker built it while this one waited
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            build(tmp)
            (tmp / "key.json").write_text(json.dumps(key, indent=1, sort_keys=True))
            return publish_folder(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
