"""OnnxDetector against hand-built ONNX models (no training, no torch): letterbox mapping,
best box, minimum confidence, whole-photo fallback, batching, and bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from app.detector import OnnxDetector
from app.manifest import BundleError, DetectorSpec
from app.preprocess import letterbox

SIZE = 64


def make_fixed_detector(
    path: Path, rows: list[list[float]], *, batch: int | str = "batch", meta_batch: int = 4
) -> None:
    """An ONNX 'detector' answering the given rows (x1, y1, x2, y2, conf, cls) for every image,
    shifted right by 10 × the image's mean pixel so that answers mixed up in a batch show."""
    table = np.zeros((1, 10, 6), np.float32)
    if rows:
        table[0, : len(rows)] = rows
    shift = np.zeros((1, 10, 6), np.float32)
    shift[0, : len(rows), [0, 2]] = 10.0
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["mean", "shape"], ["mean3"]),
        helper.make_node("Mul", ["mean3", "shift"], ["shifts"]),
        helper.make_node("Add", ["shifts", "table"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fixed_detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [batch, 10, 6])],
        initializer=[
            numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "shape"),
            numpy_helper.from_array(shift, "shift"),
            numpy_helper.from_array(table, "table"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"batch": str(meta_batch)})
    onnx.checker.check_model(model)
    onnx.save(model, path)


def _spec(confidence: float = 0.25) -> DetectorSpec:
    return DetectorSpec(file="detector.onnx", input_size=SIZE, confidence=confidence)


def test_best_box_is_mapped_back_to_the_photo(tmp_path: Path) -> None:
    photo = Image.new("RGB", (200, 100), (0, 0, 0))  # letterboxed: scale 0.32, pad_y 16
    _, placement = letterbox(photo, SIZE)
    truth = np.array([[50.0, 20.0, 150.0, 80.0]])
    # the model's shift is 10 × the mean of the letterboxed input (grey padding included)
    shift = 10 * float(letterbox(photo, SIZE)[0].mean())
    in_letterbox = truth * placement.scale + [placement.pad_x, placement.pad_y] * 2
    in_letterbox[0, [0, 2]] -= shift
    rows = [
        [*(in_letterbox[0] + 3), 0.4, 0],  # a weaker box elsewhere
        [*in_letterbox[0], 0.9, 0],
    ]
    make_fixed_detector(tmp_path / "d.onnx", rows)
    (crop,) = OnnxDetector(tmp_path / "d.onnx", _spec()).detect([photo])
    assert crop is not None
    assert crop.confidence == pytest.approx(0.9)
    np.testing.assert_allclose(crop.box, truth[0], atol=1e-3)


def test_under_the_manifest_confidence_the_whole_photo_is_used(tmp_path: Path) -> None:
    make_fixed_detector(tmp_path / "d.onnx", [[10, 10, 40, 40, 0.3, 0]])
    photo = Image.new("RGB", (64, 64))
    assert OnnxDetector(tmp_path / "d.onnx", _spec(0.5)).detect([photo]) == [None]
    assert OnnxDetector(tmp_path / "d.onnx", _spec(0.2)).detect([photo])[0] is not None


def test_no_detections_and_padding_rows_give_the_whole_photo(tmp_path: Path) -> None:
    make_fixed_detector(tmp_path / "d.onnx", [])  # all zero rows: ultralytics' padding
    photo = Image.new("RGB", (64, 64))
    assert OnnxDetector(tmp_path / "d.onnx", _spec(0.0)).detect([photo]) == [None]


@pytest.mark.parametrize("batch", ["batch", 1, 3])
def test_batches_past_the_ceiling_and_fixed_batches(tmp_path: Path, batch: int | str) -> None:
    make_fixed_detector(tmp_path / "d.onnx", [[8, 8, 56, 56, 0.8, 0]], batch=batch, meta_batch=4)
    detector = OnnxDetector(tmp_path / "d.onnx", _spec())
    assert detector.max_batch == (4 if batch == "batch" else batch)
    assert detector.dynamic_batch == (batch == "batch")
    photos = [Image.new("RGB", (64 + i, 64), (i, i, i)) for i in range(10)]
    crops = detector.detect(photos)
    assert len(crops) == 10 and all(c is not None for c in crops)
    assert crops == [detector.detect([p])[0] for p in photos]
    assert len({c.box for c in crops if c is not None}) == 10  # each photo its own answer
    assert detector.detect([]) == []


def test_bad_model_files_are_bundle_errors(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not found"):
        OnnxDetector(tmp_path / "missing.onnx", _spec())
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(BundleError, match=r"junk\.onnx is not a model onnxruntime can load"):
        OnnxDetector(tmp_path / "junk.onnx", _spec())
    make_fixed_detector(tmp_path / "d.onnx", [])
    with pytest.raises(BundleError, match="input_size 96"):
        OnnxDetector(tmp_path / "d.onnx", DetectorSpec(file="d.onnx", input_size=96))
