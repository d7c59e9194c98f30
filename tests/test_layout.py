"""The package's shape: no import cycles (imports inside functions count), nothing imports the
façade back, and only the command line prints or draws."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "factstore"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of the package that NAME imports anywhere in its file."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target not in (name, "factstore"):
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as a path of module names, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_of_the_package_is_part_of_an_import_cycle() -> None:
    graph = _graph()
    assert {"factstore.api", "factstore.rome.edit", "factstore.storage.store"} <= graph.keys()
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_nothing_inside_the_package_but_the_http_front_end_imports_the_facade() -> None:
    graph = _graph()
    assert [name for name, deps in graph.items() if "factstore.api" in deps and not name.startswith("factstore.server")] == []
    below = [d for name, deps in graph.items() if name.startswith("factstore.server") for d in deps]
    assert not [d for d in below if d.startswith(("factstore.rome", "factstore.weights", "factstore.storage", "factstore.editing"))]


def test_the_algorithm_and_the_storage_stay_below_the_orchestration() -> None:
    graph = _graph()
    upper = ("factstore.editing", "factstore.release", "factstore.studies", "factstore.api")
    for name, deps in graph.items():
        if name.startswith(("factstore.rome", "factstore.analysis", "factstore.storage", "factstore.weights")):
            assert not [d for d in deps if d.startswith(upper)], name
        if name.startswith(("factstore.rome", "factstore.storage")):
            assert not [d for d in deps if d.startswith(("factstore.weights", "factstore.analysis"))], name


def test_only_the_command_line_prints_or_draws_progress() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno} print")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                offenders += [f"{path.relative_to(REPO)}:{node.lineno} imports {n}" for n in names if n.split(".")[0] in ("rich", "tqdm")]
    assert offenders == []


def test_the_command_line_talks_only_to_the_facade() -> None:
    for path in (REPO / "cli").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("factstore"):
                facade = node.module == "factstore.api" or (node.module == "factstore" and [a.name for a in node.names] == ["api"])
                assert facade or node.module == "factstore.server.app", path.name  # serve: the HTTP front end's entry point
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("factstore") for a in node.names), path.name
