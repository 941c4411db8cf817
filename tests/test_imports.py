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


def test_no_module_imports_another_inside_a_function() -> None:
    """Imports point one way (gallery ← app ← training); a project import hidden in a function
    body would let a cycle back in unseen. app/cli.py loads commands by name (importlib), which
    is the one deliberate late binding."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    project = {"app", "gallery", "training", "bench"}
    found = []
    for package in ("app", "gallery"):
        for path in sorted((root / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for func in ast.walk(tree):
                if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                for node in ast.walk(func):
                    if isinstance(node, ast.ImportFrom):
                        names = [node.module or ""]
                    elif isinstance(node, ast.Import):
                        names = [alias.name for alias in node.names]
                    else:
                        continue
                    if any(name.split(".")[0] in project for name in names):
                        found.append(f"{path.relative_to(root)}:{node.lineno} {names[0]}")
    assert not found, found
