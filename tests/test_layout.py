"""The package's imports form no cycle: data flows one way (DESIGN.md), so no module imports, directly
or through others, a module that imports it back. Imports inside functions count as much as those at
the top: a lazy import only hides a cycle until the function runs.

How an import becomes an edge: `import a.b` and `from a import b` (b a module) depend on module a.b;
`from a import name` depends on the module that defines `name`, following the re-exports of a
package's __init__ (so `from groklab import run` depends on groklab.api). One import is no edge: a
submodule's use of a name its own ancestor package defines (`Task` of groklab.tasks, `__version__` of
groklab), because Python initialises a package before any of its submodules anyway.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "groklab"

Graph = dict[str, dict[str, str]]  # module -> {imported module: "file:line" of the import}


def modules(root: Path) -> dict[str, Path]:
    """Every module of the package at `root`, by dotted name; a package is its __init__.py."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _source(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module name of a `from X import ...` (relative imports resolved)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(root: Path) -> Graph:
    mods = modules(root)
    trees = {m: ast.parse(p.read_text(), filename=str(p)) for m, p in mods.items()}
    reexports: dict[str, dict[str, tuple[str, str]]] = {}  # package -> {name: (module, name there)}
    for m, tree in trees.items():
        if mods[m].name == "__init__.py":
            for node in tree.body:
                if isinstance(node, ast.ImportFrom):
                    for a in node.names:
                        reexports.setdefault(m, {})[a.asname or a.name] = (_source(m, mods[m], node), a.name)

    def defining(module: str, name: str, seen: int = 0) -> str | None:
        """The package module that `from module import name` depends on (None: outside the package)."""
        if module in reexports and name in reexports[module] and seen < 20:
            return defining(*reexports[module][name], seen + 1)
        if f"{module}.{name}" in mods:
            return f"{module}.{name}"
        return module if module in mods else None

    graph: Graph = {m: {} for m in mods}
    for m, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name in mods]
            elif isinstance(node, ast.ImportFrom):
                source = _source(m, mods[m], node)
                targets = [defining(source, a.name) for a in node.names]
            else:
                continue
            for t in targets:
                if t is None or t == m or m.startswith(f"{t}."):  # outside, itself, or its own ancestor
                    continue
                graph[m].setdefault(t, f"{mods[m].relative_to(root.parent)}:{node.lineno}")
    return graph


def find_cycle(graph: Graph) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for t in graph.get(m, {}):
            if state.get(t) == 1:
                return path[path.index(t):] + [t]
            if t not in state and (cycle := visit(t)):
                return cycle
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def describe(graph: Graph, cycle: list[str]) -> str:
    return " -> ".join([cycle[0]] + [f"{b} ({graph[a][b]})" for a, b in zip(cycle, cycle[1:])])


def test_package_has_no_import_cycle():
    graph = import_graph(PACKAGE)
    assert len(graph) > 20 and "groklab.executors.base" in graph["groklab.executors.local"]
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {describe(graph, cycle)}"


def test_a_cycle_through_a_function_level_import_is_found(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("VERSION = 1\nfrom pkg.api import run\n")
    (pkg / "api.py").write_text("from pkg.sub import worker\n\ndef run():\n    return worker.work()\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "worker.py").write_text("from pkg import VERSION\n\ndef work():\n    from pkg import run\n")
    graph = import_graph(pkg)
    assert "pkg" not in graph["pkg.sub.worker"]  # VERSION: its own ancestor package's name, no edge
    assert find_cycle(graph) == ["pkg.api", "pkg.sub.worker", "pkg.api"]  # `run` is pkg.api's
