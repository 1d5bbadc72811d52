"""House rules that a grep would otherwise have to check: only ``megatron_meml/backend/`` imports megatron, and the
backend's modules import each other without cycles (counting imports inside functions: a lazy import that closes a
circle still couples the two modules both ways)."""
import ast
import os

from tests.conftest import ROOT

PKG = os.path.join(ROOT, "megatron_meml")
BACKEND = os.path.join(PKG, "backend")


def _imports(path):
    """(absolute module names, relative (level, module, names)) imported anywhere in the file."""
    tree = ast.parse(open(path).read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, None
        elif isinstance(node, ast.ImportFrom):
            yield (node.module or ""), (node.level, [a.name for a in node.names])


def test_only_backend_imports_megatron():
    bad = []
    for dirpath, _, files in os.walk(PKG):
        if os.path.commonpath([dirpath, BACKEND]) == BACKEND:
            continue
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                for mod, rel in _imports(path):
                    if (rel is None or rel[0] == 0) and (mod == "megatron" or mod.startswith("megatron.")):
                        bad.append(f"{os.path.relpath(path, ROOT)}: {mod}")
    assert not bad, bad


def _backend_graph():
    mods = {f[:-3] for f in os.listdir(BACKEND) if f.endswith(".py") and f != "__init__.py"}
    graph = {}
    for m in mods:
        deps = set()
        for mod, rel in _imports(os.path.join(BACKEND, m + ".py")):
            if rel is not None and rel[0] == 1:  # from .x import ... / from . import x
                deps |= {mod.split(".")[0]} if mod else set(rel[1])
            elif mod.startswith("megatron_meml.backend."):
                deps.add(mod.split(".")[2])
        graph[m] = deps & mods - {m}
    return graph


def test_backend_has_no_import_cycles():
    graph, cycles = _backend_graph(), []

    def visit(node, stack):
        for dep in sorted(graph[node]):
            if dep in stack:
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif len(stack) < len(graph):
                visit(dep, stack + [dep])

    for m in sorted(graph):
        visit(m, [m])
    assert not cycles, sorted(set(cycles))[:5]
    assert "state" in graph["attention"] and "model" not in graph["attention"]  # unwrap comes from state
