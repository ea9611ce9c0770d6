"""Where MLflow runs and registered models go when one process trains or scores more than once."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import pytest

from conftest import isolate_mlflow
from xray_spark.tracking import configure, default_tracking_uri, point_at, tracking_uri_for


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


def test_one_precedence_for_the_tracking_uri(tmp_path: Path) -> None:
    """--tracking-uri > config > MLFLOW_TRACKING_URI > sqlite under --out (None without --out)."""
    env_uri = f"sqlite:///{tmp_path / 'team.db'}"
    with pytest.MonkeyPatch.context() as mp:
        isolate_mlflow(mp)
        assert tracking_uri_for(None, None, tmp_path) == default_tracking_uri(tmp_path)
        assert tracking_uri_for(None, None, None) is None
        mp.setenv("MLFLOW_TRACKING_URI", env_uri)
        assert tracking_uri_for(None, None, tmp_path) == env_uri
        assert tracking_uri_for(None, "http://cfg:5000", tmp_path) == "http://cfg:5000"
        assert tracking_uri_for("http://flag:5000", "http://cfg:5000", tmp_path) == "http://flag:5000"


def test_a_uri_mlflow_exported_for_us_is_not_the_users_choice(tmp_path: Path) -> None:
    """configure() makes MLflow export MLFLOW_TRACKING_URI: a second train in the same process (a notebook)
    must still default to its own --out, not the first run's store."""
    with pytest.MonkeyPatch.context() as mp:
        isolate_mlflow(mp)
        configure(None, tmp_path / "first")
        assert os.environ["MLFLOW_TRACKING_URI"] == default_tracking_uri(tmp_path / "first")
        assert tracking_uri_for(None, None, tmp_path / "second") == default_tracking_uri(tmp_path / "second")
