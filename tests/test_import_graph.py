"""kvplan's imports run one way: no loop between modules, no edge up or sideways between packages.

The graph is read with `ast` from every file under kvplan/: imports at module level, inside
functions and under `if TYPE_CHECKING` alike (a type-only import is still a dependency a reader
has to follow). docs/architecture.md draws the same floors.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kvplan"

# Lowest first. A unit imports only units on floors below its own, except that the ground floor's
# modules (kvplan/*.py) may import each other. Every `cli` module (kvplan/cli.py and each package's
# cli.py: argument parsing, lazy imports, output) is on the top floor.
GROUND = (
    "errors", "formats", "plan", "procs", "metric_names", "kernel_speeds", "vllm_command", "checkpoint",
    "headers",
)  # fmt: skip
FLOORS: tuple[tuple[str, ...], ...] = (
    GROUND,
    ("planner", "kernels", "control", "quality"),
    ("workers", "router", "deploy"),
    ("dashboards",),
    ("demo",),
    ("cli",),
)
# Loops that another change is removing; each entry must still be a loop (so it is deleted then).
KNOWN_LOOPS: set[frozenset[str]] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> Iterator[tuple[str, int]]:
    """(imported kvplan module, line) for every import statement anywhere in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from kvplan.router import metrics` imports a module; `from kvplan.plan import Plan` a name
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import kvplan.x.y` of a name: its module
                target = target.rpartition(".")[0]
            if target.startswith("kvplan"):
                yield target, node.lineno


def graph() -> dict[str, dict[str, int]]:
    """module -> {imported module: first line}."""
    mods = modules()
    known = set(mods)
    out: dict[str, dict[str, int]] = {}
    for name, path in mods.items():
        edges: dict[str, int] = {}
        for target, line in imports(name, path, known):
            if target != name:
                edges.setdefault(target, line)
        out[name] = edges
    return out


def unit(module: str) -> str:
    """The floor plan's unit of a module: `cli`, a ground module's name, or its top package."""
    parts = module.split(".")
    if parts[-1] == "cli":
        return "cli"
    return parts[1] if len(parts) > 1 else "kvplan"


def floor(u: str) -> int:
    if u == "kvplan":  # the root package's __init__ (a version string)
        return 0
    for i, units in enumerate(FLOORS):
        if u in units:
            return i
    raise AssertionError(f"{u!r} is on no floor: add it to FLOORS in {__file__} and docs/architecture.md")


def loops(g: dict[str, dict[str, int]]) -> list[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    for root in g:
        if root in index:
            continue
        work = [(root, iter(g[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = set()
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        comp.add(top)
                        if top == node:
                            break
                    if len(comp) > 1:
                        found.append(frozenset(comp))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(g[child])))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def forbidden(g: dict[str, dict[str, int]]) -> list[str]:
    out = []
    for src, edges in g.items():
        for dst, line in edges.items():
            a, b = unit(src), unit(dst)
            if a == b or (floor(a) == floor(b) == 0):
                continue
            if floor(b) >= floor(a):
                way = "sideways" if floor(b) == floor(a) else "upward"
                out.append(f"{src}:{line} imports {dst} ({way}: {a} on floor {floor(a)}, {b} on {floor(b)})")
    return sorted(out)


def test_no_import_loops() -> None:
    found = loops(graph())
    new = [sorted(c) for c in found if c not in KNOWN_LOOPS]
    assert not new, f"import loops: {new}"
    gone = [sorted(c) for c in KNOWN_LOOPS if c not in found]
    assert not gone, f"no longer loops, delete them from KNOWN_LOOPS: {gone}"


def test_packages_import_only_downward() -> None:
    bad = forbidden(graph())
    assert not bad, "\n".join(bad)


def test_every_unit_is_on_a_floor() -> None:
    units = {unit(m) for m in graph()}
    placed = {u for units_ in FLOORS for u in units_}
    assert units - {"kvplan"} <= placed, sorted(units - placed - {"kvplan"})
    assert placed <= units, f"floors name units that do not exist: {sorted(placed - units)}"


def test_the_architecture_page_draws_the_same_floors() -> None:
    page = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    for i, units in enumerate(FLOORS):
        for u in units:
            assert f"`{u}`" in page, f"docs/architecture.md does not place `{u}` (floor {i})"


# The checker itself can fail: a loop and each kind of forbidden edge are caught.
@pytest.mark.parametrize(
    ("edges", "problem"),
    [
        ({"kvplan.router.a": {"kvplan.router.b": 1}, "kvplan.router.b": {"kvplan.router.a": 2}}, "loop"),
        ({"kvplan.control.state": {"kvplan.router.metrics": 3}, "kvplan.router.metrics": {}}, "upward"),
        ({"kvplan.workers.x": {"kvplan.router.y": 4}, "kvplan.router.y": {}}, "sideways"),
        ({"kvplan.formats": {"kvplan.planner.gpus": 5}, "kvplan.planner.gpus": {}}, "upward"),
        ({"kvplan.router.app": {"kvplan.router.cli": 6}, "kvplan.router.cli": {}}, "upward"),
    ],
)
def test_the_checker_catches(edges: dict[str, dict[str, int]], problem: str) -> None:
    if problem == "loop":
        assert loops(edges) == [frozenset(edges)]
    else:
        assert any(problem in line for line in forbidden(edges)), forbidden(edges)
