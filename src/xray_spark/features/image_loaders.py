"""sparkdl's `imageLoader`: a user function `file -> numpy array`, named so a saved stage can import it back.

Why: sparkdl stored the loader *function* in a Param, so no stage that had one could be saved (DESIGN.md lists
functions stored in Params as an anti-pattern). Here a Param may hold the callable, as sparkdl's did, but what
is persisted is its importable name `module:qualname`; loading a stage imports it again. What cannot be
imported back — a lambda, a closure, a function defined in `__main__` or a notebook cell — is refused with one
line when the stage is saved (it still runs: Spark pickles the function itself into the tasks).

Calling a loader (`call_loader`): sparkdl handed the loader a local path. Here files are read through Hadoop
(any scheme: `file:`, `dbfs:`, `s3a:`, viewfs...) by Spark on the executors, so the loader gets a local copy's
path: a temporary file named like the original (same extension), which `PIL.Image.open`, `cv2.imread` and
`keras.utils.load_img` all open. It returns one image, `(H, W, C)`, or sparkdl's batch of one `(1, H, W, C)`.
"""

from __future__ import annotations

import importlib
import inspect
import os
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np

from xray_spark.errors import UserError

Loader = Callable[[str], Any]


def to_loader(value: Any) -> Loader | str:
    """The Param's type converter: a callable, or the `module:qualname` of one (what a saved stage holds)."""
    if callable(value):
        return value
    if isinstance(value, str) and ":" in value:
        return value
    raise TypeError(f"imageLoader must be a function (file path -> numpy array) or its importable name "
                    f"'module:qualname', got {value!r}")


def loader_name(loader: Loader | str) -> str:
    """The `module:qualname` that imports `loader` back, or a UserError saying why there is none."""
    if isinstance(loader, str):
        import_loader(loader)  # a name that does not import now would fail the load later: refuse it now
        return loader
    module = getattr(loader, "__module__", None)
    qualname = getattr(loader, "__qualname__", None) or getattr(loader, "__name__", None)
    why = None
    if not module or not qualname:
        why = "it has no module and name (a functools.partial or a callable object?)"
    elif module == "__main__" or module.startswith("__main"):
        why = f"it is defined in {module} (a script or notebook cell), which another process cannot import"
    elif "<lambda>" in qualname:
        why = "it is a lambda"
    elif "<locals>" in qualname:
        why = "it is defined inside another function (a closure)"
    if why is None:
        name = f"{module}:{qualname}"
        try:
            same = import_loader(name) is loader or _unwrapped(import_loader(name)) is _unwrapped(loader)
        except UserError:
            same = False
        if same:
            return name
        why = f"importing {name} does not give this function back"
    raise UserError(f"cannot save imageLoader {_describe(loader)}: {why}. Define it at the top level of an "
                    "importable module (e.g. mypkg/loaders.py, shipped with --py-files) and pass that "
                    "function or its name 'mypkg.loaders:load'")


def import_loader(name: str) -> Loader:
    """`module:qualname` -> the function (also inside executors and fine-tune workers)."""
    module, _, qualname = name.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"imageLoader {name!r} cannot be imported: {type(exc).__name__}: {exc}") from None
    if not callable(obj):
        raise UserError(f"imageLoader {name!r} is not a function")
    return obj


def resolve_loader(value: Loader | str | None) -> Loader:
    """A Param value as the function to call (imported when it is a name)."""
    if value is None:
        raise UserError("imageLoader is not set: give a function file path -> numpy array (H, W, C)")
    return import_loader(value) if isinstance(value, str) else value


def call_loader(loader: Loader, uri: str, content: bytes) -> np.ndarray:
    """One image as float32 `(H, W, C)`: `content` (read through Hadoop) in a temporary file named like `uri`,
    handed to `loader`; sparkdl's `(1, H, W, C)` batch of one is accepted and squeezed."""
    suffix = os.path.splitext(uri.rsplit("/", 1)[-1])[1][:16]
    fd, tmp = tempfile.mkstemp(prefix="xray-loader-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        array = np.asarray(loader(tmp), dtype=np.float32)
    finally:
        os.unlink(tmp)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise ValueError(f"imageLoader returned shape {array.shape}; expected (H, W, C) or (1, H, W, C)")
    return array


def _unwrapped(fn: Any) -> Any:
    return inspect.unwrap(fn) if callable(fn) else fn


def _describe(loader: Any) -> str:
    return getattr(loader, "__qualname__", None) or repr(loader)
