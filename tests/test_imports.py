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
