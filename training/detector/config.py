"""What a detector training run is made of; recorded in the run's detector.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["DetectorTrainConfig"]


class DetectorTrainConfig(BaseModel):
    """A YOLO detector trained from scratch (or from `weights`) on a catalogue's boxes."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        "yolo11n.yaml",
        description="ultralytics model yaml: a name it ships (yolov8n.yaml, yolo11s.yaml, ...; "
        "the letter is the scale) or a path to one",
    )
    weights: Path | None = Field(None, description="a .pt checkpoint to start from (local file)")
    class_names: list[str] = Field(default_factory=lambda: ["fin"], min_length=1)
    imgsz: int = Field(640, ge=32, description="square training size in pixels (multiple of 32)")
    epochs: int = Field(100, ge=1)
    batch: int = Field(16, ge=1)
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="individuals held out")
    seed: int = 0
    device: str | None = Field(None, description="'cpu', '0', '0,1'; None: GPU if available")
    workers: int = Field(2, ge=0, description="dataloader processes")
    cache: bool = Field(False, description="keep decoded photos in RAM")
    patience: int = Field(50, ge=0, description="epochs without improvement before stopping")
    amp: bool = Field(
        False,
        description="bf16 mixed precision on CUDA (bf16 skips ultralytics' AMP check, which "
        "downloads yolo11n.pt)",
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="further ultralytics train arguments (lr0, mosaic, scale, ...), passed as is",
    )

    @field_validator("imgsz")
    @classmethod
    def _stride_multiple(cls, value: int) -> int:
        if value % 32:
            raise ValueError(f"imgsz must be a multiple of 32 (YOLO's stride), not {value}")
        return value

    @field_validator("class_names")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value) or any(not name.strip() for name in value):
            raise ValueError(f"class names must be distinct and non-empty: {value}")
        return value
