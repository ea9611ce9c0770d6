"""The package's import structure: no cycles; internal imports at module top; lazy imports only where they
pay.

Lazy imports are allowed for TensorFlow, Keras, MLflow, pyspark, scikit-learn and matplotlib only (slow to
import, and not needed by every command: `xray-spark --help` and argument checks start in a second or two),
each with a `# lazy:` comment saying why; optional tools that are not runtime dependencies (IPython) are
imported inside `try: ... except ImportError`.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "xray_spark"
LAZY_ALLOWED = {"tensorflow", "keras", "mlflow", "pyspark", "sklearn", "matplotlib"}
OPTIONAL = {"IPython", "matplotlib_inline"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> set[str]:
    """The package modules an import statement loads (`from pkg import sub` -> pkg.sub, else pkg)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names}
    base = node.module or ""
    if node.level:  # relative: resolve against this module's package
        parts = module.split(".") if is_package else module.split(".")[:-1]
        parts = parts[: len(parts) - node.level + 1]
        base = ".".join(parts + ([base] if base else []))
    return {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports, at top level or inside functions (not under
    TYPE_CHECKING)."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        found: set[str] = set()

        def visit(node: ast.AST, name: str = name, path: Path = path, found: set[str] = found) -> None:
            if _is_type_checking(node):
                return
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.update(_targets(node, name, path.name == "__init__.py"))
            for child in ast.iter_child_nodes(node):
                visit(child)

        visit(ast.parse(path.read_text(), filename=str(path)))
        graph[name] = (found & MODULES.keys()) - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    return next((c for n in sorted(graph) if n not in state and (c := dfs(n))), None)


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_in_the_package() -> None:
    graph = import_graph()
    assert len(graph) == len(MODULES) > 40
    # the graph is really read: known edges are present, and the numeric core imports nothing of ours
    assert {"xray_spark.data.dicom", "xray_spark.data.pixels"} <= graph["xray_spark.data.decode"]
    assert "xray_spark.train.compare" in graph["xray_spark.train.runner"]
    assert graph["xray_spark.data.pixels"] == set() and graph["xray_spark.errors"] == set()
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def _lazy_imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, top-level module, inside try/except ImportError) for every import inside a function."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        guarded = {id(n) for t in ast.walk(fn) if isinstance(t, ast.Try)
                   and any("ImportError" in ast.unparse(h.type or ast.Name("")) for h in t.handlers)
                   for n in ast.walk(t)}
        for node in ast.walk(fn):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and not (isinstance(node, ast.ImportFrom)
                                                                        and node.level):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                out += [(node.lineno, n.split(".")[0], id(node) in guarded) for n in names]
    return out


def test_lazy_imports_only_for_heavy_libraries_each_with_a_reason() -> None:
    worker = _lazy_imports(MODULES["xray_spark.features.worker"])
    assert any(top == "tensorflow" for _, top, _ in worker)  # the walk sees imports inside functions
    offences = []
    for name, path in MODULES.items():
        lines = path.read_text().splitlines()
        for lineno, top, guarded in _lazy_imports(path):
            if top in OPTIONAL and guarded:
                continue
            if top not in LAZY_ALLOWED:
                offences.append(f"{name}:{lineno}: `{top}` imported inside a function (move it to the top)")
            elif "# lazy:" not in lines[lineno - 1]:
                offences.append(f"{name}:{lineno}: lazy import of `{top}` without a `# lazy:` reason")
    assert not offences, "\n".join(offences)


def test_the_console_script_does_not_load_tensorflow_or_mlflow() -> None:
    """`xray-spark --help` and argument errors answer without the heavy imports."""
    code = ("import sys, xray_spark.cli; heavy = {'tensorflow', 'keras', 'mlflow'} & set(sys.modules); "
            "sys.exit(', '.join(sorted(heavy)) or 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
