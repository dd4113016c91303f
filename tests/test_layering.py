"""The import layering of ``tokpay``, read from the source with ``ast`` (nothing is run).

Each top-level part of the tree (``tokpay/<name>/`` or ``tokpay/<name>.py``) is one
node; an import anywhere in a module (top level or inside a function) is an edge
from its part to the part it names. The rules:

- no cycle between parts: data flows one way;
- no edge between ``api`` and ``web``: whatever composes them sits above both;
- no product part imports the harness or the command line.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "tokpay"
PRODUCT = frozenset({"ledger", "wal", "actors", "client", "api", "web"})
HARNESS = frozenset({"testing", "cli"})
APART = frozenset({"api", "web"})

Graph = Mapping[str, frozenset[str]]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(source: str, module: str, *, is_package: bool = False) -> Iterator[str]:
    """Absolute names of the modules ``source`` (of ``module``) imports, anywhere in it."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                yield ".".join([*base, node.module] if node.module else base)
            elif node.module:
                yield node.module


def _part(module: str) -> str | None:
    """``tokpay.api.app`` -> ``api``; None for modules outside tokpay and for the root."""
    parts = module.split(".")
    return parts[1] if parts[0] == "tokpay" and len(parts) > 1 else None


def import_graph() -> dict[str, frozenset[str]]:
    edges: dict[str, set[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        module = _module_name(path)
        source = _part(module)
        if source is None:
            continue
        targets = edges.setdefault(source, set())
        names = imported(path.read_text(), module, is_package=path.name == "__init__.py")
        for name in names:
            target = _part(name)
            if target is not None and target != source:
                targets.add(target)
    return {part: frozenset(targets) for part, targets in edges.items()}


def find_cycle(graph: Graph) -> list[str] | None:
    """One cycle of ``graph`` as its nodes in order (first repeated last), or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        for target in sorted(graph.get(node, ())):
            cycle = visit(target, [*path, node])
            if cycle is not None:
                return cycle
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start, [])
        if cycle is not None:
            return cycle
    return None


@pytest.fixture(scope="module")
def graph() -> dict[str, frozenset[str]]:
    found = import_graph()
    assert {"api", "web", "ledger"} <= found.keys(), f"tokpay not found under {ROOT}"
    return found


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a"})}) == [
        "a",
        "b",
        "c",
        "a",
    ]
    assert find_cycle({"a": frozenset({"b", "c"}), "b": frozenset({"c"})}) is None
    assert find_cycle({"x": frozenset({"y"}), "y": frozenset({"y", "x"})}) == ["x", "y", "x"]


def test_imports_are_read_relative_nested_and_lazy() -> None:
    source = (
        "import tokpay.ledger.model\n"
        "from . import handlers\n"
        "from ..web.site import install_web\n"
        "def later() -> None:\n"
        "    from tokpay.cli import app\n"
    )
    names = set(imported(source, "tokpay.api.app"))
    assert names == {"tokpay.ledger.model", "tokpay.api", "tokpay.web.site", "tokpay.cli"}
    assert set(imported("from .errors import X", "tokpay.ledger", is_package=True)) == {
        "tokpay.ledger.errors"
    }
    assert _part("tokpay.web.site") == "web" and _part("tokpay") is None


def test_no_import_cycle_between_parts(graph: Graph) -> None:
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle between parts of tokpay: " + " -> ".join(cycle or [])


def test_api_and_web_do_not_import_each_other(graph: Graph) -> None:
    for part in APART:
        crossing = graph.get(part, frozenset()) & (APART - {part})
        assert not crossing, f"tokpay.{part} imports tokpay.{', tokpay.'.join(crossing)}"


def test_product_does_not_import_harness_or_cli(graph: Graph) -> None:
    leaks = {part: sorted(graph.get(part, frozenset()) & HARNESS) for part in PRODUCT}
    assert not any(leaks.values()), f"product parts importing harness or CLI: {leaks}"
