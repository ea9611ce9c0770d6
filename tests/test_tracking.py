"""Where MLflow runs and registered models go when one process trains or scores more than once."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from conftest import isolate_mlflow
from xray_spark.tracking import configure, default_tracking_uri, point_at


def test_registry_follows_each_new_store(tmp_path: Path) -> None:
    """set_registry_uri exports MLFLOW_REGISTRY_URI: a second configure must still move the registry."""
    with pytest.MonkeyPatch.context() as mp:
        isolate_mlflow(mp)
        configure(None, tmp_path / "first")
        configure(None, tmp_path / "second")
        assert mlflow.get_tracking_uri() == default_tracking_uri(tmp_path / "second")
        assert mlflow.get_registry_uri() == default_tracking_uri(tmp_path / "second")


def test_registry_follows_after_an_earlier_store_is_restored(tmp_path: Path) -> None:
    """A notebook that trains, scores elsewhere, then trains again: every store we set stays ours."""
    with pytest.MonkeyPatch.context() as outer:
        isolate_mlflow(outer)
        point_at(default_tracking_uri(tmp_path / "a"))
        with pytest.MonkeyPatch.context() as inner:
            inner.setenv("MLFLOW_REGISTRY_URI", "")
            point_at(default_tracking_uri(tmp_path / "b"))
        point_at(default_tracking_uri(tmp_path / "c"))  # env says "a" again: still not a user's choice
        assert mlflow.get_registry_uri() == default_tracking_uri(tmp_path / "c")


def test_a_registry_the_user_chose_is_kept(tmp_path: Path) -> None:
    chosen = f"sqlite:///{tmp_path / 'registry.db'}"
    with pytest.MonkeyPatch.context() as mp:
        isolate_mlflow(mp)
        mp.setattr(mlflow.tracking._model_registry.utils, "_registry_uri", None)
        mp.setenv("MLFLOW_REGISTRY_URI", chosen)
        point_at(f"sqlite:///{tmp_path / 'tracking.db'}")
        assert mlflow.get_registry_uri() == chosen
        point_at("databricks")
        assert mlflow.get_tracking_uri() == "databricks" and mlflow.get_registry_uri() == chosen
