"""The shape of tl_core: imports run one way, read from the source with ``ast`` (imports inside functions too).

``LAYERS`` is the one written layer order (bottom first); ``docs/interfaces.md`` draws the same picture.
A module may import modules of its own layer or of a lower one, never of a higher one; no two modules
import each other, directly or around a loop; and no ``_name`` of one module is used by another module
of tl_core or by a page (tests may)."""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Bottom to top. A name stands for that module, or for a package and everything in it.
LAYERS = (
    ("tl_core.limits", "tl_core.devices", "tl_core.paths", "tl_core.viz"),
    ("tl_core.data",),
    ("tl_core.models",),
    ("tl_core.training",),
    ("tl_core.export",),
    ("tl_core.runs",),
    ("tl_core.labs",),
    ("tl_core.classroom",),
    ("tl_core.cli", "tl_core.__main__", "tl_core"),
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources(folder: str) -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / folder).rglob("*.py"))}


MODULES = sources("tl_core")
PACKAGES = {m for m, p in MODULES.items() if p.name == "__init__.py"}


def layer_of(module: str) -> int:
    best = None
    for i, names in enumerate(LAYERS):
        for n in names:
            if (module == n or module.startswith(n + ".")) and (best is None or len(n) > best[1]):
                best = (i, len(n))
    assert best is not None, f"{module} is in no layer of LAYERS: add it there (and to docs/interfaces.md)"
    return best[0]


def absolute(current: str, level: int, name: str | None) -> str:
    if not level:
        return name or ""
    base = current.split(".")
    if current not in PACKAGES:
        base.pop()
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def owner(dotted: str) -> str | None:
    """The tl_core module a dotted name lives in (its longest prefix that is a module)."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in MODULES:
            return ".".join(parts[:i])
    return None


def scan(module: str, path: Path):
    """(imported modules, private names of other modules used here) of one file."""
    tree = ast.parse(path.read_text())
    imported, private, aliases = set(), [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = absolute(module, node.level, node.module)
            for a in node.names:
                full = f"{base}.{a.name}"
                if full in MODULES:
                    imported.add(full)
                    aliases[a.asname or a.name] = full
                elif owner(base):
                    imported.add(owner(base))
                    if a.name.startswith("_") and not a.name.startswith("__") and owner(base) != module:
                        private.append(f"{path.name}:{node.lineno} imports {a.name} from {owner(base)}")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if owner(a.name):
                    imported.add(owner(a.name))
                    if a.asname:
                        aliases[a.asname] = owner(a.name)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")
                and aliases[node.value.id] != module):
            private.append(f"{path.name}:{node.lineno} uses {node.value.id}.{node.attr}")
    imported.discard(module)
    return imported, private


GRAPH = {m: scan(m, p) for m, p in MODULES.items()}


def test_every_module_has_a_layer():
    for m in MODULES:
        layer_of(m)


def test_no_import_runs_up_the_layers():
    upward = [f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
              for m, (imported, _) in GRAPH.items() for t in sorted(imported) if layer_of(t) > layer_of(m)]
    assert upward == []


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), ignoring a package's own imports of
    its submodules (the ``__init__`` that lists them)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    edges = {m: {t for t in imported if not (m in PACKAGES and t.startswith(m + "."))}
             for m, (imported, _) in GRAPH.items()}
    assert cycles(edges) == []


def test_cycle_finder_sees_a_loop_and_a_package_index_is_none():
    """The checks above are only as good as this: a loop of three is found, a chain is not."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_private_name_is_used_across_modules_or_from_pages():
    private = [p for _, (_, priv) in GRAPH.items() for p in priv]
    for name, path in sources("pages").items():
        private += scan(name, path)[1]
    private += scan("app", ROOT / "app.py")[1]
    assert private == []


@pytest.mark.parametrize("package", sorted(PACKAGES - {"tl_core"}))
def test_each_package_exports_its_own_public_names(package):
    """A package's ``__init__`` imports from its own modules only (no re-export of another package's names) and
    its ``__all__`` lists public names: those its modules define, and the modules themselves."""
    import importlib
    import inspect

    init = MODULES[package]
    for node in ast.walk(ast.parse(init.read_text())):
        if isinstance(node, (ast.ImportFrom, ast.Import)):
            source = absolute(package, node.level, node.module) if isinstance(node, ast.ImportFrom) else None
            assert source and source.startswith(package + "."), f"{init}:{node.lineno} imports from outside {package}"
    exported = importlib.import_module(package).__all__
    assert exported and not [n for n in exported if n.startswith("_")]
    for name in exported:
        value = getattr(importlib.import_module(package), name)
        if f"{package}.{name}" in MODULES:  # a function must not hide its module's name
            assert inspect.ismodule(value), f"{package}.{name} is not the module {package}.{name}"
        elif inspect.isfunction(value) or inspect.isclass(value):
            assert value.__module__.startswith(package + "."), f"{package}.{name} is from {value.__module__}"
