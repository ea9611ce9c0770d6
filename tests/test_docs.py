"""The documentation: the docs site builds strictly.

The strict build is MkDocs' own `build` called in this process (no `mkdocs` subprocess, so a `unit` test),
into a temporary site folder: a broken link or anchor, a page missing from the nav, or a docstring that
mkdocstrings cannot render is a warning, and strict mode turns any warning into a failure. The API reference
pages are generated from the source tree at build time (docs_hooks/reference.py), so every package of
src/xray_spark is rendered here too. Nothing is fetched from the internet: theme, search and mkdocstrings
come from pip.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_docs_site_builds_strictly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mkdocs.commands.build import build
    from mkdocs.config import load_config

    monkeypatch.setenv("NO_MKDOCS_2_WARNING", "1")  # mkdocs-material: a banner about MkDocs 2.0
    monkeypatch.chdir(REPO)
    site = tmp_path / "site"
    cfg = load_config(str(REPO / "mkdocs.yml"), site_dir=str(site), strict=True)
    build(cfg)  # raises mkdocs.exceptions.Abort on any warning (strict)

    reference = {p.name for p in (site / "reference").glob("*.html")}
    packages = {p.parent.name for p in (REPO / "src" / "xray_spark").glob("*/__init__.py")}
    assert {f"{name}.html" for name in packages} | {"index.html", "modules.html"} <= reference
    featurizer = (site / "reference" / "features.html").read_text(encoding="utf-8")
    assert "DeepImageFeaturizer" in featurizer and "weightsSha256" in featurizer
    assert (site / "commands" / "score.html").is_file() and (site / "serve_page.png").is_file()

