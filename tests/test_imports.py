"""The package's import structure: no cycles; internal imports at module top; lazy imports only where they
pay.

Lazy imports are allowed for TensorFlow, Keras, MLflow, pyspark, scikit-learn, matplotlib and nncf only (slow
to import, and not needed by every command), each with a `# lazy:` comment saying why; optional tools that are
not runtime dependencies (IPython) are imported inside `try: ... except ImportError`. One module more may
import the package's own modules inside functions, said once in a `# lazy:` comment at its top: cli.py,
whose commands each import their implementation, so that `xray-spark --help`, `xray-spark CMD --help` and
argument errors answer at once without any of the heavy libraries.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "xray_spark"
LAZY_ALLOWED = {"tensorflow", "keras", "mlflow", "pyspark", "sklearn", "matplotlib", "nncf"}
OPTIONAL = {"IPython", "matplotlib_inline"}
# modules whose functions may import the package's own modules (a `# lazy:` comment at the top says why)
LAZY_PACKAGE_IMPORTS = {"xray_spark.cli"}
# what `xray-spark --help` and argument errors must not import (slow to import; the last three come in
# with most of the others)
HEAVY = {"pyspark", "py4j", "tensorflow", "keras", "sklearn", "matplotlib", "mlflow", "openvino",
         "nncf", "pandas", "numpy", "scipy"}


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
    assert "xray_spark.train.compare" in graph["xray_spark.train.run"]
    assert graph["xray_spark.data.pixels"] == set() and graph["xray_spark.errors"] == set()
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


# ------------------------------------------------------------------------------------------ package floors
# One node per subpackage or root module; a package may import only from floors below its own. The core's
# root modules share floor 0 and may import each other (the module walk above keeps them acyclic). The
# package's own __init__ (`__version__`, the lazy DeepImageFeaturizer) is core; __main__ is the CLI.
FLOORS: dict[int, set[str]] = {
    0: {"xray_spark", "paths", "errors", "logs", "config", "tasks", "tracking", "session", "spark_io",
        "ml_io"},
    1: {"data"},
    2: {"features"},
    3: {"models"},
    4: {"evaluation"},
    5: {"finetune"},
    6: {"train"},
    7: {"scoring", "serving"},
    8: {"demo", "notebook_steps"},
    9: {"cli"},
}
FLOOR_OF = {node: floor for floor, nodes in FLOORS.items() for node in nodes}
CORE = FLOORS[0]


def package_of(module: str) -> str:
    """xray_spark.a.b -> a (a subpackage or a root module); xray_spark -> xray_spark; __main__ -> cli."""
    parts = module.split(".")
    if len(parts) == 1:
        return "xray_spark"
    return "cli" if parts[1] == "__main__" else parts[1]


def package_graph(modules: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph folded into packages: node -> the other nodes its modules import."""
    graph: dict[str, set[str]] = {}
    for module, targets in modules.items():
        node = package_of(module)
        graph.setdefault(node, set()).update(package_of(t) for t in targets)
        graph[node].discard(node)
    return graph


