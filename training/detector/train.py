"""Train the YOLO cropper on a catalogue's boxes with ultralytics, offline."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from gallery.errors import NotFoundError, WhaleidError
from training.detector import yolo
from training.detector.config import DetectorTrainConfig
from training.detector.dataset import build_dataset
from training.detector.run import ULTRALYTICS_DIR, DetectorRun

__all__ = ["train_detector"]

# Set by us from the config or the run layout; an override may not move them.
_OWNED_ARGS = frozenset(
    {"data", "project", "name", "exist_ok", "imgsz", "epochs", "batch", "seed", "device"}
    | {"workers", "cache", "patience", "pretrained", "resume", "plots", "amp", "model"}
)


def train_detector(catalogue: Path, run_dir: Path, config: DetectorTrainConfig) -> DetectorRun:
    """Train on `catalogue`, writing the run folder `run_dir`; returns its detector.json."""
    owned = sorted(_OWNED_ARGS & set(config.overrides))
    if owned:
        raise WhaleidError(f"--set cannot change {', '.join(owned)}: use the matching option")
    if config.weights is not None and not config.weights.is_file():
        # ultralytics would take a missing file for an asset name and try to download it
        raise NotFoundError(f"--weights {config.weights} does not exist")
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    dataset = build_dataset(
        catalogue,
        run_dir / "dataset",
        config.class_names,
        val_fraction=config.val_fraction,
        seed=config.seed,
    )
    ultralytics = yolo.load()
    import torch

    run = DetectorRun(
        config=config,
        catalogue=str(Path(catalogue).resolve()),
        dataset=dataset,
        ultralytics_version=ultralytics.__version__,
        torch_version=torch.__version__,
        run_dir=run_dir,
    )
    run.write()  # up front, so a run that dies still says what it was
    started = time.monotonic()
    with yolo.offline():
        model = _build_model(ultralytics, config)
        model.train(**_train_args(config, dataset.data_yaml, run_dir))
        trainer_metrics = dict(model.trainer.metrics or {})
    run.seconds = round(time.monotonic() - started, 1)
    run.metrics = {
        key.removeprefix("metrics/").removesuffix("(B)"): round(float(value), 5)
        for key, value in trainer_metrics.items()
        if key.startswith("metrics/")
    }
    run.write()
    return run


def _build_model(ultralytics: Any, config: DetectorTrainConfig) -> Any:
    if not config.model.endswith((".yaml", ".yml")):
        raise WhaleidError(
            f"--model {config.model}: give a model yaml (e.g. yolo11n.yaml); to start from a "
            "checkpoint add --weights PATH"
        )
    try:
        model = ultralytics.YOLO(config.model, task="detect")
    except FileNotFoundError as exc:
        raise NotFoundError(f"--model {config.model}: no such ultralytics model yaml") from exc
    if config.weights is not None:
        model.load(str(config.weights))  # copies the layers whose shapes match
    return model


def _train_args(config: DetectorTrainConfig, data_yaml: Path, run_dir: Path) -> dict[str, Any]:
    return {
        **config.overrides,
        **yolo.OFFLINE_ARGS,
        "amp": "bf16" if config.amp else False,
        "data": str(data_yaml),
        "imgsz": config.imgsz,
        "epochs": config.epochs,
        "batch": config.batch,
        "seed": config.seed,
        "device": config.device,
        "workers": config.workers,
        "cache": "ram" if config.cache else False,
        "patience": config.patience,
        "pretrained": str(config.weights) if config.weights else False,
        # ultralytics' output goes inside our run folder, whatever its settings.json says
        "project": str(run_dir),
        "name": ULTRALYTICS_DIR,
        "exist_ok": True,
    }
