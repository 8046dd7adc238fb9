"""The architecture rules, read from the source with `ast`: nothing of the project is imported.

Every ``.py`` file of the eight package folders is parsed (module names follow
`pyproject.toml` ``package-dir``; ``__init__.py`` is the package itself) and every import
is collected: at module level, inside functions and classes, absolute and relative.
``from pkg import name`` imports the submodule ``pkg.name`` when that is a module, else
``pkg``. Imports under ``if TYPE_CHECKING:`` are skipped: they only serve type checkers and
never run.

The checks:

- no import cycle between modules. An import of one's own ancestor package
  (``mta.fusion.cat`` importing ``mta.fusion``) is left out of this check: Python runs a
  package's ``__init__`` before any of its submodules, so such an edge closes no loop
  that matters (``mta.fusion`` imports ``mta.fusion.cat``, which imports ``mta.fusion.inputs``);
- no folder imports a folder of its own layer or a higher one (`LAYERS`);
- ``engines`` (clients of the HTTP API) imports only the method core, and nothing imports it
  (`ONLY_IMPORTS`, `NOT_IMPORTED`);
- the folder-level graph equals the block under `DOCS_MARKER` in ``docs/internals.md``;
- no source file is longer than `MAX_FILE_LINES` lines (``bench/`` included);
- no function is longer than `MAX_FUNCTION_LINES` code lines (its docstring not counted)
  unless the line directly above its ``def`` (or its first decorator) is a ``# long:``
  comment giving the reason.
"""

from __future__ import annotations

import ast
import re
from collections import deque
from dataclasses import dataclass, field
from functools import cache
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# folder -> import name (pyproject.toml [tool.setuptools.package-dir])
PACKAGES = {
    "mta": "mta",
    "storage": "mta.storage",
    "registry": "mta.registry",
    "migrations": "mta.migrations",
    "evaluation": "mta.evaluation",
    "server": "mta.server",
    "cli": "mta.cli",
    "engines": "mta.engines",
}
# A folder may import only folders of a strictly lower layer (so never one of its own layer).
LAYERS = {
    "mta": 0,
    "storage": 0,
    "registry": 1,
    "migrations": 2,
    "evaluation": 2,
    "server": 2,
    "cli": 3,
    "engines": 1,
}
# Folders limited to fewer folders than their layer allows: engines/ reaches the registry
# only over HTTP, so it may not import registry, storage, server or cli.
ONLY_IMPORTS = {"engines": {"mta"}}
# Folders no other folder may import: the engine plugins are loaded by the engines.
NOT_IMPORTED = {"engines"}
LINE_CHECKED_FOLDERS = (*PACKAGES, "bench")
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60
LONG_MARKER = re.compile(r"^\s*# long:\s*\S")
DOCS = ROOT / "docs" / "internals.md"
DOCS_MARKER = "Folder imports (checked by tests/test_architecture.py):"


@dataclass(frozen=True)
class Module:
    """One parsed source file of a package folder."""

    name: str  # import name, e.g. "mta.registry.banks.build"
    folder: str  # top-level folder, e.g. "registry"
    path: Path
    is_package: bool  # an __init__.py

    @property
    def where(self) -> str:
        return str(self.path.relative_to(ROOT))


@dataclass
class Graph:
    """Module-level imports of our own modules: source -> target -> line numbers."""

    modules: dict[str, Module]
    edges: dict[str, dict[str, list[int]]] = field(default_factory=dict)

    def add(self, source: str, target: str, line: int) -> None:
        if target != source:
            self.edges.setdefault(source, {}).setdefault(target, []).append(line)

    def at(self, source: str, target: str) -> str:
        """Where ``source`` imports ``target``, e.g. "registry/db.py:191"."""
        return f"{self.modules[source].where}:{self.edges[source][target][0]}"


def _module_name(folder: str, path: Path) -> str:
    parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGES[folder], *parts])


@cache
def modules() -> dict[str, Module]:
    """Every module of the eight package folders, by import name."""
    found = {}
    for folder in PACKAGES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            name = _module_name(folder, path)
            found[name] = Module(name, folder, path, path.name == "__init__.py")
    return found


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


class _ImportCollector(ast.NodeVisitor):
    """Every import statement that runs, with its line: ``(module, names, level, line)``."""

    def __init__(self) -> None:
        self.found: list[tuple[str, list[str], int, int]] = []

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.append((alias.name, [], 0, node.lineno))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        names = [alias.name for alias in node.names]
        self.found.append((node.module or "", names, node.level, node.lineno))


