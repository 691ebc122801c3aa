"""Import boundaries: `pipeline/` is pure (no ray, deepspeed or upper layers), imports point jobs → actors →
pipeline, each package imports only the rooms below it, and no modules import each other in a circle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BANNED = {"ray", "deepspeed", "actors", "jobs"}


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_no_pipeline_module_imports_ray_deepspeed_or_upper_layers() -> None:
    files = sorted((ROOT / "pipeline").rglob("*.py"))
    assert len(files) >= 5
    offenders = {str(p.relative_to(ROOT)): sorted(_imported_roots(p) & BANNED) for p in files}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_actors_never_import_jobs() -> None:
    offenders = [
        str(p.relative_to(ROOT)) for p in (ROOT / "actors").rglob("*.py") if "jobs" in _imported_roots(p)
    ]
    assert offenders == []


def test_importing_pipeline_does_not_start_ray() -> None:
    # transformers may import deepspeed on its own when installed; ray must never come in.
    modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in (ROOT / "pipeline").rglob("*.py")
    )
    code = f"import importlib, sys\nfor m in {modules!r}:\n    importlib.import_module(m)\nprint('ray' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"


# What each package may import from the project (besides itself and ``pipeline``): the rooms of
# ``actors/`` by capability, ``cluster`` the ground floor; ``jobs/``: cli → launch → stages.
ALLOWED = {
    "actors.cluster": set(),
    "actors.training": {"actors.cluster"},
    "actors.inference": {"actors.cluster"},
    "actors.serving": {"actors.cluster"},
    "actors.ppo": {"actors.cluster", "actors.training"},
    "actors.sweep": {"actors.cluster", "actors.inference", "actors.ppo"},
    "jobs.stages": {"actors"},
    "jobs.launch": {"actors", "jobs.stages"},
    "jobs.cli": {"actors", "jobs.stages", "jobs.launch"},
}


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _project_modules() -> dict[str, Path]:
    return {_module_name(p): p for top in ("pipeline", "actors", "jobs") for p in (ROOT / top).rglob("*.py")}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports, deferred imports inside functions included; ``from pkg
    import name`` counts as an import of ``pkg.name`` when that is a module, else of ``pkg``."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([base] if base else [])])
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.add(target if target in modules else base)
    return found & set(modules)


def test_each_package_imports_only_the_rooms_below_it() -> None:
    modules = _project_modules()
    offenders = []
    for name, path in sorted(modules.items()):
        owner = next((pkg for pkg in ALLOWED if name == pkg or name.startswith(pkg + ".")), None)
        if owner is None:
            continue
        for target in _imports(path, modules):
            if target.startswith(("pipeline", owner)):
                continue
            if not any(target == ok or target.startswith(ok + ".") for ok in ALLOWED[owner]):
                offenders.append(f"{name} -> {target}")
    assert len(modules) > 80
    assert offenders == []


def test_no_import_circle_in_the_project() -> None:
    """Tarjan's strongly connected components over the module import graph: every one a single module."""
    modules = _project_modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    assert circles == []
