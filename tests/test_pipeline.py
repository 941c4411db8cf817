"""The onnxruntime pipeline on toy bundles: ensemble maths against a numpy reference, boxes,
batching, fp16, and a bundle refused with a message naming the file at fault."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fixtures.bundle import TOY_SIZE, make_toy_bundle, make_toy_embedder
from PIL import Image

from app.bundle import load_bundle
from app.manifest import BundleError, Manifest
from app.pipeline import Pipeline
from app.preprocess import Crop, EmbedTransform, pad_box
from app.sessions import resolve_providers


def photos(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)) for _ in range(n)]


def reference_member(img: Image.Image, weight: np.ndarray, flip: bool) -> np.ndarray:
    """One member's embedding computed by hand: resize, normalise, linear map, flip average."""
    x = EmbedTransform(input_size=TOY_SIZE)(img)
    outs = [x.reshape(-1) @ weight]
    if flip:
        outs.append(x[:, :, ::-1].reshape(-1) @ weight)
    unit = [o / np.linalg.norm(o) for o in outs]
    mean = np.mean(unit, axis=0)
    return mean / np.linalg.norm(mean)


def test_ensemble_cosine_is_the_weighted_mean_of_member_cosines(tmp_path: Path) -> None:
    bundle = make_toy_bundle(tmp_path / "b", dims=(8, 4), weights=(3.0, 1.0))
    w0 = make_toy_embedder(tmp_path / "w0.onnx", 8, seed=0)
    w1 = make_toy_embedder(tmp_path / "w1.onnx", 4, seed=1)
    pipeline = Pipeline.from_bundle(bundle)
    a, b = photos(2)
    vectors = pipeline.embed([a, b]).vectors
    assert vectors.shape == (2, 12) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    cos0 = reference_member(a, w0, True) @ reference_member(b, w0, True)
    cos1 = reference_member(a, w1, True) @ reference_member(b, w1, True)
    assert vectors[0] @ vectors[1] == pytest.approx((3 * cos0 + cos1) / 4, abs=1e-5)
    # The first member's part is its own normalised embedding, scaled by sqrt(3/4).
    np.testing.assert_allclose(
        vectors[0, :8], reference_member(a, w0, True) * np.sqrt(3 / 4), atol=1e-5
    )


def test_batch_answers_equal_single_answers(toy_bundle: Path) -> None:
    pipeline = Pipeline.from_bundle(toy_bundle)
    images = photos(5)
    batch = pipeline.embed(images).vectors
    single = np.concatenate([pipeline.embed([img]).vectors for img in images])
    np.testing.assert_allclose(batch, single, atol=1e-6)
    assert pipeline.embed([]).vectors.shape == (0, pipeline.embedding_dim)


def test_boxes_replace_the_detector(toy_bundle: Path) -> None:
    pipeline = Pipeline.from_bundle(toy_bundle)
    img = photos(1)[0]
    box = (5.0, 4.0, 30.0, 25.0)
    embedded = pipeline.embed([img, img], boxes=[box, None])
    assert embedded.crops == [Crop(box=box, confidence=1.0), None]
    cropped = img.crop(pad_box(box, pipeline.padding, img.size))
    np.testing.assert_allclose(embedded.vectors[0], pipeline.embed([cropped]).vectors[0], atol=1e-6)
    np.testing.assert_allclose(embedded.vectors[1], pipeline.embed([img]).vectors[0], atol=1e-6)


def test_pipeline_exposes_the_manifest(toy_bundle: Path) -> None:
    pipeline = Pipeline.from_bundle(toy_bundle)
    manifest = Manifest.read(toy_bundle)
    assert pipeline.fingerprint == manifest.fingerprint
    assert pipeline.embedding_dim == 12
    assert pipeline.manifest.threshold == manifest.threshold


def test_fp16_members_take_fp16_input(tmp_path: Path) -> None:
    fp32 = Pipeline.from_bundle(make_toy_bundle(tmp_path / "fp32"))
    fp16 = Pipeline.from_bundle(make_toy_bundle(tmp_path / "fp16", fp16=True))
    assert all(m.input_dtype == np.float16 for m in fp16.bundle.embedders)
    images = photos(3)
    a, b = fp32.embed(images).vectors, fp16.embed(images).vectors
    assert b.dtype == np.float32
    assert np.min(np.sum(a * b, axis=1)) > 0.999


def tampered_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_a_changed_model_file_is_named(toy_bundle: Path, tmp_path: Path) -> None:
    bundle = tampered_copy(toy_bundle, tmp_path / "b")
    with (bundle / "embedder-1.onnx").open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match=r"embedder-1\.onnx has changed since export"):
        Pipeline.from_bundle(bundle)


def test_a_missing_model_file_is_named(toy_bundle: Path, tmp_path: Path) -> None:
    bundle = tampered_copy(toy_bundle, tmp_path / "b")
    (bundle / "embedder-0.onnx").unlink()
    with pytest.raises(BundleError, match=r"missing embedder-0\.onnx"):
        load_bundle(bundle)


def edit_manifest(bundle: Path, **changes: object) -> None:
    data = json.loads((bundle / "manifest.json").read_text())
    for key, value in changes.items():
        data["embedders"][0][key] = value
    (bundle / "manifest.json").write_text(json.dumps(data))


def test_an_input_size_other_than_the_manifest_is_refused(toy_bundle: Path, tmp_path: Path) -> None:
    bundle = tampered_copy(toy_bundle, tmp_path / "b")
    edit_manifest(bundle, transform={"input_size": [32, 32]})
    with pytest.raises(BundleError, match=r"embedder-0\.onnx: input 'input' has shape"):
        load_bundle(bundle)


def test_an_output_dim_other_than_the_manifest_is_refused(toy_bundle: Path, tmp_path: Path) -> None:
    bundle = tampered_copy(toy_bundle, tmp_path / "b")
    data = json.loads((bundle / "manifest.json").read_text())
    data["embedders"][0]["output_dim"] = 9
    data["embedding_dim"] = 13
    (bundle / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"embedder-0\.onnx: output 'embedding' has shape"):
        load_bundle(bundle)


def test_not_a_bundle_and_bad_manifest(tmp_path: Path, toy_bundle: Path) -> None:
    with pytest.raises(BundleError, match=r"has no manifest\.json"):
        load_bundle(tmp_path)
    bundle = tampered_copy(toy_bundle, tmp_path / "b")
    edit_manifest(bundle, weight=-1)
    with pytest.raises(BundleError, match=r"manifest\.json: embedders\.0\.weight"):
        load_bundle(bundle)


def test_providers_are_checked() -> None:
    assert resolve_providers(None)[-1] == "CPUExecutionProvider"
    assert resolve_providers(["cpu"]) == ["CPUExecutionProvider"]
    with pytest.raises(BundleError, match="'NoSuchExecutionProvider' is not available"):
        resolve_providers(["NoSuchExecutionProvider"])


def test_sessions_do_not_spin_unless_asked(toy_bundle: Path) -> None:
    """A bundle's sessions are opened with intra-op spinning off unless asked: the spinning
    threads of one session steal the cores of the next on a CPU host."""
    key = "session.intra_op.allow_spinning"
    for spinning, expected in ((False, "0"), (True, "1")):
        bundle = load_bundle(toy_bundle, ["cpu"], spinning=spinning)
        for embedder in bundle.embedders:
            assert embedder.session.get_session_options().get_session_config_entry(key) == expected