def _known_prefix(name: str, known: dict[str, Module]) -> str | None:
    """The longest dotted prefix of ``name`` that is one of our modules."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return None


def _absolute(module: Module, base: str, level: int) -> str:
    """The absolute name of a relative ``from <dots><base> import`` in ``module``."""
    if level == 0:
        return base
    package = module.name.split(".")
    if not module.is_package:
        package.pop()
    if level > 1:
        package = package[: -(level - 1)]
    return ".".join([*package, base] if base else package)


@cache
def import_graph() -> Graph:
    """The graph of every runtime import between our modules."""
    known = modules()
    graph = Graph(known)
    for module in known.values():
        collector = _ImportCollector()
        collector.visit(_parse(module.path))
        for base, names, level, line in collector.found:
            origin = _absolute(module, base, level)
            if not names:  # import a.b.c
                targets = [_known_prefix(origin, known)]
            else:  # from a.b import c: the submodule a.b.c when there is one, else a.b
                targets = [
                    f"{origin}.{name}"
                    if f"{origin}.{name}" in known
                    else _known_prefix(origin, known)
                    for name in names
                ]
            for target in targets:
                if target is not None:
                    graph.add(module.name, target, line)
    return graph


def _is_ancestor(package: str, module: str) -> bool:
    return module.startswith(package + ".")


def _strongly_connected(nodes: list[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            advanced = False
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(edges.get(succ, ())))))
                    advanced = True
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            if advanced:
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
                components.append(sorted(component))
    return components


def _shortest_cycle(start: str, members: set[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest import path from ``start`` back to itself inside one component."""
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for succ in sorted(edges.get(node, ()) & members):
            if succ == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [*reversed(path), start]
            if succ not in came_from:
                came_from[succ] = node
                queue.append(succ)
    return [start]


