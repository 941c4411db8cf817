"""`whaleid export --matcher`: the local matcher in the bundle (inside the fingerprint) and the
re-ranking fitted on the run's open-set validation (calibrations, fusion, the fused threshold
and its curve); a bundle exported without it is the bundle it always was.

Small on purpose: the session's tiny run, ALIKED at 256 px with 128 keypoints, the numpy matcher
(LightGlue's export and parity are still checked: they run whatever the local method) and a
shortlist of 4."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fixtures.bundle import RERANK_KEYPOINTS, RERANK_SHORTLIST, RERANK_SIDE

from app.manifest import BundleError, Manifest, fingerprint_files
from app.pipeline import Pipeline
from app.reranker import Reranker
from gallery.rerank import fuse
from training.catalogue import read_photo
from training.runs import Run

pytestmark = pytest.mark.slow

SIDE, KEYPOINTS, SHORTLIST = RERANK_SIDE, RERANK_KEYPOINTS, RERANK_SHORTLIST


@pytest.fixture(scope="module")
def plain_bundle(plain_rerank_twin: Path) -> Path:
    return plain_rerank_twin


@pytest.fixture(scope="module")
def matcher_export(rerank_export: Any) -> Any:
    return rerank_export


def test_export_with_matcher_writes_matcher_and_rerank(matcher_export: Any, tiny_run: Path) -> None:
    bundle: Path = matcher_export.bundle
    manifest = Manifest.read(bundle)
    assert manifest == matcher_export.manifest  # round trip through manifest.json
    assert manifest.matcher is not None and manifest.rerank is not None
    assert manifest.matcher.extractor == "aliked"
    assert (manifest.matcher.input_side, manifest.matcher.max_keypoints) == (SIDE, KEYPOINTS)
    assert manifest.rerank.method == "mutual_nn" and manifest.rerank.shortlist == SHORTLIST
    assert manifest.rerank.fusion.method in ("mean", "logistic")
    parity = matcher_export.matcher_parity
    assert parity is not None and parity.ok and parity.confident_pairs > 0
    # Fused and global-only figures side by side, all shares.
    cv = manifest.rerank.cv_metrics
    for key in ("map5", "map5_known", "map5_new", "top1_known"):
        assert 0.0 <= cv[key] <= 1.0 and 0.0 <= cv[f"global_{key}"] <= 1.0
    assert cv["queries"] == len(Run(tiny_run).splits.open_set.queries)
    assert matcher_export.rerank.pairs_matched >= cv["queries"]  # every query was matched
    assert (bundle / "rerank-sweep.csv").is_file()


def test_fingerprint_covers_the_matcher_files(matcher_export: Any, tmp_path: Path) -> None:
    manifest: Manifest = matcher_export.manifest
    assert manifest.matcher is not None
    assert manifest.model_files[-2:] == manifest.matcher.files
    without = fingerprint_files(matcher_export.bundle, manifest.model_files[:-2])
    assert manifest.fingerprint != without
    copy = shutil.copytree(matcher_export.bundle, tmp_path / "bundle")
    extractor = copy / manifest.matcher.extractor_file
    extractor.write_bytes(extractor.read_bytes() + b"\0")
    with pytest.raises(BundleError, match=manifest.matcher.extractor_file):
        Manifest.read(copy)


def test_calibrations_and_curve_are_monotone(matcher_export: Any) -> None:
    rerank = matcher_export.manifest.rerank
    fusion = rerank.fusion
    for table in (fusion.global_calibration, fusion.local_calibration):
        assert np.all(np.diff(table.x) >= 0) and np.all(np.diff(table.y) >= 0)
        assert 0.0 <= table.y[0] <= table.y[-1] <= 1.0
    # The global calibration learnt something: a high cosine is likelier the same animal.
    assert fusion.global_calibration.y[-1] > fusion.global_calibration.y[0]
    sims, counts = np.linspace(-0.2, 1, 25), np.linspace(0, 3 * KEYPOINTS // 4, 25)
    grid = fuse(sims[:, None].repeat(25, 1), counts[None, :].repeat(25, 0), fusion)
    assert np.all(np.diff(grid, axis=0) >= 0) and np.all(np.diff(grid, axis=1) >= 0)
    assert 0.0 <= rerank.threshold <= 1.0
    thresholds = [p.threshold for p in rerank.threshold_curve]
    assert len(thresholds) > 1 and np.all(np.diff(thresholds) >= 0)
    assert thresholds[-1] == rerank.threshold


def test_true_pair_outscores_impostor(matcher_export: Any, tiny_run: Path) -> None:
    """A held-out photo against a re-framed copy of itself and against another held-out
    individual: the fused probability says the copy, through the bundle's own Reranker."""
    from training.matcher_export import reframe

    bundle: Path = matcher_export.bundle
    manifest: Manifest = matcher_export.manifest
    pipeline = Pipeline.from_bundle(bundle, ["cpu"])
    reranker = Reranker.from_manifest(bundle, manifest, ["cpu"])
    assert reranker is not None
    run = Run(tiny_run)
    held = {p.individual_id: p for p in run.open_set_split().queries}
    photos = list(held.values())[:4]
    for i, photo in enumerate(photos):
        crop = read_photo(photo, manifest.box_padding)
        other = read_photo(photos[(i + 1) % len(photos)], manifest.box_padding)
        out = pipeline.embed([crop, reframe(crop), other])
        assert out.local is not None
        sims = (out.vectors[:1] @ out.vectors[1:].T).astype(np.float32)
        labels = np.array([[1, 2]])
        ranked = reranker.rerank(sims, labels, out.local.take([0]), [out.local.take([1, 2])], 0.5)
        assert ranked.local[0, 0] > ranked.local[0, 1], ranked.local
        assert ranked.fused[0, 0] > ranked.fused[0, 1], (sims, ranked.local, ranked.fused)
        assert ranked.ranking.codes[0, 0] == 1


def test_bundle_without_matcher_answers_as_before(
    plain_bundle: Path, matcher_export: Any, tiny_run: Path
) -> None:
    plain = Manifest.read(plain_bundle)
    assert plain.matcher is None and plain.rerank is None
    assert not (plain_bundle / "rerank-sweep.csv").exists()
    raw = json.loads((plain_bundle / "manifest.json").read_text())
    assert raw["matcher"] is None and raw["rerank"] is None
    # The global side is the run's, untouched by the matcher's presence in the other bundle.
    run = Run(tiny_run)
    assert plain.threshold == run.threshold
    ignore = {"fingerprint", "created_at", "file_digests", "matcher", "rerank"}
    with_matcher = matcher_export.manifest.model_dump(exclude=ignore)
    assert plain.model_dump(exclude=ignore) == with_matcher
    assert plain.fingerprint == fingerprint_files(plain_bundle, [e.file for e in plain.embedders])

    photos = [read_photo(p, plain.box_padding) for p in run.photos[:5]]
    before = Pipeline.from_bundle(plain_bundle, ["cpu"]).embed(photos)
    after = Pipeline.from_bundle(matcher_export.bundle, ["cpu"]).embed(photos)
    assert before.local is None and after.local is not None
    np.testing.assert_array_equal(before.vectors, after.vectors)
