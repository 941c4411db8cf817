"""A YOLO11 narrower than its smallest shipped scale, and a recipe that trains it on a CPU.

For the demo and the test suite, where a detector must train in minutes on two cores: 'n' is
[0.50, 0.25, 1024] (depth, width, max channels); this is about a third of its compute. The
synthetic fins are big, plain objects, so 160 px is enough. It is the number of steps that
counts: on a catalogue of 384 photos, mean IoU on held-out individuals was 0.58 after 30
epochs at 192 px and lr0 0.004, 0.79 after 40 at 160 px and lr0 0.006; on 144 photos, 20
epochs left boxes too unsure for export's ONNX parity check where 40 did not. So `cpu_recipe`
gives every catalogue about 12,000 photo-epochs, whatever its size.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from training.detector.config import DetectorTrainConfig

__all__ = ["NARROW_SCALE", "cpu_recipe", "narrow_model_yaml"]

NARROW_SCALE = [0.33, 0.125, 256]  # depth, width, max channels
PHOTO_EPOCHS = 12_000


def narrow_model_yaml(out: Path) -> Path:
    """ultralytics' yolo11.yaml with one, narrower scale, written into the folder `out`."""
    from training.detector import yolo

    ultralytics = yolo.load()  # sets ultralytics' offline switches before anything imports it
    source = Path(str(ultralytics.__file__)).parent / "cfg" / "models" / "11" / "yolo11.yaml"
    config = yaml.safe_load(source.read_text())
    config["scales"] = {"n": NARROW_SCALE}
    path = Path(out) / "yolo11-narrow.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def cpu_recipe(model_yaml: Path, photos: int) -> DetectorTrainConfig:
    """The narrow model's CPU recipe for a catalogue of `photos` photos."""
    return DetectorTrainConfig(
        model=str(model_yaml),
        imgsz=160,
        epochs=max(10, round(PHOTO_EPOCHS / max(1, photos))),
        batch=8,
        seed=0,
        device="cpu",
        workers=0,  # the CPU is better spent on the model than on worker processes
        cache=True,
        overrides={
            "val": False,  # validate once, at the end
            "warmup_epochs": 1,
            "mosaic": 0.0,  # one big fin per photo: mosaic only shrinks it
            "close_mosaic": 0,
            "optimizer": "AdamW",
            "lr0": 0.006,
            "scale": 0.25,
        },
    )
