"""Viewpoints and encounters through the commands, with toy ONNX bundles: `whaleid gallery
import` of a catalogue with a viewpoint column, `show`, the CSV export, `reembed` (the labels
stay), and `whaleid predict --photos` with viewpoint and encounter columns."""

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
from gallery.gallery import Gallery

INDIVIDUALS, PHOTOS = 4, 3
SIDES = ["Left", "right", ""]  # one photo of each side per individual, the third unknown


def write_catalogue(root: Path) -> Path:
    """Each individual a pattern, each photo a noisy copy, with a viewpoint column."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(INDIVIDUALS):
        pattern = rng.integers(0, 255, (48, 64, 3))
        for j in range(PHOTOS):
            noisy = np.clip(pattern + rng.normal(0, 8, pattern.shape), 0, 255).astype(np.uint8)
            name = f"w{i}_{j}.png"
            Image.fromarray(noisy).save(root / "images" / name)
            rows.append(f"{name},orca,whale-{i},{SIDES[j]}")
    header = "image,species,individual_id,viewpoint\n"
    (root / "train.csv").write_text(header + "\n".join(rows) + "\n")
    return root


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, Path, str]:
    catalogue = write_catalogue(tmp_path / "cat")
    old = make_toy_bundle(tmp_path / "old", dims=(8, 4))
    new = make_toy_bundle(tmp_path / "new", dims=(16,), flip_tta=False)
    return catalogue, old, new, str(tmp_path / "g.db")


def gallery_cli(db: str, *args: str) -> int:
    return main(["gallery", "--gallery", db, *args])


def exported(db: str, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    """filename → viewpoint in the CSV export."""
    assert gallery_cli(db, "export") == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    return {r["filename"]: r["viewpoint"] for r in rows}


def test_viewpoints_survive_import_export_and_reembed(
    setup: tuple[Path, Path, Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    catalogue, old, new, db = setup
    assert gallery_cli(db, "import", "--bundle", str(old), "--catalogue", str(catalogue)) == 0
    capsys.readouterr()
    expected = {
        f"w{i}_{j}.png": SIDES[j].lower() for i in range(INDIVIDUALS) for j in range(PHOTOS)
    }
    assert exported(db, capsys) == expected
    assert gallery_cli(db, "show", "whale-0") == 0
    shown = capsys.readouterr().out
    assert "w0_0.png  encounter=-  viewpoint=left" in shown
    assert "w0_2.png  encounter=-  viewpoint=-" in shown

    assert gallery_cli(db, "reembed", "--bundle", str(new)) == 0
    capsys.readouterr()
    assert exported(db, capsys) == expected
    pipeline = Pipeline.from_bundle(new)
    with Gallery.open(db, fingerprint=pipeline.fingerprint, dim=16) as gallery:
        # The rebuilt index knows the viewpoints: left photos and unknown ones.
        assert gallery.count_compatible("left") == 2 * INDIVIDUALS
        photo = Image.open(catalogue / "images" / "w1_1.png").convert("RGB")
        query = pipeline.embed([photo]).vectors
        (row,) = gallery.search(query, threshold=0.5, viewpoint="left")
        records = [gallery.image(c.evidence_image_id) for c in row if c.evidence_image_id]
        assert records and all(r.viewpoint in ("left", None) for r in records)
        assert "w1_1.png" not in {r.filename for r in records}  # the right-side photo itself


def test_a_bad_viewpoint_in_the_catalogue_stops_the_import(
    setup: tuple[Path, Path, Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    catalogue, old, _, db = setup
    train = catalogue / "train.csv"
    train.write_text(train.read_text().replace(",Left", ",left side", 1))
    assert gallery_cli(db, "import", "--bundle", str(old), "--catalogue", str(catalogue)) == 2
    assert "w0_0.png: viewpoint 'left side'" in capsys.readouterr().err


def test_predict_photos_by_encounter(
    setup: tuple[Path, Path, Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    catalogue, old, _, db = setup
    assert gallery_cli(db, "import", "--bundle", str(old), "--catalogue", str(catalogue)) == 0
    images = catalogue / "images"

    def predict(listing: str) -> list[list[str]]:
        photos = tmp_path / "photos.csv"
        photos.write_text(listing)
        out = tmp_path / "out.csv"
        code = main(
            ["predict", "--bundle", str(old), "--gallery", db, "--photos", str(photos),
             "--out", str(out), "--quiet"]
        )  # fmt: skip
        assert code == 0
        return list(csv.reader(out.open()))

    # One row per photo, as today, each searched under its own viewpoint.
    rows = predict(f"image,viewpoint\n{images}/w0_0.png,left\n{images}/w2_1.png,\n")
    assert rows[0] == ["image", "predictions"]
    assert [(r[0], r[1].split()[0]) for r in rows[1:]] == [
        ("w0_0.png", "whale-0"),
        ("w2_1.png", "whale-2"),
    ]
    # With an encounter column: one row per encounter, in order of first appearance.
    rows = predict(
        "image,viewpoint,encounter\n"
        f"{images}/w3_0.png,left,e2\n{images}/w1_0.png,left,e1\n"
        f"{images}/w1_1.png,right,e1\n{images}/w3_2.png,,e2\n"
    )
    assert rows[0] == ["encounter", "predictions"]
    assert [(r[0], r[1].split()[0]) for r in rows[1:]] == [("e2", "whale-3"), ("e1", "whale-1")]
    assert all(len(r[1].split()) == 5 for r in rows[1:])

    bad = tmp_path / "bad.csv"
    bad.write_text(f"image,encounter\n{images}/w0_0.png,\n")
    code = main(
        ["predict", "--bundle", str(old), "--gallery", db, "--photos", str(bad),
         "--out", str(tmp_path / "x.csv")]
    )  # fmt: skip
    assert code == 2
    assert "empty encounter" in capsys.readouterr().err