def two_way_ties(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted({tuple(sorted((a, b))) for a, targets in graph.items() for b in targets
                   if a in graph.get(b, ())})


def test_the_package_walk_sees_ties_and_cycles() -> None:
    modules = {"xray_spark.a.x": {"xray_spark.b.y"}, "xray_spark.b.y": {"xray_spark.c"},
               "xray_spark.c": {"xray_spark.a.z"}, "xray_spark.a.z": set(), "xray_spark.__main__": set()}
    graph = package_graph(modules)
    assert graph == {"a": {"b"}, "b": {"c"}, "c": {"a"}, "cli": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert two_way_ties({"a": {"b"}, "b": {"a", "c"}, "c": set()}) == [("a", "b")]


def test_packages_depend_one_way_ground_to_top() -> None:
    """No cycle and no two-way tie between packages, and every import goes down a floor (or stays in the
    core): the floors are the package map a reader can trust."""
    graph = package_graph(import_graph())
    assert {"data", "features", "models", "train", "cli"} <= graph.keys()
    assert "finetune" in graph["train"]  # the walk sees imports inside functions and across packages
    unplaced = sorted(graph.keys() - FLOOR_OF.keys())
    assert not unplaced, f"packages without a floor (add them to FLOORS): {unplaced}"
    ties = two_way_ties(graph)
    assert not ties, f"packages importing each other: {ties}"
    cycle = find_cycle(graph)
    assert cycle is None, f"package cycle: {' -> '.join(cycle)}"
    upward = sorted(f"{a} (floor {FLOOR_OF[a]}) -> {b} (floor {FLOOR_OF[b]})" for a, targets in graph.items()
                    for b in targets if FLOOR_OF[b] >= FLOOR_OF[a] and not (a in CORE and b in CORE))
    assert not upward, "imports that do not go down a floor:\n" + "\n".join(upward)


def test_each_package_says_what_lives_there_and_its_floor() -> None:
    """Every subpackage's __init__ has a docstring that names its floor, so the docstring and FLOORS agree."""
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        name = init.parent.name
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert len(doc) > 80, f"{name}/__init__.py: say what lives there and what it may import"
        assert f"Floor {FLOOR_OF.get(name)} " in doc, f"{name}/__init__.py: name floor {FLOOR_OF.get(name)}"

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
        if name in LAZY_PACKAGE_IMPORTS:
            preamble = lines[: next(i for i, line in enumerate(lines) if line.startswith("def "))]
            assert any(line.startswith("# lazy:") for line in preamble), f"{name}: say why at its top"
        for lineno, top, guarded in _lazy_imports(path):
            if (top in OPTIONAL and guarded) or (top == "xray_spark" and name in LAZY_PACKAGE_IMPORTS):
                continue
            if top not in LAZY_ALLOWED:
                offences.append(f"{name}:{lineno}: `{top}` imported inside a function (move it to the top)")
            elif "# lazy:" not in lines[lineno - 1]:
                offences.append(f"{name}:{lineno}: lazy import of `{top}` without a `# lazy:` reason")
    assert not offences, "\n".join(offences)


_HELP_AND_ERRORS = """
import argparse, contextlib, io, json, sys
from xray_spark.cli import build_parser, main

sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
runs = [["--help"]] + [[name, "--help"] for name in sub.choices]
runs += [["frobnicate"], ["ingest", "--out", "x"], ["fetch", "ozturk2020", "--to", "x", "--nope"]]
results = []
for argv in runs:
    out, err, code = io.StringIO(), io.StringIO(), None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as exc:
            code = exc.code
    results.append((argv, code, out.getvalue(), err.getvalue()))
print(json.dumps({"results": results, "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""


@pytest.mark.e2e
def test_help_and_argument_errors_import_nothing_heavy() -> None:
    """`xray-spark --help`, every `xray-spark CMD --help` and argument errors answer (exit 0 / exit 2 with one
    line) without pyspark, TensorFlow, scikit-learn, matplotlib, MLflow, OpenVINO or pandas: one process."""
    proc = subprocess.run([sys.executable, "-c", _HELP_AND_ERRORS], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    helps = {argv[0] for argv, *_ in found["results"] if argv[-1] == "--help"}
    assert {"--help", "ingest", "fetch", "featurize", "train", "finetune", "score", "evaluate", "demo",
            "serve"} <= helps  # the parser's own list of commands is read: none is missed
    for argv, code, out, err in found["results"]:
        if argv[-1] == "--help":
            assert (code, err) == (0, "") and "usage: xray-spark" in out, argv
        else:
            assert code == 2 and out == "" and err.count("\n") == 1 and ": error: " in err, (argv, err)
    assert not HEAVY & set(found["modules"]), f"imported: {sorted(HEAVY & set(found['modules']))}"
