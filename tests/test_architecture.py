"""The layers of the house (docs/architecture.md): the library ``vpo/`` knows nothing of Django or
Celery; the web apps under ``webapp/`` never import the worker process's ``worker/``; models never
import tasks; and no module under ``webapp/`` or ``worker/`` is part of an import cycle. The import
graph is read statically with ``ast`` from every ``import`` statement in a file, at module level
or inside a function or method, so a cycle hidden in a function-level import counts too."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def module_files(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of ``packages`` under ``root``."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imported_names(path: Path, module: str) -> list[str]:
    """Every module name ``path`` imports anywhere in the file (relative imports resolved). For
    ``from a import b`` both ``a`` and ``a.b`` are named: ``b`` may be a submodule."""
    is_package = path.name == "__init__.py"
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, base] if base else package)
            names.append(base)
            names += [f"{base}.{alias.name}" for alias in node.names]
    return names


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Edges between the modules of ``packages``: importing ``a.b.c`` runs ``a`` and ``a.b`` too."""
    files = module_files(root, packages)
    graph: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        for name in imported_names(path, module):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                target = ".".join(parts[:i])
                if target in files and target != module and not module.startswith(target + "."):
                    graph[module].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def describe(graph: dict[str, set[str]], component: list[str]) -> str:
    members = set(component)
    return "; ".join(f"{m} -> {', '.join(sorted(graph[m] & members))}" for m in component)


def test_no_module_of_the_web_apps_or_the_worker_is_part_of_an_import_cycle():
    graph = import_graph(ROOT, ("webapp", "worker"))
    assert len(graph) > 30 and "webapp.experiments.jobs" in graph  # the walk found the house
    found = cycles(graph)
    assert not found, "import cycles: " + " | ".join(describe(graph, c) for c in found)


def test_the_cycle_check_finds_a_cycle_hidden_in_a_function_level_import(tmp_path):
    (tmp_path / "pkg" / "app").mkdir(parents=True)
    for name in ("pkg/__init__.py", "pkg/app/__init__.py"):
        (tmp_path / name).write_text("")
    (tmp_path / "pkg/app/models.py").write_text("def launch():\n    from pkg.app.tasks import run\n")
    (tmp_path / "pkg/app/tasks.py").write_text("from . import models\n")
    (tmp_path / "pkg/app/views.py").write_text("from pkg.app import tasks\n")
    graph = import_graph(tmp_path, ("pkg",))
    assert cycles(graph) == [["pkg.app.models", "pkg.app.tasks"]]
    (tmp_path / "pkg/app/models.py").write_text("def launch():\n    pass\n")
    assert cycles(import_graph(tmp_path, ("pkg",))) == []


def test_imports_point_one_way_library_then_web_apps_then_worker():
    graph = import_graph(ROOT, ("vpo", "webapp", "worker"))
    wrong = []
    for module, targets in graph.items():
        for target in targets:
            if module.startswith("vpo") and not target.startswith("vpo"):
                wrong.append(f"{module} -> {target} (the library imports no web app or worker)")
            if module.startswith("webapp") and target.startswith("worker"):
                wrong.append(f"{module} -> {target} (nothing under webapp/ imports worker/)")
            if module.endswith(".models") and target.endswith((".tasks", ".jobs", ".views")):
                wrong.append(f"{module} -> {target} (models never import tasks, jobs or views)")
    assert not wrong, "\n".join(sorted(wrong))


def test_the_library_imports_neither_django_nor_celery():
    # statically, every import in every file (a function-level one would load only on some paths)
    files = module_files(ROOT, ("vpo",))
    assert "vpo.train.runner" in files
    web = ("django", "celery", "channels", "kombu", "daphne", "redis")
    bad = [f"{m} imports {n}" for m, p in files.items() for n in imported_names(p, m) if n.split(".")[0] in web]
    assert not bad, bad
    # and for real: import every module of the library, then look at what got loaded
    code = (
        "import importlib, pkgutil, sys, vpo; "
        "[importlib.import_module(m.name) for m in pkgutil.walk_packages(vpo.__path__, 'vpo.') "
        "if not m.name.endswith('__main__')]; "
        f"loaded = sorted(m for m in {web!r} if m in sys.modules); "
        "sys.exit(f'imported {loaded}' if loaded else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
