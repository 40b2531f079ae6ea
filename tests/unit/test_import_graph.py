"""The framework's modules form no import cycle — type-checking imports counted — its core never
imports the web or CLI layers, nothing below the app imports the app, and the layers point one
way: the libraries of messages and Kafka never import the consume path, settings never the
development harness."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "streams"
#: layers that may import the core, never the other way round
OUTER = ("streams.web", "streams.cli", "streams.demos")
#: the packages below the app: they get what they use, never the app itself
BELOW_APP = ("streams.consume", "streams.kafka", "streams.outbox", "streams.cdc", "streams.batch",
             "streams.messages", "streams.faust_compat", "streams.settings", "streams.errors", "streams.metrics",
             "streams.db", "streams.background", "streams.state")
#: (lower layer, what it must never import): each arrow up
UPWARD = [
    ("streams.messages", ("streams.consume", "streams.kafka", "streams.outbox", "streams.cdc", "streams.batch")),
    ("streams.kafka", ("streams.consume", "streams.outbox", "streams.cdc", "streams.batch")),
    ("streams.settings", ("streams.dev", "streams.consume", "streams.kafka")),
    ("streams.faust_compat", ("streams.consume",)),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the framework modules it imports (at any depth of its code, the type-checking
    imports included: a name a module needs for its types is a dependency all the same)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]

        def visit(node: ast.AST, name: str = name, package: str = package) -> None:
            if isinstance(node, ast.Import):
                graph[name].update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, *([node.module] if node.module else [])])
                for alias in node.names:
                    target = f"{base}.{alias.name}"
                    if target in modules:
                        graph[name].add(target)
                    elif base in modules:
                        graph[name].add(base)
            for child in ast.iter_child_nodes(node):
                visit(child)

        visit(ast.parse(path.read_text()))
        graph[name].discard(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_the_graph_sees_the_framework() -> None:
    graph = import_graph()
    assert "streams.consume.runner" in graph["streams.app"]
    assert "streams.kafka.names" in graph["streams.consume.spec"]


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_a_cycle_is_found() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_core_never_imports_the_outer_layers() -> None:
    graph = import_graph()
    offenders = {m: sorted(t for t in targets if t.startswith(OUTER))
                 for m, targets in graph.items()
                 if m != "streams" and not m.startswith(OUTER)}
    assert {m: t for m, t in offenders.items() if t} == {}


def test_nothing_below_the_app_imports_it() -> None:
    graph = import_graph()
    offenders = {m: sorted(t for t in targets if t in ("streams.app", "streams"))
                 for m, targets in graph.items() if m.startswith(BELOW_APP)}
    assert {m: t for m, t in offenders.items() if t} == {}


def test_lower_layers_never_import_higher_ones() -> None:
    graph = import_graph()
    arrows = {m: sorted(t for t in targets if t.startswith(forbidden))
              for lower, forbidden in UPWARD
              for m, targets in graph.items() if m == lower or m.startswith(lower + ".")}
    assert {m: t for m, t in arrows.items() if t} == {}


def test_type_checking_imports_are_counted() -> None:
    graph = import_graph()
    # streams.consume.context imports its collaborators for their types only
    assert "streams.consume.publishing" in graph["streams.consume.context"]