def _without_ancestors(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """The edges less every import of one's own ancestor package."""
    return {
        source: {target for target in targets if not _is_ancestor(target, source)}
        for source, targets in edges.items()
    }


def cycle_components(edges: dict[str, set[str]]) -> list[list[str]]:
    """The modules of each import cycle (ancestor-package imports left out)."""
    edges = _without_ancestors(edges)
    nodes = sorted({*edges, *(t for targets in edges.values() for t in targets)})
    return [c for c in _strongly_connected(nodes, edges) if len(c) > 1]


def module_cycles() -> list[str]:
    """One line per import cycle: its modules, then one loop with the lines that import."""
    graph = import_graph()
    edges = _without_ancestors({source: set(targets) for source, targets in graph.edges.items()})
    found = []
    for component in cycle_components(edges):
        loop = _shortest_cycle(component[0], set(component), edges)
        steps = " -> ".join(
            f"{source} ({graph.at(source, target)})" for source, target in pairwise(loop)
        )
        found.append(f"{', '.join(component)}: {steps} -> {loop[-1]}")
    return found


def folder_edges() -> dict[str, set[str]]:
    """Folder -> the other folders it imports."""
    graph = import_graph()
    folders: dict[str, set[str]] = {folder: set() for folder in PACKAGES}
    for source, targets in graph.edges.items():
        for target in targets:
            here, there = graph.modules[source].folder, graph.modules[target].folder
            if here != there:
                folders[here].add(there)
    return folders


def test_there_is_something_to_check():
    assert {"mta.registry.service", "mta.cli.app", "mta.fusion", "mta.server.app"} <= set(modules())
    assert "mta.registry.context" in import_graph().edges["mta.evaluation.runner"]


def test_the_collector_skips_typing_imports_and_sees_function_and_relative_ones():
    source = """
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from mta.a import A
else:
    import mta.b.c
def f():
    from ..d import e
"""
    collector = _ImportCollector()
    collector.visit(ast.parse(source))
    found = [(base, names, level) for base, names, level, _line in collector.found]
    assert found == [("typing", ["TYPE_CHECKING"], 0), ("mta.b.c", [], 0), ("d", ["e"], 2)]
    module = Module("mta.server.x", "server", ROOT / "server" / "x.py", is_package=False)
    assert _absolute(module, "d", 2) == "mta.d"
    assert _absolute(module, "", 1) == "mta.server"


def test_a_cycle_is_found_but_an_import_of_the_own_package_is_not_one():
    # mta/fusion/__init__ imports cat, cat imports inputs, both import their package
    package = {"p": {"p.cat"}, "p.cat": {"p.inputs", "p"}, "p.inputs": {"p"}}
    assert cycle_components(package) == []
    assert cycle_components({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _function(name: str, code_lines: int, above: str = "") -> str:
    """A function of ``code_lines`` code lines (its def included) after a 4-line docstring."""
    body = "".join(f"    x{i} = {i}\n" for i in range(code_lines - 1))
    return f'{above}def {name}():\n    """A docstring.\n\n    Not counted.\n    """\n{body}\n'


def test_a_long_function_needs_a_long_comment(tmp_path):
    path = tmp_path / "m.py"
    limit = MAX_FUNCTION_LINES
    path.write_text(
        _function("fits", limit)
        + _function("too_long", limit + 1)
        + _function("explained", limit + 1, above="# long: one table\n@cache\n")
        + _function("no_reason", limit + 1, above="# long:\n")
    )
    found = [entry.split(" ", 1)[1] for entry in long_functions(path)]
    assert found == [f"too_long: {limit + 1} lines", f"no_reason: {limit + 1} lines"]


def test_no_import_cycles_between_modules():
    cycles = module_cycles()
    assert not cycles, (
        "import cycles (move the shared piece down into a module both can import):\n"
        + "\n".join(cycles)
    )


def test_no_folder_imports_its_own_layer_or_a_higher_one():
    graph = import_graph()
    upward = []
    for source, targets in sorted(graph.edges.items()):
        here = graph.modules[source].folder
        for target in sorted(targets):
            there = graph.modules[target].folder
            if here != there and LAYERS[there] >= LAYERS[here]:
                upward.append(
                    f"{source} imports {target} ({graph.at(source, target)}): "
                    f"{here} (layer {LAYERS[here]}) may not import {there} (layer {LAYERS[there]})"
                )
    assert not upward, "imports against the layers " + repr(LAYERS) + ":\n" + "\n".join(upward)


def test_engines_import_only_the_core_and_nothing_imports_them():
    graph = import_graph()
    wrong = []
    for source, targets in sorted(graph.edges.items()):
        here = graph.modules[source].folder
        for target in sorted(targets):
            there = graph.modules[target].folder
            if here == there:
                continue
            if here in ONLY_IMPORTS and there not in ONLY_IMPORTS[here]:
                wrong.append(f"{source} imports {target} ({graph.at(source, target)})")
            if there in NOT_IMPORTED:
                wrong.append(f"{source} imports {target} ({graph.at(source, target)})")
    assert not wrong, (
        f"allowed: {ONLY_IMPORTS}; never imported: {sorted(NOT_IMPORTED)}:\n" + "\n".join(wrong)
    )
    assert "mta.engines.vllm_resolver" in graph.modules


def documented_folder_edges() -> dict[str, set[str]]:
    """The fenced block under `DOCS_MARKER` in docs/internals.md, as folder -> folders."""
    lines = DOCS.read_text(encoding="utf-8").splitlines()
    assert DOCS_MARKER in lines, f"{DOCS} has no line {DOCS_MARKER!r}"
    rest = lines[lines.index(DOCS_MARKER) + 1 :]
    start = next(i for i, line in enumerate(rest) if line.startswith("```")) + 1
    end = next(i for i, line in enumerate(rest) if i >= start and line.startswith("```"))
    documented = {}
    for line in rest[start:end]:
        source, arrow, targets = line.partition("->")
        assert arrow, f"{DOCS}: not a 'folder -> folder, folder' line: {line!r}"
        documented[source.strip()] = {t.strip() for t in targets.split(",") if t.strip()}
    return documented


def _edge_lines(edges: dict[str, set[str]]) -> list[str]:
    return [f"{folder} -> {', '.join(sorted(edges[folder]))}".rstrip() for folder in sorted(edges)]


def test_documented_folder_imports_match_the_code():
    actual, documented = folder_edges(), documented_folder_edges()
    assert documented == actual, (
        f"the folder imports under {DOCS_MARKER!r} in docs/internals.md differ from the code;\n"
        "documented:\n  "
        + "\n  ".join(_edge_lines(documented))
        + "\nin the code:\n  "
        + "\n  ".join(_edge_lines(actual))
    )


def _source_files() -> list[Path]:
    return [
        path
        for folder in LINE_CHECKED_FOLDERS
        for path in sorted((ROOT / folder).rglob("*.py"))
        if "__pycache__" not in path.parts and not path.name.startswith("test_")
    ]


def test_no_source_file_is_too_long():
    long_files = []
    for path in _source_files():
        count = len(path.read_text(encoding="utf-8").splitlines())
        if count > MAX_FILE_LINES:
            long_files.append(f"{path.relative_to(ROOT)}: {count} lines")
    assert not long_files, f"files over {MAX_FILE_LINES} lines (split them):\n" + "\n".join(
        long_files
    )


def _docstring_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    first = node.body[0]
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        return first.end_lineno - first.lineno + 1
    return 0


def long_functions(path: Path) -> list[str]:
    """Functions of ``path`` over `MAX_FUNCTION_LINES` code lines without a ``# long:`` reason."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found = []
    for node in ast.walk(_parse(path)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        code_lines = node.end_lineno - node.lineno + 1 - _docstring_lines(node)
        if code_lines <= MAX_FUNCTION_LINES:
            continue
        top = node.decorator_list[0].lineno if node.decorator_list else node.lineno
        if top >= 2 and LONG_MARKER.match(lines[top - 2]):
            continue
        where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        found.append(f"{where}:{node.lineno} {node.name}: {code_lines} lines")
    return found


def test_no_function_is_too_long_without_a_reason():
    found = [entry for path in _source_files() for entry in long_functions(path)]
    assert not found, (
        f"functions over {MAX_FUNCTION_LINES} code lines (split them, or put a"
        " '# long: <reason>' comment on the line above the def or its first decorator):\n"
        + "\n".join(found)
    )
