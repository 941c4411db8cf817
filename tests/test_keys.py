"""API keys: shown once, stored as hashes, checked with scopes; settings that name their
variable."""

from __future__ import annotations

import io
import json
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.keys import KeyRing, add_key, hash_key, read_keys_file
from app.main import create_app
from app.settings import Settings, SettingsError, load_settings

REPO = Path(__file__).resolve().parents[1]


def test_add_key_stores_only_a_hash(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    key, record = add_key(path, scope="write", name="lab")
    other, _ = add_key(path, scope="read")
    assert key != other and len(key) > 40
    text = path.read_text()
    assert key not in text and hash_key(key) in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [r.scope for r in read_keys_file(path)] == ["write", "read"]
    ring = KeyRing.load(path)
    assert ring.authenticate(key) == record
    assert ring.authenticate(other).scope == "read"  # type: ignore[union-attr]
    assert ring.authenticate(key + "x") is None and ring.authenticate("") is None


def test_scopes() -> None:
    ring = KeyRing([])
    assert ring.authenticate("anything") is None  # no built-in key
    _, write = add_key_in_memory("write")
    _, read = add_key_in_memory("read")
    assert write.allows("write") and write.allows("read")
    assert read.allows("read") and not read.allows("write")


def add_key_in_memory(scope: str):  # type: ignore[no-untyped-def]
    from app.keys import KeyRecord, new_key

    key = new_key()
    return key, KeyRecord(scope=scope, sha256=hash_key(key))  # type: ignore[arg-type]


def test_keys_command_prints_the_key_once(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    run = [sys.executable, "-m", "app.cli", "keys"]
    made = subprocess.run(
        [*run, "create", "--scope", "write", "--name", "ci", "--file", path],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    key = made.stdout.strip()
    assert key.startswith("whid_") and "not stored" in made.stderr
    listed = subprocess.run(
        [*run, "list", "--file", path], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert "write" in listed.stdout and "ci" in listed.stdout and key not in listed.stdout
    assert KeyRing.load(path).authenticate(key) is not None


def test_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.setenv("WHALEID_BUNDLE", str(tmp_path / "missing"))
    monkeypatch.setenv("WHALEID_MAX_BATCH", "0")
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "WHALEID_BUNDLE" in str(err.value) and "WHALEID_MAX_BATCH" in str(err.value)
    monkeypatch.delenv("WHALEID_BUNDLE")
    with pytest.raises(SettingsError, match="WHALEID_BUNDLE is required"):
        load_settings()


def test_keys_and_providers_from_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, toy_bundle: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    key, record = add_key_in_memory("read")
    monkeypatch.setenv("WHALEID_API_KEYS", json.dumps([record.model_dump(mode="json")]))
    monkeypatch.setenv("WHALEID_PROVIDERS", "cpu")
    monkeypatch.setenv("WHALEID_BUNDLE", str(toy_bundle))
    settings = load_settings()
    assert settings.providers == ["cpu"]
    assert KeyRing.load(None, settings.api_keys).authenticate(key) == record
    assert settings.gallery == f"sqlite:///{tmp_path / 'gallery.db'}"


def jpeg() -> bytes:
    """A photo with something in it (a flat colour is refused as unusable)."""
    buf = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, "JPEG")
    return buf.getvalue()


def test_open_identify_still_guards_writes(tmp_path: Path, toy_bundle: Path) -> None:
    settings = Settings(
        bundle=toy_bundle,
        gallery=str(tmp_path / "g.db"),
        open_identify=True,
        providers=["cpu"],
        warmup=False,
        _env_file=None,  # type: ignore[call-arg]
    )
    with TestClient(create_app(settings)) as client:
        files = {"image": ("a.jpg", jpeg(), "image/jpeg")}
        assert client.post("/identify", files=files).status_code == 200
        write = client.post("/gallery", files=files, data={"individual_id": "a"})
        assert write.status_code == 401 and write.json()["error"]["code"] == "missing_key"
        listing = client.get("/gallery/individuals", headers={"X-API-Key": "guess"})
        assert listing.status_code == 403
