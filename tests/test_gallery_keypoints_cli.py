"""`whaleid gallery import` and `reembed` with a bundle that has a matcher: every photo's crop
keypoints are stored beside its embedding, exactly as the service's pipeline extracts them, and
a query matched against them finds its own photo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fixtures.matcher import MATCHER_KEYPOINTS
from PIL import Image

from app.cli import main
from app.local_features import OnnxLightGlue
from app.pipeline import Pipeline
from gallery.gallery import Gallery, NewImage
from gallery.keypoints import LocalFeatures

pytestmark = pytest.mark.slow

INDIVIDUALS, PHOTOS = 4, 3


def write_catalogue(root: Path) -> Path:
    """Each individual a blocky pattern (corners for the keypoint detector), each photo a noisy
    copy; a box for the first photo of each."""
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    rows, boxes = [], []
    for i in range(INDIVIDUALS):
        blocks = rng.integers(0, 255, (12, 16, 3)).astype(np.float32)
        pattern = np.kron(blocks, np.ones((8, 8, 1)))
        for j in range(PHOTOS):
            noisy = np.clip(pattern + rng.normal(0, 6, pattern.shape), 0, 255).astype(np.uint8)
            name = f"w{i}_{j}.png"
            Image.fromarray(noisy).save(root / "images" / name)
            rows.append(f"{name},orca,whale-{i}")
            if j == 0:
                boxes.append(f"{name},8,8,120,88")
    (root / "train.csv").write_text("image,species,individual_id\n" + "\n".join(rows) + "\n")
    (root / "boxes.csv").write_text("image,x1,y1,x2,y2\n" + "\n".join(boxes) + "\n")
    return root


def gallery_cli(db: str, *args: str) -> int:
    return main(["gallery", "--gallery", db, *args])


def stored_match_fresh(g: Gallery, pipeline: Pipeline, catalogue: Path) -> None:
    """Each stored image's keypoints are the pipeline's for its recorded crop, and a photo's own
    stored keypoints match it better than every other individual's."""
    spec = pipeline.manifest.matcher
    assert spec is not None
    images = [im for n in range(INDIVIDUALS) for im in g.individual(f"whale-{n}").images]
    ids = [im.id for im in images]
    stored, found = g.local_features(ids, max_keypoints=spec.max_keypoints, dim=spec.descriptor_dim)
    assert found.all() and stored.mask.sum(axis=1).min() > 10
    photos = [Image.open(catalogue / "images" / im.filename).convert("RGB") for im in images]
    fresh = pipeline.embed(photos, [im.box for im in images]).local
    assert fresh is not None
    # The same crops' keypoints, as a store would hand them back (real slots first, by score).
    expected = LocalFeatures.pad(
        [fresh.compact(row) for row in range(len(fresh))], spec.max_keypoints, spec.descriptor_dim
    )
    np.testing.assert_array_equal(stored.mask, expected.mask)
    np.testing.assert_allclose(stored.keypoints, expected.keypoints, atol=1e-4)
    np.testing.assert_allclose(stored.frames, expected.frames, rtol=1e-6)
    np.testing.assert_allclose(stored.descriptors, expected.descriptors, atol=2e-3)
    lightglue = OnnxLightGlue(pipeline.bundle.path / spec.matcher_file, spec)
    owners = np.array([im.individual_id for im in images])
    for row, im in enumerate(images):
        counts = lightglue.match(fresh.take([row]), stored).counts
        assert counts[row] > counts[owners != im.individual_id].max(), (im.filename, counts)


def test_import_and_reembed_store_every_photos_keypoints(
    matcher_bundle: Path, toy_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    catalogue = write_catalogue(tmp_path / "cat")
    n = INDIVIDUALS * PHOTOS
    pipeline = Pipeline.from_bundle(matcher_bundle)
    assert pipeline.has_matcher and pipeline.manifest.matcher is not None
    assert pipeline.manifest.matcher.max_keypoints == MATCHER_KEYPOINTS

    # Imported with the matcher bundle: keypoints stored with each embedding.
    db = str(tmp_path / "imported.db")
    assert (
        gallery_cli(db, "import", "--bundle", str(matcher_bundle), "--catalogue", str(catalogue))
        == 0
    )
    assert f"imported {n} photos" in capsys.readouterr().out
    with Gallery.open(db, fingerprint=pipeline.fingerprint, dim=pipeline.embedding_dim) as g:
        assert g.store.count_features(fingerprint=pipeline.fingerprint) == n
        stored_match_fresh(g, pipeline, catalogue)

    # Imported without a matcher, then re-embedded with one: the switch brings the keypoints.
    db = str(tmp_path / "reembedded.db")
    assert (
        gallery_cli(db, "import", "--bundle", str(toy_bundle), "--catalogue", str(catalogue)) == 0
    )
    capsys.readouterr()
    assert gallery_cli(db, "reembed", "--bundle", str(matcher_bundle)) == 0
    assert f"re-embedded {n} photos ({n} with keypoints)" in capsys.readouterr().out
    with Gallery.open(db, fingerprint=pipeline.fingerprint, dim=pipeline.embedding_dim) as g:
        assert g.store.count_features(fingerprint=pipeline.fingerprint) == n
        stored_match_fresh(g, pipeline, catalogue)
        # A photo registered without keypoints (a service that stores none): reembed fills it
        # under the model the gallery already uses.
        photo = Image.open(catalogue / "images" / "w1_2.png").convert("RGB")
        photo = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        path = tmp_path / "late.png"
        photo.save(path)
        vector = pipeline.embed([photo], local=False).vectors[0]
        g.register(
            individual_id="whale-1",
            species="orca",
            images=[NewImage(path.read_bytes(), "late.png", vector)],
        )
    assert gallery_cli(db, "reembed", "--bundle", str(matcher_bundle)) == 0
    assert "stored the keypoints of 1 photos that had none (13 photos)" in capsys.readouterr().out
    assert gallery_cli(db, "reembed", "--bundle", str(matcher_bundle)) == 0
    assert "nothing to do" in capsys.readouterr().out
    with Gallery.open(db, fingerprint=pipeline.fingerprint, dim=pipeline.embedding_dim) as g:
        assert g.store.count_features(fingerprint=pipeline.fingerprint) == n + 1
