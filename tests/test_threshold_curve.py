"""The new_individual threshold by gallery size: tuned on smaller validation galleries
(training.evaluate.threshold_curve) and looked up by the gallery's size (Manifest.threshold_for),
as POST /identify and `whaleid predict` do."""

from __future__ import annotations

import math

import numpy as np
import pytest
from fixtures.bundle import minimal_manifest as manifest
from pydantic import ValidationError

from gallery.rank import NEW
from training.config import EvalConfig
from training.evaluate import EmbeddedSet, sweep, threshold_curve
from training.splits import EvalSet


def test_threshold_for_follows_the_curve_in_log_size() -> None:
    curve = [{"images": 10, "threshold": 0.6}, {"images": 1000, "threshold": 0.8}]
    m = manifest(threshold_curve=curve, species_thresholds={"orca": 0.5})
    assert m.threshold_for(None, 1) == pytest.approx(0.6)  # below the curve: its first point
    assert m.threshold_for(None, 10) == pytest.approx(0.6)
    assert m.threshold_for(None, 100) == pytest.approx(0.7)  # halfway in log(size)
    assert m.threshold_for(None, 500) == pytest.approx(0.6 + 0.2 * math.log(50) / math.log(100))
    assert m.threshold_for(None, 1000) == m.threshold_for(None, 10**6) == 0.8
    assert m.threshold_for(None) == 0.8  # no size: the whole validation gallery's
    assert m.threshold_for("orca", 100) == 0.5  # a species' own threshold comes first
    assert manifest().threshold_for(None, 5) == 0.8  # bundles without a curve: one threshold


def test_a_curve_whose_sizes_do_not_increase_is_refused() -> None:
    curve = [{"images": 50, "threshold": 0.6}, {"images": 50, "threshold": 0.7}]
    with pytest.raises(ValidationError, match="sizes must increase"):
        manifest(threshold_curve=curve)


def open_set(rng: np.random.Generator, distractors: int) -> EmbeddedSet:
    """16-d unit vectors: 20 individuals with one gallery photo and three queries near it
    (cosine about 0.75), 10 new individuals queried three times, and `distractors` others
    with three gallery photos each, placed at random: the best impostor of a query climbs as
    they are added."""

    def unit(x: np.ndarray) -> np.ndarray:
        return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)

    dim = 16
    known = unit(rng.normal(size=(20, dim)))
    queries = unit(known[:, None, :] + 0.5 * rng.normal(size=(20, 3, dim)) / np.sqrt(dim))
    new = unit(rng.normal(size=(30, dim)))
    others = unit(rng.normal(size=(distractors * 3, dim)))
    gallery = np.concatenate([known, others])
    gallery_labels = np.concatenate([np.arange(20), 20 + np.arange(distractors).repeat(3)])
    query_truth = np.concatenate([np.arange(20).repeat(3), np.full(30, NEW)])
    eval_set = EvalSet(
        gallery=[],
        queries=[],
        gallery_labels=gallery_labels,
        query_truth=query_truth,
        individuals=[f"i{k}" for k in range(20 + distractors)],
    )
    return EmbeddedSet(eval_set, gallery, np.concatenate([queries.reshape(60, dim), new]))


def test_the_threshold_rises_with_the_gallery() -> None:
    embedded = open_set(np.random.default_rng(0), distractors=400)
    cfg = EvalConfig()
    result = sweep(embedded, cfg)
    curve = threshold_curve(embedded, result, cfg)
    sizes = [p["images"] for p in curve]
    thresholds = [p["threshold"] for p in curve]
    assert sizes[0] == 20 and sizes[-1] == 1220 and sizes == sorted(set(sizes))
    assert thresholds[-1] == result.best_threshold
    assert thresholds == sorted(thresholds)
    shown = [(size, round(t, 3)) for size, t in zip(sizes, thresholds, strict=True)]
    print(f"\nthreshold by gallery photos: {shown}")
    assert thresholds[-1] - thresholds[0] > 0.1
    # The same curve again for the same seed; none asked for, the one threshold.
    assert threshold_curve(embedded, result, cfg) == curve
    assert threshold_curve(embedded, result, EvalConfig(curve_draws=0)) == curve[-1:]
