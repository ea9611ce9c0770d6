"""MkDocs hook: the API reference pages, generated from the source tree at build time.

One page per package of `src/xray_spark` (`::: xray_spark.<package>`, every submodule rendered from its
docstrings by mkdocstrings) and one page for the top-level modules, plus an index. The list is read from the
folders, so moving or renaming a module or a package needs no edit anywhere in the docs: the next build
follows the code. mkdocs.yml's nav entry `API reference: reference/index.md` is expanded into these pages.
"""

from __future__ import annotations

import ast
from pathlib import Path

from mkdocs.structure.files import File

PACKAGE = "xray_spark"
REFERENCE = "reference"
_SKIP_MODULES = {"__init__", "__main__"}


def _src(config) -> Path:
    return Path(config["config_file_path"]).parent / "src" / PACKAGE


def _summary(path: Path) -> str:
    """The first line of a module's docstring ('' when it has none)."""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _pages(src: Path) -> list[tuple[str, str, str, str]]:
    """(file name, nav title, summary, markdown) of every reference page, packages first, then modules."""
    pages = []
    for pkg in sorted(p for p in src.iterdir() if (p / "__init__.py").is_file()):
        name = f"{PACKAGE}.{pkg.name}"
        body = f"# `{name}`\n\n::: {name}\n    options:\n      show_root_heading: false\n"
        pages.append((f"{pkg.name}.md", name, _summary(pkg / "__init__.py"), body))
    modules = sorted(p for p in src.glob("*.py") if p.stem not in _SKIP_MODULES)
    if modules:
        body = ["# Top-level modules\n",
                f"The ground floor: modules of `{PACKAGE}` that are not in a subpackage.\n"]
        body += [f"::: {PACKAGE}.{m.stem}\n" for m in modules]
        summary = ", ".join(f"`{m.stem}`" for m in modules)
        pages.append(("modules.md", "Top-level modules", summary, "\n".join(body)))
    return pages


def _index(pages: list[tuple[str, str, str, str]], src: Path) -> str:
    lines = [
        "# API reference\n",
        "Generated from the docstrings at build time, one page per package (every module of the package on",
        "that page) and one for the top-level modules. The public entry point most users need is",
        f"`{PACKAGE}.DeepImageFeaturizer` ([sparkdl migration](../sparkdl.md)); everything else is what the",
        "commands run.\n",
        f"Package docstring of `{PACKAGE}`: {_summary(src / '__init__.py')}\n",
        "| page | what lives there |",
        "| --- | --- |",
    ]
    lines += [f"| [{title}]({fname}) | {summary} |" for fname, title, summary, _ in pages]
    return "\n".join(lines) + "\n"


def on_config(config):
    """Expand the nav entry that points at reference/index.md into the generated pages."""
    pages = _pages(_src(config))
    section = [{"Overview": f"{REFERENCE}/index.md"}]
    section += [{title: f"{REFERENCE}/{fname}"} for fname, title, _, _ in pages]
    for i, item in enumerate(config["nav"] or []):
        if isinstance(item, dict) and list(item.values()) == [f"{REFERENCE}/index.md"]:
            config["nav"][i] = {next(iter(item)): section}
    return config


def on_files(files, config):
    src = _src(config)
    pages = _pages(src)
    files.append(File.generated(config, f"{REFERENCE}/index.md", content=_index(pages, src)))
    for fname, _, _, body in pages:
        files.append(File.generated(config, f"{REFERENCE}/{fname}", content=body))
    return files
