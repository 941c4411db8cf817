"""Serving never imports torch: every module of app/ and gallery/ imports in a process where the
training libraries cannot be imported at all, and none of them ends up loaded."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCK_TRAINING_LIBRARIES = textwrap.dedent(
    """
    import importlib.abc, sys

    BLOCKED = {"torch", "torchvision", "timm", "ultralytics"}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked: serving must not import it")
            return None

    sys.meta_path.insert(0, Block())
    """
)


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_TRAINING_LIBRARIES + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_app_and_gallery_import_without_training_libraries() -> None:
    result = run_python(
        """
        import importlib, pkgutil, sys
        import app, gallery
        names = []
        for package in (app, gallery):
            for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
                importlib.import_module(info.name)
                names.append(info.name)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not loaded, loaded
        assert any(n.startswith("gallery.") for n in names)
        print(len(names), "modules")
        """
    )
    assert result.returncode == 0, result.stderr
    assert "modules" in result.stdout


def test_plain_import_leaves_torch_unloaded() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import sys, app, gallery; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_serving_commands_start_without_training_libraries() -> None:
    result = run_python(
        """
        import contextlib, io
        from app.cli import COMMANDS, SERVING, main
        for name, command in COMMANDS.items():
            if command.group != SERVING:
                continue
            out = io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
                main([name, "--help"])
            assert "usage: whaleid " + name in out.getvalue(), name
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_catalogue_and_data_config_import_without_training_libraries() -> None:
    """The catalogue reader and DataConfig are what app-side tools and tests share with
    training: they must not drag torch in."""
    result = run_python(
        """
        import sys
        import gallery.catalogue, training.config, training.catalogue
        assert not [m for m in sys.modules if m.split(".")[0] in BLOCKED]
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def _project_imports(package: str) -> list[tuple[str, int, str]]:
    """(file, line, module) of every import of a project module in `package`, and whether it
    sits inside a function body."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    found = []
    for path in sorted((root / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        inside = {
            id(node)
            for func in ast.walk(tree)
            if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef)
            for node in ast.walk(func)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                if name.split(".")[0] in PROJECT:
                    where = "function" if id(node) in inside else "module"
                    found.append((f"{path.relative_to(root)}:{node.lineno}", where, name))
    return found


PROJECT = {"app", "gallery", "training", "bench"}
FLOORS = {"gallery": {"gallery"}, "app": {"app", "gallery"}}  # what each may import


def test_floors_import_one_way() -> None:
    """gallery ← app ← training: gallery imports neither app nor training, app not training."""
    wrong = [
        (where, name)
        for package, allowed in FLOORS.items()
        for where, _, name in _project_imports(package)
        if name.split(".")[0] not in allowed
    ]
    assert not wrong, wrong


def test_no_module_imports_another_inside_a_function() -> None:
    """A project import hidden in a function body would let a cycle back in unseen. (app/cli.py
    loads command modules by name with importlib: the one deliberate late binding.)"""
    hidden = [
        (where, name)
        for package in FLOORS
        for where, kind, name in _project_imports(package)
        if kind == "function"
    ]
    assert not hidden, hidden
