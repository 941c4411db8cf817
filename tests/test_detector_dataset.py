"""The detector's dataset and options, on a tiny hand-made catalogue (no training)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml
from PIL import Image

from app.cli import main
from gallery.errors import NotFoundError, WhaleidError
from training.detector.config import DetectorTrainConfig
from training.detector.dataset import CatalogueError, build_dataset, read_boxes
from training.detector.evaluate import box_iou
from training.detector.train import train_detector

BOXES = {  # image → (x1, y1, x2, y2) in a 100×50 photo
    f"i{ind}_{n}.jpg": (10.0 + ind, 5.0 + n, 60.0 + ind, 45.0) for ind in range(5) for n in range(2)
}


def _catalogue(root: Path, *, labels: bool, csv_boxes: bool) -> Path:
    (root / "images").mkdir(parents=True)
    with (root / "train.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "species", "individual_id"])
        for image in BOXES:
            Image.new("RGB", (100, 50), (0, 80, 120)).save(root / "images" / image)
            writer.writerow([image, "dolphin", image.split("_")[0]])
        Image.new("RGB", (100, 50)).save(root / "images" / "unboxed.jpg")
        writer.writerow(["unboxed.jpg", "dolphin", "i0"])
    if labels:
        (root / "labels").mkdir()
        for image, (x1, y1, x2, y2) in BOXES.items():
            line = f"0 {(x1 + x2) / 200} {(y1 + y2) / 100} {(x2 - x1) / 100} {(y2 - y1) / 50}\n"
            (root / "labels" / image.replace(".jpg", ".txt")).write_text(line)
    if csv_boxes:
        with (root / "boxes.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["image", "x1", "y1", "x2", "y2"])
            writer.writerows([image, *box] for image, box in BOXES.items())
    return root


@pytest.mark.parametrize("source", ["labels/", "boxes.csv"])
def test_both_box_formats_read_the_same(tmp_path: Path, source: str) -> None:
    root = _catalogue(tmp_path, labels=source == "labels/", csv_boxes=source == "boxes.csv")
    boxes, found = read_boxes(root, ["fin"])
    assert found == source and set(boxes) == set(BOXES)
    for image, truth in BOXES.items():
        assert box_iou(boxes[image][0].box, truth) == pytest.approx(1.0, abs=1e-6)


def test_dataset_split_by_individual(tmp_path: Path) -> None:
    root = _catalogue(tmp_path / "cat", labels=False, csv_boxes=True)
    info = build_dataset(root, tmp_path / "ds", ["fin"], val_fraction=0.4, seed=3)
    assert (info.train_images, info.val_images, info.unlabelled_images) == (6, 4, 1)
    val = {p.name.split("_")[0] for p in (tmp_path / "ds" / "images" / "val").iterdir()}
    train = {p.name.split("_")[0] for p in (tmp_path / "ds" / "images" / "train").iterdir()}
    assert val == set(info.val_individuals) and not val & train
    data = yaml.safe_load(info.data_yaml.read_text())
    assert data["names"] == {0: "fin"} and Path(data["path"]).is_absolute()
    label = (tmp_path / "ds" / "labels" / "train").iterdir().__next__().read_text().split()
    assert label[0] == "0" and len(label) == 5


def test_catalogue_errors_name_the_file_or_option(tmp_path: Path) -> None:
    root = _catalogue(tmp_path / "cat", labels=True, csv_boxes=False)
    (root / "labels" / "i0_0.txt").write_text("2 0.5 0.5 0.2 0.2\n")
    with pytest.raises(CatalogueError, match=r"i0_0.txt:1: class 2 .*--classes fin,fluke"):
        read_boxes(root, ["fin", "fluke"])
    with pytest.raises(NotFoundError, match="no boxes"):
        read_boxes(_catalogue(tmp_path / "bare", labels=False, csv_boxes=False), ["fin"])
    with pytest.raises(NotFoundError, match=r"no train\.csv"):
        build_dataset(tmp_path, tmp_path / "ds", ["fin"], val_fraction=0.2, seed=0)


def test_train_refuses_what_would_download_or_move_the_run(tmp_path: Path) -> None:
    root = _catalogue(tmp_path / "cat", labels=False, csv_boxes=True)
    missing = DetectorTrainConfig(weights=tmp_path / "nope.pt")
    with pytest.raises(NotFoundError, match="--weights"):
        train_detector(root, tmp_path / "run", missing)
    with pytest.raises(WhaleidError, match="--set cannot change project"):
        train_detector(root, tmp_path / "run", DetectorTrainConfig(overrides={"project": "x"}))


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["detect", "train", "--catalogue", str(tmp_path), "--out", str(tmp_path / "r")]
    assert main([*argv, "--imgsz", "100"]) == 1
    assert main(["detect", "export", "--run", str(tmp_path)]) == 1
    assert main(["detect", "crop", "--run", str(tmp_path), "--catalogue", ".", "--out", "o"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        "whaleid detect: error: --imgsz: imgsz must be a multiple of 32 (YOLO's stride), not 100",
        f"whaleid detect: error: {tmp_path} is not a detector run: it has no detector.json "
        "(made by 'whaleid detect train')",
        f"whaleid detect: error: {tmp_path} is not a detector run: it has no detector.json "
        "(made by 'whaleid detect train')",
    ]
