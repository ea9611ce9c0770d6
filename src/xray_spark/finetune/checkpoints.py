"""Per-epoch checkpoints under OUT/checkpoints: written by the chief only, atomically, and read on resume.

Layout: `epoch-K.weights.h5` (model + optimizer state after K epochs: Keras' save_weights includes the
optimizer when the model is compiled), `best-epoch-J.weights.h5` (the epoch with the lowest validation loss so
far) and `state.json` naming both, the run key and the history so far. A file is written under a temp name
and renamed; state.json is replaced only after the files it names are complete, so a run killed at any
moment leaves a consistent set (a best file of an epoch state.json does not record yet is never read: the
name says its epoch). Older files are deleted afterwards.
Every worker calls `save` (saving may read distributed variables, which is a collective step): the others
write to a throwaway temp folder, as TensorFlow's multi-worker guide does.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

STATE = "state.json"
BEST_GLOB = "best-epoch-*.weights.h5"


def best_name(epoch: int) -> str:
    return f"best-epoch-{epoch}.weights.h5"


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


class Checkpoints:
    """One run's checkpoint folder; `chief` decides who writes where."""

    def __init__(self, folder: str | os.PathLike, chief: bool) -> None:
        self.folder = Path(folder)
        self.chief = chief

    def state(self) -> dict[str, Any] | None:
        """The last complete checkpoint's state, or None when there is none."""
        path = self.folder / STATE
        if not path.is_file():
            return None
        state = json.loads(path.read_text())
        return state if (self.folder / state["weights"]).is_file() else None

    def weights_path(self, name: str) -> Path:
        return self.folder / name

    def save(self, model: Any, state: dict[str, Any], best: bool) -> None:
        """Save weights + optimizer after `state['epoch']` epochs (and as the best so far when `best`)."""
        name = f"epoch-{state['epoch']}.weights.h5"
        if not self.chief:
            scratch = Path(tempfile.mkdtemp(prefix="xray-ft-nonchief-"))
            try:
                model.save_weights(str(scratch / name))
                if best:
                    model.save_weights(str(scratch / best_name(state["epoch"])))
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        self._save_weights(model, name)
        previous = self.state()
        best_file = previous.get("best") if previous else None
        if best:
            best_file = best_name(state["epoch"])
            self._save_weights(model, best_file)
        write_json_atomic(self.folder / STATE, {**state, "weights": name, "best": best_file})
        for old in (previous or {}).get("weights"), (previous or {}).get("best"):
            if old and old not in (name, best_file):
                (self.folder / old).unlink(missing_ok=True)

    def discard_stale(self) -> None:
        """A fresh start: best files left by a killed earlier run in this folder are not this run's."""
        for f in self.folder.glob(BEST_GLOB):
            f.unlink(missing_ok=True)

    def _save_weights(self, model: Any, name: str) -> None:
        tmp = self.folder / f".tmp-{uuid.uuid4().hex}.weights.h5"
        try:
            model.save_weights(str(tmp))
            os.replace(tmp, self.folder / name)
        finally:
            tmp.unlink(missing_ok=True)
