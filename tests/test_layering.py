"""Import layering: the two methods import neither each other nor the launchers, and the shared
`suite` imports neither method. Checked on the AST of every module (imports inside functions count)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "mta": {"memgas", "ray_jobs", "serving"},
    "memgas": {"mta", "ray_jobs", "serving"},
    "suite": {"mta", "memgas", "ray_jobs", "serving"},
    "serving": {"ray_jobs"},  # the app imports the methods, never the launchers; nothing imports it back
    "reporting": {"mta", "memgas", "ray_jobs", "serving"},  # summaries in, Markdown and plots out
}


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module


def test_no_forbidden_imports():
    bad = []
    for pkg, banned in FORBIDDEN.items():
        for f in sorted((ROOT / pkg).rglob("*.py")):
            for line, mod in _imports(f):
                if mod.split(".")[0] in banned:
                    bad.append(f"{f.relative_to(ROOT)}:{line} imports {mod}")
    assert bad == []


def test_the_check_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from memgas.store import MemoryStore\n")
    assert [m for _, m in _imports(f)] == ["memgas.store"]


PACKAGES = ("mta", "memgas", "suite", "serving", "ray_jobs", "reporting")


def _module_graph() -> dict[str, set[str]]:
    mods = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")) if (ROOT / pkg).is_dir() else []:
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            mods[name] = f
    graph = {}
    for name, f in mods.items():
        deps = set()
        for _, mod in _imports(f):
            while mod and mod not in mods:  # `from pkg.mod import x` names pkg.mod; `import pkg` names pkg
                mod = mod.rpartition(".")[0]
            if mod and mod != name and not name.startswith(mod + "."):
                deps.add(mod)
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> set[frozenset]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), set(), [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.add(frozenset(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


# Circles and oversized modules that exist today and are being split (issue #30): this list may only
# shrink. A new circle, or a module growing past its recorded size, fails.
KNOWN_CIRCLES: set[frozenset] = set()
MAX_LINES = 500
KNOWN_LARGE: dict[str, int] = {}


def test_no_import_circle_beyond_the_known_ones():
    """Mutation caught: `import mta.recipe` added to mta/per_user.py (a new circle)."""
    assert _cycles(_module_graph()) <= KNOWN_CIRCLES


def test_the_cycle_finder_finds_a_constructed_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == {frozenset({"a", "b", "c"})}


def test_no_module_over_500_lines_beyond_the_known_ones():
    big = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py") if (ROOT / pkg).is_dir() else []:
            n = len(f.read_text().splitlines())
            rel = f.relative_to(ROOT).as_posix()
            if n > MAX_LINES and n > KNOWN_LARGE.get(rel, 0):
                big[rel] = n
    assert big == {}


def test_the_sqlite_engine_knows_rows_and_commits_never_the_store():
    """Mutation caught: `from memgas.store import StoreError` back in memgas/db.py."""
    g = _module_graph()
    assert "memgas.store" not in g["memgas.db"] and "memgas.folder" not in g["memgas.db"]
