"""The package's shape: imports run downwards through the layers, in no circle, and no file
or function grows past its limit.

The layers, lowest first, live in one place, `mlscale.layers.LAYERS`:

    ground floor   mlscale, config, artifacts, errors, executors, runtime, html, reference,
                   layers, data (bundled data)
    data, models   curate, images, tokenize, model
    tasks          tasks
    trainer        train
    uses of runs   finetune, evaluate, export, scaling, report
    experiment     experiment
    command line   cli, __main__

The test parses every module of src/mlscale with `ast` and follows every import in it:
at the top, inside functions, under `if TYPE_CHECKING`, and `importlib.import_module` of
a literal name (a name computed at run time, as the command table of cli.py, is not
seen). `from a.b import c` is an import of the module a.b.c where that is a module, else
of a.b; importing a module is not counted as importing its parent packages. It fails on

  (a) an import circle between modules, naming each module and line round the circle;
  (b) an import from a lower layer up, and one between two packages of the same layer
      that `mlscale.layers.SIDEWAYS` does not allow (the ground floor may use itself);
      a package that no layer names fails too;
  (c) a .py file under src/ over `MAX_FILE_LINES` (600) lines;
  (d) a function or method over `MAX_FUNCTION_LINES` (80) lines, end_lineno - lineno + 1.

Each failure lists every violation, not only the first.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from mlscale.layers import LAYERS, MAX_FILE_LINES, MAX_FUNCTION_LINES, SIDEWAYS, layer_of

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "mlscale"


@dataclass(frozen=True)
class Import:
    source: str  # importing module, e.g. mlscale.curate.pipeline
    target: str  # imported module, e.g. mlscale.executors
    line: int

    def where(self) -> str:
        return f"{_path(self.source)}:{self.line}"


@cache
def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package) for every module of src/mlscale."""
    out = {}
    for path in sorted((SRC / ROOT).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_package)
    return out


def _path(module: str) -> str:
    return str(_modules()[module][0].relative_to(SRC.parent))


def _resolve(name: str) -> str | None:
    """The module that importing `name` loads: `name` itself, else its nearest parent."""
    modules = _modules()
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _from_target(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[:len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _literal_import_module(node: ast.Call) -> str | None:
    """The name in `importlib.import_module("literal")` / `import_module("literal")`."""
    fn = node.func
    name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else None
    if name == "import_module" and node.args and isinstance(node.args[0], ast.Constant) \
            and isinstance(node.args[0].value, str):
        return node.args[0].value
    return None


def _imports_of(module: str) -> list[Import]:
    path, is_package = _modules()[module]
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _from_target(module, is_package, node)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub if sub in _modules() else base, node.lineno))
        elif isinstance(node, ast.Call) and (name := _literal_import_module(node)):
            found.append((name, node.lineno))
    out = set()
    for name, line in found:
        if name == ROOT or name.startswith(ROOT + "."):
            target = _resolve(name)
            if target and target != module:
                out.add(Import(module, target, line))
    return sorted(out, key=lambda i: (i.target, i.line))


@cache
def _graph() -> dict[str, list[Import]]:
    return {m: _imports_of(m) for m in _modules()}


