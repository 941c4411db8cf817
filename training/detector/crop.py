"""Crop every catalogue photo to its detected box, for training the embedders.

Writes OUT/images/<image> (the padded crop, or the whole photo where nothing was found),
OUT/train.csv (copied, so OUT reads as a catalogue of crops), OUT/boxes.csv and OUT/crops.json.
boxes.csv holds what each crop was cut from: `image,x1,y1,x2,y2,confidence,padding` with the
detected box in the original photo's pixels before padding (the whole photo, confidence empty,
where nothing was found), so training can either read the crops or re-crop the originals
with `app.preprocess.crop_box` and its own padding.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

from pydantic import BaseModel, ConfigDict
from tqdm import tqdm

from app.decode import UnreadableImageError, open_image
from app.preprocess import crop_box
from training.detector.dataset import read_photos
from training.detector.predict import TorchDetector
from training.detector.run import load_run

__all__ = ["CropReport", "crop_catalogue"]


class CropReport(BaseModel):
    """What `crop_catalogue` did; also written to OUT/crops.json."""

    model_config = ConfigDict(extra="forbid")

    run: str
    catalogue: str
    out: str
    padding: float
    confidence: float
    imgsz: int
    photos: int
    cropped: int
    whole_photo: int  # nothing found at `confidence`: the whole photo was kept
    unreadable: list[str]  # photos in train.csv that could not be decoded: left out


def crop_catalogue(
    run_dir: Path,
    catalogue: Path,
    out_dir: Path,
    *,
    padding: float = 0.1,
    confidence: float = 0.25,
    imgsz: int | None = None,
    batch: int = 16,
    device: str | None = None,
    progress: bool = True,
) -> CropReport:
    """Detect and crop every photo of `catalogue` into `out_dir`; returns the counts."""
    run = load_run(run_dir)
    catalogue, out_dir = Path(catalogue), Path(out_dir)
    photos = read_photos(catalogue)
    detector = TorchDetector(
        run.weights, imgsz=imgsz or run.config.imgsz, confidence=confidence, device=device
    )
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(catalogue / "train.csv", out_dir / "train.csv")
    report = CropReport(
        run=str(run.run_dir),
        catalogue=str(catalogue),
        out=str(out_dir),
        padding=padding,
        confidence=confidence,
        imgsz=detector.imgsz,
        photos=len(photos),
        cropped=0,
        whole_photo=0,
        unreadable=[],
    )
    with (out_dir / "boxes.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "x1", "y1", "x2", "y2", "confidence", "padding"])
        bar = tqdm(total=len(photos), desc="cropping", unit="photo", disable=not progress)
        for start in range(0, len(photos), batch):
            names, images = [], []
            for photo in photos[start : start + batch]:
                try:
                    images.append(open_image(catalogue / "images" / photo.image))
                    names.append(photo.image)
                except UnreadableImageError:
                    report.unreadable.append(photo.image)
            for name, img, found in zip(names, images, detector.detect(images), strict=True):
                box = found.box if found else (0.0, 0.0, float(img.width), float(img.height))
                target = out_dir / "images" / name
                target.parent.mkdir(parents=True, exist_ok=True)
                crop_box(img, box if found else None, padding if found else 0.0).save(target)
                writer.writerow(
                    [name, *(f"{v:.1f}" for v in box)]
                    + ([f"{found.confidence:.4f}", padding] if found else ["", 0.0])
                )
                report.cropped += found is not None
                report.whole_photo += found is None
            bar.update(len(photos[start : start + batch]))
            bar.set_postfix(whole_photo=report.whole_photo)
        bar.close()
    (out_dir / "crops.json").write_text(report.model_dump_json(indent=2) + "\n")
    return report
