"""House rules that a grep would otherwise have to check: only ``megatron_meml/backend/`` imports megatron, no
module of the package takes part in an import cycle (imports inside functions count: a lazy import that closes a
circle still couples the two modules both ways), and the package imports its own modules at the top of the file
(an import inside a function is for an optional or heavy third-party package only)."""
import ast
import os

from tests.conftest import ROOT

PKG = os.path.join(ROOT, "megatron_meml")
BACKEND = os.path.join(PKG, "backend")
# Own modules a function may import, and why.
LAZY_OWN = {
    "megatron_meml/train.py": "the entry point checks package versions (versions.py) before importing torch or "
                              "megatron-core, and `--help` must not import them",
}


def _files():
    for dirpath, _, files in os.walk(PKG):
        for f in sorted(files):
            if f.endswith(".py"):
                yield os.path.join(dirpath, f)


def _module(path):
    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
    return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


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
    for path in _files():
        if os.path.commonpath([path, BACKEND]) == BACKEND:
            continue
        for mod, rel in _imports(path):
            if (rel is None or rel[0] == 0) and (mod == "megatron" or mod.startswith("megatron.")):
                bad.append(f"{os.path.relpath(path, ROOT)}: {mod}")
    assert not bad, bad


def _graph():
    """module -> the package modules it imports (module- and function-level)."""
    paths = {_module(p): p for p in _files()}
    graph = {}
    for m, p in paths.items():
        is_pkg = p.endswith("__init__.py")
        deps = set()
        for mod, rel in _imports(p):
            if rel is not None and rel[0] > 0:
                base = m.split(".") if is_pkg else m.split(".")[:-1]
                base = base[:len(base) - (rel[0] - 1)]
                mod = ".".join(base + ([mod] if mod else []))
                targets = [mod] + [f"{mod}.{n}" for n in rel[1]]
            else:
                targets = [mod] + ([f"{mod}.{n}" for n in rel[1]] if rel else [])
            for t in targets:
                while t and t not in paths:
                    t = t.rpartition(".")[0]
                if t and t != m and t != "megatron_meml" and not m.startswith(t + "."):
                    deps.add(t)
        graph[m] = deps
    return graph


def _cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_in_the_package():
    graph = _graph()
    assert len(graph) > 80 and "megatron_meml.stages.riel" in graph
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    """The check itself: a made-up pair of modules importing each other (one lazily) is reported."""
    assert _cycles({"a": {"b"}, "b": {"a", "c"}, "c": set()}) == [["a", "b"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_own_modules_are_imported_at_the_top():
    bad = []
    for path in _files():
        rel = os.path.relpath(path, ROOT)
        if rel in LAZY_OWN:
            continue
        tree = ast.parse(open(path).read(), path)
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, ast.ImportFrom) and (node.level > 0 or
                                                             (node.module or "").startswith("megatron_meml")):
                        bad.append(f"{rel}:{node.lineno}")
                    elif isinstance(node, ast.Import) and any(a.name.startswith("megatron_meml") for a in node.names):
                        bad.append(f"{rel}:{node.lineno}")
    assert not bad, bad
