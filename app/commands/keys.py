"""`whaleid keys`: make API keys (shown once, stored as hashes) and list what is stored.

    whaleid keys create --scope write [--name lab-laptop] [--file keys.json]
    whaleid keys list [--file keys.json]

The file defaults to WHALEID_KEYS_FILE, else keys.json. The key itself is printed once on
stdout and never stored: lose it and make another.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from app.keys import add_key, read_keys_file
from gallery.errors import WhaleidError

__all__ = ["build_parser", "run"]


def _default_file() -> Path:
    return Path(os.environ.get("WHALEID_KEYS_FILE", "keys.json"))


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Create and list API keys.")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = sub.add_parser("create", help="make a key; print it once, store its hash")
    create.add_argument(
        "--scope",
        choices=["read", "write"],
        required=True,
        help="read: POST /identify and GET routes; write: also registrations and deletes",
    )
    create.add_argument("--name", default="", help="who or what the key is for")
    create.add_argument(
        "--file", type=Path, default=None, help="keys file (default WHALEID_KEYS_FILE or keys.json)"
    )
    listing = sub.add_parser("list", help="the stored keys' names, scopes and dates")
    listing.add_argument(
        "--file", type=Path, default=None, help="keys file (default: WHALEID_KEYS_FILE)"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    path: Path = args.file or _default_file()
    if args.action == "create":
        key, record = add_key(path, scope=args.scope, name=args.name)
        print(key)
        print(
            f"stored the hash of this {record.scope} key in {path}; the key is not stored "
            "anywhere: keep it now (send it as the X-API-Key header)",
            file=sys.stderr,
        )
        return 0
    if not path.exists():
        raise WhaleidError(f"{path} does not exist; make a key with 'whaleid keys create'")
    for record in read_keys_file(path):
        created = f"{record.created:%Y-%m-%d %H:%M}"
        print(f"{created}  {record.scope:<5}  {record.sha256[:12]}…  {record.name}")
    return 0
