"""API keys: made once, shown once, stored only as hashes; checked in constant time.

A key is 32 random bytes (url-safe base64 behind a `whid_` prefix), so a plain sha256 of it is
as good as a slow password hash: there is nothing to guess. Records come from a JSON file
(`whaleid keys create --file keys.json`) and/or the `WHALEID_API_KEYS` setting. There is no
built-in key: with no records, every request that needs a key is refused.

Scopes: `read` (identify, gallery reads) and `write` (gallery changes, and everything `read`
allows).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gallery.errors import WhaleidError

__all__ = [
    "KEY_PREFIX",
    "KeyRecord",
    "KeyRing",
    "Scope",
    "add_key",
    "dumps_records",
    "hash_key",
    "new_key",
    "read_keys_file",
]

Scope = Literal["read", "write"]
KEY_PREFIX = "whid_"
_GRANTS: dict[str, frozenset[str]] = {
    "read": frozenset({"read"}),
    "write": frozenset({"read", "write"}),
}


class KeyRecord(BaseModel):
    """What is stored about a key: never the key itself."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("", description="who or what the key is for")
    scope: Scope
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="hex sha256 of the key")
    created: datetime = Field(default_factory=lambda: datetime.now(UTC))

    def allows(self, scope: Scope) -> bool:
        return scope in _GRANTS[self.scope]


class KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[KeyRecord] = Field(default_factory=list)


def new_key() -> str:
    """A fresh high-entropy key (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def read_keys_file(path: Path) -> list[KeyRecord]:
    """The records in a keys file; a WhaleidError names the file and what is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise WhaleidError(f"cannot read keys file {path}: {exc.strerror or exc}") from exc
    try:
        return KeysFile.model_validate_json(text).keys
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "file"
        raise WhaleidError(f"keys file {path}: {where}: {first['msg']}") from exc


def add_key(path: Path, *, scope: Scope, name: str = "") -> tuple[str, KeyRecord]:
    """Make a key, append its hash to the keys file (created 0600 if absent) and return the key
    (to show once) with its record."""
    records = read_keys_file(path) if path.exists() else []
    key = new_key()
    record = KeyRecord(name=name, scope=scope, sha256=hash_key(key))
    content = KeysFile(keys=[*records, record]).model_dump_json(indent=2) + "\n"
    # Write beside and rename, so a reader never sees half a file; 0600: hashes are not secrets,
    # but there is no reason to show them around either.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(content)
    os.replace(tmp, path)
    return key, record


class KeyRing:
    """The keys a running service accepts."""

    def __init__(self, records: Iterable[KeyRecord]):
        self.records = list(records)
        self._digests = [bytes.fromhex(r.sha256) for r in self.records]

    @classmethod
    def load(cls, keys_file: Path | None, records: Iterable[KeyRecord] = ()) -> KeyRing:
        from_file = read_keys_file(keys_file) if keys_file is not None else []
        return cls([*from_file, *records])

    def __len__(self) -> int:
        return len(self.records)

    def authenticate(self, key: str) -> KeyRecord | None:
        """The record of `key`, or None. Every record is compared, each in constant time, so the
        time taken says nothing about which record (or how much of a digest) matched."""
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
        found: KeyRecord | None = None
        for record, stored in zip(self.records, self._digests, strict=True):
            if hmac.compare_digest(digest, stored) and found is None:
                found = record
        return found


def dumps_records(records: Iterable[KeyRecord]) -> str:
    """Records as the JSON the WHALEID_API_KEYS setting takes."""
    return json.dumps([r.model_dump(mode="json") for r in records])
