"""`whaleid`: the one command-line program, with subcommands grouped by role.

The dispatcher knows each subcommand only by name, one line of help and the module that
implements it, and imports that module when the subcommand runs. So `whaleid --help` and the
serving commands start without torch, and `app` never imports `training` (DESIGN.md).

A command module provides `build_parser(prog) -> ArgumentParser` and `run(args) -> int | None`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

from gallery.errors import GalleryInputError, WhaleidError

__all__ = ["COMMANDS", "main"]


@dataclass(frozen=True)
class Command:
    module: str
    help: str
    group: str


TRAINING = "training (needs the 'train' extra)"
SERVING = "serving"

COMMANDS: dict[str, Command] = {
    "synth": Command("training.commands.synth", "make a synthetic photo-ID catalogue", TRAINING),
    "train": Command("training.commands.train", "train an embedding model", TRAINING),
    "evaluate": Command("training.commands.evaluate", "print a run's figures", TRAINING),
    "detect": Command("training.commands.detect", "train, run and export the cropper", TRAINING),
    "export": Command("training.commands.export", "export runs to a model bundle", TRAINING),
    "demo": Command("training.commands.demo", "build a demo bundle and gallery, serve", TRAINING),
    "serve": Command("app.commands.serve", "run the identification service", SERVING),
    "predict": Command("app.commands.predict", "identify a folder of photos to CSV", SERVING),
    "gallery": Command("app.commands.gallery", "manage the gallery of individuals", SERVING),
    "keys": Command("app.commands.keys", "create and list API keys", SERVING),
}


def _top_parser() -> argparse.ArgumentParser:
    lines = []
    for group in (TRAINING, SERVING):
        lines.append(f"{group}:")
        lines += [f"  {name:<10} {c.help}" for name, c in COMMANDS.items() if c.group == group]
    parser = argparse.ArgumentParser(
        prog="whaleid",
        description="Identify individual whales, dolphins and other marked animals from photos.",
        epilog="\n".join(lines) + "\n\nRun 'whaleid COMMAND --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("command", metavar="COMMAND", choices=sorted(COMMANDS), nargs="?")
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"whaleid {version('whaleid')}"
    except PackageNotFoundError:
        return "whaleid (not installed)"


def _load(name: str) -> ModuleType:
    command = COMMANDS[name]
    try:
        return importlib.import_module(command.module)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in {"torch", "timm", "ultralytics", "torchvision"}:
            raise WhaleidError(
                f"'whaleid {name}' needs the training libraries ({exc.name} is not installed): "
                "pip install 'whaleid[train]'"
            ) from exc
        raise


def main(argv: Sequence[str] | None = None) -> int:
    """Run `whaleid`; returns the exit status: 0 ok, 2 a value that breaks a rule (as argparse
    answers a bad argument), 1 any other user error, 130 interrupted."""
    top = _top_parser()
    ns = top.parse_args(argv)
    if ns.command is None:
        top.print_help()
        return 0
    try:
        module = _load(ns.command)
        args = module.build_parser(f"whaleid {ns.command}").parse_args(ns.args)
        status = module.run(args)
    except WhaleidError as exc:
        print(f"whaleid {ns.command}: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, GalleryInputError) else 1
    except KeyboardInterrupt:
        print(f"whaleid {ns.command}: interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
