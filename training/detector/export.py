"""A detector run → ONNX with NMS inside, checked against ultralytics before it is accepted.

ultralytics' own export (`format="onnx", nms=True`) with a dynamic batch axis: serving
(`app.detector.OnnxDetector`) then needs only onnxruntime, our letterbox and an argmax.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from app.detector import OnnxDetector
from app.manifest import DetectorSpec
from gallery.errors import WhaleidError
from training.detector import yolo
from training.detector.evaluate import box_iou, held_out
from training.detector.predict import TorchDetector
from training.detector.run import load_run

__all__ = ["EXPORT_BATCH", "PARITY_IOU", "ExportError", "export_detector", "parity_ious"]

log = logging.getLogger(__name__)

# ultralytics unrolls its embedded NMS over the export batch, so a "dynamic" batch axis takes
# 1..EXPORT_BATCH images per run (OnnxDetector reads the ceiling from the model's metadata).
EXPORT_BATCH = 8
# Boxes under this never leave the model; above it the manifest's `confidence` decides, so a
# bundle's threshold can be retuned without re-exporting.
EXPORT_CONFIDENCE = 0.01
EXPORT_MAX_DET = 10  # we keep one box a photo; a few more show what NMS let through
PARITY_IOU = 0.98
PARITY_PHOTOS = 8


class ExportError(WhaleidError):
    """The exported detector does not agree with the trained one."""


def export_detector(
    run_dir: Path,
    out_file: Path,
    *,
    imgsz: int | None = None,
    confidence: float = 0.25,
    padding: float = 0.1,
    check: bool = True,
) -> DetectorSpec:
    """Export the run's best weights to `out_file`; returns the bundle's detector entry.

    `imgsz` defaults to the training size. With `check`, onnxruntime and ultralytics must give
    the same best box (IoU ≥ PARITY_IOU) on a few held-out photos, or ExportError is raised.
    """
    run = load_run(run_dir)
    imgsz = imgsz or run.config.imgsz
    if imgsz % 32:
        raise WhaleidError(f"--imgsz must be a multiple of 32 (YOLO's stride), not {imgsz}")
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    ultralytics = yolo.load()
    with yolo.offline(), tempfile.TemporaryDirectory() as tmp:
        # ultralytics writes the .onnx beside the weights: export a copy, keep the run as it was
        weights = Path(tmp) / "detector.pt"
        shutil.copyfile(run.weights, weights)
        model = ultralytics.YOLO(str(weights), task="detect")
        exported = model.export(
            format="onnx",
            nms=True,
            dynamic=True,
            batch=EXPORT_BATCH,
            imgsz=imgsz,
            conf=min(EXPORT_CONFIDENCE, confidence),
            max_det=EXPORT_MAX_DET,
            simplify=True,
            device="cpu",
            verbose=False,
        )
        shutil.move(exported, out_file)
    names = model.names
    spec = DetectorSpec(
        file=out_file.name,
        input_size=imgsz,
        class_names=[names[i] for i in sorted(names)],
        confidence=confidence,
        padding=padding,
    )
    if check:
        _check(run_dir, out_file, spec)
    return spec


def parity_ious(
    weights: Path, onnx_file: Path, spec: DetectorSpec, photos: list[Path]
) -> list[float]:
    """IoU of the ONNX best box with ultralytics' best box, for each photo where ultralytics
    finds one at the spec's confidence (0 where onnxruntime finds none)."""
    from app.decode import open_image

    images = [open_image(p) for p in photos]
    reference = TorchDetector(weights, imgsz=spec.input_size, confidence=spec.confidence)
    # onnxruntime at a slightly lower threshold: a box at 0.2501 in torch may be 0.2499 here
    lenient = spec.model_copy(update={"confidence": max(0.0, spec.confidence - 0.02)})
    onnx = OnnxDetector(onnx_file, lenient)
    ious = []
    for ref, got in zip(reference.detect(images), onnx.detect(images), strict=True):
        if ref is not None:
            ious.append(0.0 if got is None else box_iou(ref.box, got.box))
    return ious


def _check(run_dir: Path, onnx_file: Path, spec: DetectorSpec) -> None:
    run = load_run(run_dir)
    try:
        photos = [path for path, _ in held_out(run, limit=PARITY_PHOTOS)]
    except WhaleidError as exc:  # the catalogue has moved since training
        log.warning("detector export: parity not checked, no held-out photos (%s)", exc)
        return
    ious = parity_ious(run.weights, onnx_file, spec, photos)
    if not ious:
        log.warning("detector export: parity not checked, the detector found nothing")
        return
    if min(ious) < PARITY_IOU:
        bad = sum(iou < PARITY_IOU for iou in ious)
        raise ExportError(
            f"{onnx_file} disagrees with ultralytics on {bad} of {len(ious)} photos "
            f"(lowest best-box IoU {min(ious):.3f} < {PARITY_IOU})"
        )
