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