def _package(module: str) -> str:
    """The layer unit of a module: the name after `mlscale.` ("" for mlscale itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _layer_name(index: int) -> str:
    return LAYERS[index][0]


# ----------------------------------------------------------------------------- circles
def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components with more than one module (iterative: no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def _shortest_circle(start: str, members: set[str], graph: dict[str, set[str]]) -> list[str]:
    """The shortest path start -> ... -> start inside one component."""
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return path[::-1] + [start]
                if child not in parents:
                    parents[child] = node
                    nxt.append(child)
        frontier = nxt
    raise AssertionError(f"{start} is in no circle")  # pragma: no cover


def _describe_circle(circle: list[str]) -> str:
    hops = []
    for a, b in zip(circle, circle[1:]):
        line = min(i.line for i in _graph()[a] if i.target == b)
        hops.append(f"    {a} ({_path(a)}:{line}) imports {b}")
    return "\n".join(hops)


def test_no_import_circles() -> None:
    graph = {m: {i.target for i in imports} for m, imports in _graph().items()}
    circles = []
    for component in _strongly_connected(graph):
        circle = _shortest_circle(component[0], set(component), graph)
        circles.append(f"  circle of {len(component)} modules ({', '.join(component)}):\n"
                       + _describe_circle(circle))
    assert not circles, "import circles between modules:\n" + "\n".join(circles)


# ------------------------------------------------------------------------------ layers
def test_every_package_has_a_layer() -> None:
    unplaced = sorted({_package(m) for m in _modules()} - {p for _, ps in LAYERS for p in ps})
    assert not unplaced, (f"packages in no layer of mlscale.layers.LAYERS: {', '.join(unplaced)}; "
                          "add each to the layer it belongs to")


def _layer_violation(imp: Import) -> str | None:
    src, dst = _package(imp.source), _package(imp.target)
    if src == dst:
        return None
    low, high = layer_of(dst), layer_of(src)
    if low is None or high is None:
        return None  # reported by test_every_package_has_a_layer
    if low > high:
        return (f"  {imp.where()}: {imp.source} imports {imp.target}, upwards from "
                f"'{_layer_name(high)}' to '{_layer_name(low)}'")
    if low == high and low != 0 and (src, dst) not in SIDEWAYS:
        return (f"  {imp.where()}: {imp.source} imports {imp.target}, sideways within "
                f"'{_layer_name(low)}' ({src} -> {dst} is not in mlscale.layers.SIDEWAYS)")
    return None


def test_imports_run_downwards() -> None:
    problems = [p for imports in _graph().values() for imp in imports
                if (p := _layer_violation(imp))]
    order = " <- ".join("/".join(p or "mlscale" for p in ps) for _, ps in LAYERS)
    assert not problems, (f"imports against the layer order ({order}):\n" + "\n".join(problems))


def test_sideways_allowances_are_within_one_layer_and_form_no_circle() -> None:
    for (src, dst), why in SIDEWAYS.items():
        assert why and layer_of(src) is not None and layer_of(src) == layer_of(dst), (src, dst)
    graph: dict[str, set[str]] = {}
    for src, dst in SIDEWAYS:
        graph.setdefault(src, set()).add(dst)
        graph.setdefault(dst, set())
    assert not _strongly_connected(graph), f"SIDEWAYS allows a circle: {_strongly_connected(graph)}"


def test_the_checker_sees_imports_inside_functions_and_relative_ones() -> None:
    # the rules are only as good as the import finder: a circle it missed would pass
    report = {(i.target, i.line) for i in _graph()["mlscale.report.run_report"]}
    assert any(t == "mlscale.curate.report" for t, _ in report)  # imported inside a function
    assert {i.target for i in _graph()["mlscale.__main__"]} == {"mlscale.cli"}
    node = ast.parse("from .tokenizer import Tokenizer\nfrom .. import errors").body
    assert _from_target("mlscale.tokenize.char", False, node[0]) == "mlscale.tokenize.tokenizer"
    assert _from_target("mlscale.tokenize.char", False, node[1]) == "mlscale"
    assert _from_target("mlscale.tokenize", True, node[0]) == "mlscale.tokenize.tokenizer"
    circle = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _strongly_connected(circle) == [["a", "b", "c"]]
    assert _shortest_circle("a", {"a", "b", "c"}, circle) == ["a", "b", "c", "a"]


# ------------------------------------------------------------------------------- sizes
def test_no_file_over_the_line_limit() -> None:
    long = []
    for path in sorted(SRC.rglob("*.py")):
        n = len(path.read_text().splitlines())
        if n > MAX_FILE_LINES:
            long.append(f"  {path.relative_to(SRC.parent)}: {n} lines")
    assert not long, f"files over {MAX_FILE_LINES} lines:\n" + "\n".join(long)


def test_no_function_over_the_line_limit() -> None:
    long = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"  {path.relative_to(SRC.parent)}:{node.lineno} {node.name}: {n} lines")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)
