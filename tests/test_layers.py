"""The layers of the package: the library (core/) and the I/O layer (io/) never import the app above them,
and the demo reaches them only through their registries, from every entry point."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import live_attention

PACKAGE = Path(live_attention.__file__).resolve().parent
ABOVE = ("live_attention.demo", "live_attention.pipeline", "live_attention.ui", "live_attention.commands",
         "live_attention.window")


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at module level or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_core_and_io_import_nothing_above_them() -> None:
    bad = [
        f"{path.relative_to(PACKAGE)} imports {name}"
        for layer in ("core", "io")
        for path in sorted((PACKAGE / layer).glob("*.py"))
        for name in imported_modules(path)
        if name.startswith(ABOVE)
    ]
    assert not bad, bad


def test_demo_model_and_source_from_a_fresh_interpreter() -> None:
    """Whoever imports any part of the package gets ``--model demo`` and ``--source demo``: the package
    root registers them (a fresh interpreter, so no test has imported the demo before)."""
    code = (
        "from live_attention.io.capture import open_source\n"
        "from live_attention.core.models import load_model\n"
        "s = open_source('demo', width=64, height=48)\n"
        "assert s.read().shape == (48, 64, 3); s.release()\n"
        "print(load_model('demo', device='cpu').name)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "demo"
