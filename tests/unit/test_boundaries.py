"""`pipeline/` is pure: none of its modules imports ray or deepspeed (imports point jobs → actors → pipeline)."""

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
