"""One catalogue, one box rule: training, the detector dataset and `whaleid gallery import`
crop every photo alike (two boxes on one photo, YOLO labels on another, none on a third)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from fixtures.bundle import make_toy_bundle
from PIL import Image

from app.cli import main
from gallery.catalogue import largest
from gallery.records import Box
from gallery.store import open_store
from training.catalogue import load_catalogue
from training.config import DataConfig
from training.detector.dataset import read_boxes

W, H = 80, 60
SMALL, LARGE = (5.0, 5.0, 25.0, 20.0), (20.0, 10.0, 70.0, 50.0)


def _yolo(box: Box) -> str:
    x1, y1, x2, y2 = box
    return f"0 {(x1 + x2) / 2 / W} {(y1 + y2) / 2 / H} {(x2 - x1) / W} {(y2 - y1) / H}\n"


def _catalogue(root: Path, *, with_csv: bool) -> Path:
    """Individuals a, b, c with photos 0 (two boxes), 1 (YOLO label only), 2 (no box)."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rows = []
    for n, ind in enumerate("abc"):
        for k in range(3):
            name = f"{ind}{k}.png"
            # Noise around a colour: a flat photo is refused as unusable, as the service does.
            noise = np.random.default_rng(3 * n + k).integers(0, 40, (H, W, 3))
            pixels = (noise + np.array([40 * n, 60 + 20 * k, 90])).astype(np.uint8)
            Image.fromarray(pixels).save(root / "images" / name)
            rows.append([name, "orca", f"fin-{ind}", "left", f"enc-{k}"])
            if k == 1 or (k == 0 and not with_csv):
                boxes = [SMALL, LARGE] if k == 0 else [(10.0, 12.0, 50.0, 40.0)]
                (root / "labels" / f"{ind}{k}.txt").write_text("".join(map(_yolo, boxes)))
    with (root / "train.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "species", "individual_id", "viewpoint", "encounter"])
        writer.writerows(rows)
    if with_csv:
        lines = [f"{ind}0.png,{','.join(map(str, b))}" for ind in "abc" for b in (SMALL, LARGE)]
        (root / "boxes.csv").write_text("image,x1,y1,x2,y2\n" + "\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("with_csv", [True, False], ids=["boxes.csv+labels", "labels-only"])
def test_training_detector_and_import_crop_alike(tmp_path: Path, with_csv: bool) -> None:
    root = _catalogue(tmp_path / "cat", with_csv=with_csv)
    training = {p.image: p.box for p in load_catalogue(DataConfig(catalogue=root)).photos}
    detector, _ = read_boxes(root, ["fin"])
    db = tmp_path / "g.db"
    bundle = make_toy_bundle(tmp_path / "bundle")
    argv = ["gallery", "--gallery", str(db), "import", "--bundle", str(bundle)]
    assert main([*argv, "--catalogue", str(root)]) == 0
    store = open_store(str(db))
    try:
        stored = {
            im.filename: (im.box, im.encounter)
            for ind in store.list_individuals()
            for im in store.get_individual(individual_id=ind.id).images
        }
    finally:
        store.close()

    assert len(stored) == len(training) == 9
    for image, box in training.items():
        from_detector = largest(detector.get(image, []))  # type: ignore[arg-type]
        assert stored[image][0] == pytest.approx(box) if box else stored[image][0] is None
        assert from_detector == pytest.approx(box) if box else from_detector is None
        assert stored[image][1] == f"enc-{image[1]}"  # the encounter column travels too
    # The rule itself: the largest of two boxes; a catalogue with boxes.csv ignores YOLO labels.
    assert training["a0.png"] == pytest.approx(LARGE)
    assert (training["a1.png"] is None) == with_csv
    assert training["a2.png"] is None
