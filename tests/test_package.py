"""The package as a whole: its layers (the library, core/, and the I/O layer, io/, never import the app
above them; the demo reaches them only through their registries, from every entry point), its one version
string and its declared dependencies."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import live_attention
from live_attention.errors import WeightsError

PACKAGE = Path(live_attention.__file__).resolve().parent
PYPROJECT = PACKAGE.parent / "pyproject.toml"
ABOVE = ("live_attention.demo", "live_attention.pipeline", "live_attention.offline", "live_attention.ui", "live_attention.commands",
         "live_attention.modes", "live_attention.ui.window")


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


def string_literals(path: Path) -> set[str]:
    """The string constants of a module, docstrings left out."""
    tree = ast.parse(path.read_text())
    docs = {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return {node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs}


def test_a_mode_name_is_written_in_at_most_three_modules_outside_modes() -> None:
    """A mode's knowledge lives in its class (live_attention/modes/); its name is written once, in
    live_attention/names.py, and elsewhere only where the same word means something else: a recording's
    fields ("rollout", "heads"), a library's submodule ("attention"), the package's module ("flow")."""
    from live_attention.modes import all_modes

    literals = {path: string_literals(path) for path in PACKAGE.rglob("*.py") if "modes" not in path.parts}
    where = {m.name: sorted(str(p.relative_to(PACKAGE)) for p, lits in literals.items() if m.name in lits)
             for m in all_modes()}
    assert where["attention"] and "names.py" in where["rollout"]  # the check sees literals
    assert all(len(files) <= 3 for files in where.values()), where


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


def pyproject() -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    return tomllib.loads(PYPROJECT.read_text())


def test_one_version_string() -> None:
    """pyproject.toml holds the version; the package reports the installed one, and no module writes its own."""
    version = pyproject()["project"]["version"]
    assert live_attention.__version__ == version
    written = [p.relative_to(PACKAGE) for p in PACKAGE.rglob("*.py") if f'"{version}"' in p.read_text()]
    assert not written, written


def test_safetensors_is_declared_and_its_absence_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A base install reads .safetensors files: the package is a dependency. Where it is missing anyway the
    error names it, instead of calling the file damaged ("re-download it")."""
    deps = [d.split(";")[0].strip() for d in pyproject()["project"]["dependencies"]]
    assert any(d.startswith("safetensors") for d in deps), deps
    import torch
    from safetensors.torch import save_file

    from live_attention.core.weights import load_weights_file

    path = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)  # import fails, as when not installed
    with pytest.raises(WeightsError, match=r"safetensors is not installed \(pip install safetensors\)") as info:
        load_weights_file(path)
    assert "re-download" not in str(info.value)
