"""The documentation: the docs site builds strictly, and the README stays a short front door.

The strict build is MkDocs' own `build` called in this process (no `mkdocs` subprocess, so a `unit` test),
into a temporary site folder: a broken link or anchor, a page missing from the nav, or a docstring that
mkdocstrings cannot render is a warning, and strict mode turns any warning into a failure. The API reference
pages are generated from the source tree at build time (docs_hooks/reference.py), so every package of
src/xray_spark is rendered here too. Nothing is fetched from the internet: theme, search and mkdocstrings
come from pip.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


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


def test_readme_is_short_and_keeps_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    # .ci/run runs the test command verbatim; both commands keep their README lines
    assert "make demo   # creates .venv, installs, runs the main job end to end (xray-spark demo)" in text
    assert "make test   # creates .venv with test tools, runs the whole test suite" in text
    assert re.search(r"^make test$", (REPO / ".ci" / "run").read_text(), re.M)


def test_readme_links_point_at_files_that_exist() -> None:
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README.read_text(encoding="utf-8"))
    local = [link for link in links if "://" not in link]
    assert local, "the README links into docs/"
    missing = [link for link in local if not (REPO / link).exists()]
    assert not missing, f"README links to missing files: {missing}"
