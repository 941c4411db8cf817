"""`whaleid gallery` end to end with toy ONNX bundles: import (resumable), list, show, export,
rename, merge, delete, and reembed to another bundle."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from fixtures.bundle import make_toy_bundle
from PIL import Image

from app.cli import main
from app.pipeline import Pipeline
from gallery.gallery import FingerprintMismatchError, Gallery

INDIVIDUALS, PHOTOS = 4, 3


def write_catalogue(root: Path) -> Path:
    """Each individual a pattern, each photo a noisy copy; boxes for some photos."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    rows, boxes = [], []
    for i in range(INDIVIDUALS):
        pattern = rng.integers(0, 255, (48, 64, 3))
        for j in range(PHOTOS):
            noisy = np.clip(pattern + rng.normal(0, 8, pattern.shape), 0, 255).astype(np.uint8)
            name = f"w{i}_{j}.png"
            Image.fromarray(noisy).save(root / "images" / name)
            rows.append(f"{name},{'orca' if i % 2 else 'beluga'},whale-{i}")
            if j == 0:
                boxes.append(f"{name},4,4,60,44")
    (root / "train.csv").write_text("image,species,individual_id\n" + "\n".join(rows) + "\n")
    (root / "boxes.csv").write_text("image,x1,y1,x2,y2\n" + "\n".join(boxes) + "\n")
    return root


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, Path, str]:
    catalogue = write_catalogue(tmp_path / "cat")
    old = make_toy_bundle(tmp_path / "old", dims=(8, 4))
    new = make_toy_bundle(tmp_path / "new", dims=(16,), flip_tta=False)
    return catalogue, old, new, str(tmp_path / "g.db")


def gallery_cli(db: str, *args: str) -> int:
    return main(["gallery", "--gallery", db, *args])


def test_import_manage_export_reembed(
    setup: tuple[Path, Path, Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    catalogue, old, new, db = setup
    n = INDIVIDUALS * PHOTOS
    assert gallery_cli(db, "import", "--bundle", str(old), "--catalogue", str(catalogue)) == 0
    assert f"imported {n} photos (0 already there" in capsys.readouterr().out
    # Idempotent: a rerun (or a resumed run) embeds and stores nothing new.
    assert gallery_cli(db, "import", "--bundle", str(old), "--catalogue", str(catalogue)) == 0
    assert f"imported 0 photos ({n} already there" in capsys.readouterr().out

    # The service's view: a catalogue photo finds its individual, boxes were recorded.
    pipeline = Pipeline.from_bundle(old)
    photo = Image.open(catalogue / "images" / "w2_1.png").convert("RGB")
    query = pipeline.embed([photo]).vectors
    with Gallery.open(db, fingerprint=pipeline.fingerprint, dim=12) as g:
        assert g.size == n
        (row,) = g.search(query, threshold=0.5)
        assert row[0].individual_id == "whale-2" and row[0].score == pytest.approx(1, abs=1e-4)
        boxes = [im.box for im in g.individual("whale-0").images]
        assert boxes.count((4.0, 4.0, 60.0, 44.0)) == 1

    assert gallery_cli(db, "list", "--species", "orca") == 0
    out = capsys.readouterr().out
    assert "whale-1" in out and "whale-0" not in out and "2 of 2 individuals" in out
    assert gallery_cli(db, "show", "whale-0") == 0
    assert "w0_0.png" in capsys.readouterr().out

    assert gallery_cli(db, "rename", "whale-0", "Moby") == 0
    assert gallery_cli(db, "merge", "whale-2", "whale-3") == 1  # beluga into orca: refused
    assert "species differ" in capsys.readouterr().err
    assert gallery_cli(db, "merge", "whale-1", "whale-3") == 0
    assert gallery_cli(db, "delete", "nobody") == 1
    assert "nobody" in capsys.readouterr().err
    assert gallery_cli(db, "export") == 0
    exported = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(exported) == n
    by_individual = {r["individual_id"] for r in exported}
    assert by_individual == {"Moby", "whale-2", "whale-3"}

    # Another bundle: refused until re-embedded, then the photos give identical vectors.
    new_pipeline = Pipeline.from_bundle(new)
    with pytest.raises(FingerprintMismatchError, match="whaleid gallery reembed --bundle"):
        Gallery.open(db, fingerprint=new_pipeline.fingerprint, dim=16)
    assert gallery_cli(db, "reembed", "--bundle", str(new)) == 0
    assert f"re-embedded {n} photos" in capsys.readouterr().out
    with Gallery.open(db, fingerprint=new_pipeline.fingerprint, dim=16) as g:
        assert g.size == n
        (row,) = g.search(new_pipeline.embed([photo]).vectors, threshold=0.5)
        assert row[0].individual_id == "whale-2" and row[0].score == pytest.approx(1, abs=1e-4)

    assert gallery_cli(db, "delete", "whale-3") == 0
    assert gallery_cli(db, "delete", "--image", str(row[0].evidence_image_id)) == 0
    with Gallery.open(db, fingerprint=new_pipeline.fingerprint, dim=16) as g:
        assert g.size == n - 2 * PHOTOS - 1


def test_reserved_id_is_refused_on_every_path(
    setup: tuple[Path, Path, Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    catalogue, old, _, db = setup
    train = catalogue / "train.csv"
    original = train.read_text()
    train.write_text(original.replace("whale-3", "new_individual"))
    assert gallery_cli(db, "import", "--bundle", str(old), "--catalogue", str(catalogue)) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "new_individual" in line and "reserved" in line
    train.write_text(original)
    assert gallery_cli(db, "list") == 0
    assert "0 of 0 individuals" in capsys.readouterr().out  # the refused import stored nothing

    assert gallery_cli(db, "import", "--bundle", str(old), "--catalogue", str(catalogue)) == 0
    capsys.readouterr()
    for argv in (("rename", "whale-0", "new_individual"), ("merge", "whale-1", "new_individual")):
        assert gallery_cli(db, *argv) == 2, argv
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("whaleid gallery: error:") and "reserved" in line
    assert gallery_cli(db, "rename", "whale-0", "x" * 129) == 2
    assert "128" in capsys.readouterr().err
    assert gallery_cli(db, "show", "whale-0") == 0  # untouched


def test_gallery_settings_come_from_dotenv(
    setup: tuple[Path, Path, Path, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    catalogue, old, _, _ = setup
    monkeypatch.delenv("WHALEID_GALLERY", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(f"WHALEID_GALLERY={tmp_path / 'from-env.db'}\n")
    assert main(["gallery", "import", "--bundle", str(old), "--catalogue", str(catalogue)]) == 0
    assert (tmp_path / "from-env.db").is_file()
    assert main(["gallery", "list"]) == 0
    assert f"{INDIVIDUALS} of {INDIVIDUALS} individuals" in capsys.readouterr().out


def test_a_gallery_that_is_no_url_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gallery", "--gallery", "mysql://db/x", "list"]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "WHALEID_GALLERY" in line and "mysql://db/x" in line and "sqlite:///" in line
