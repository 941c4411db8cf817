"""The new_individual threshold for encounters: tuned on the open-set validation as an offset
from the single-photo threshold (training.evaluate.encounter_offsets), kept in the manifest
(`encounter_offsets`, outside the fingerprint) and read by `app.encounters.encounter_threshold`,
as POST /identify and `whaleid predict --photos` do."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fixtures.bundle import minimal_manifest as manifest
from pydantic import ValidationError

from app.encounters import encounter_threshold
from app.manifest import EncounterOffset, Manifest
from gallery.catalogue import Photo
from gallery.rank import NEW
from training.config import EvalConfig
from training.evaluate import EmbeddedSet, encounter_offsets, sweep
from training.splits import EvalSet

DIM = 64
KNOWN, NEW_INDIVIDUALS, PHOTOS = 120, 80, 6


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _at_cosine(anchor: np.ndarray, cosine: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors at exactly `cosine` from each (unit) anchor, in a random direction."""
    away = rng.normal(size=anchor.shape)
    away = _unit(away - (away * anchor).sum(axis=-1, keepdims=True) * anchor)
    cosine = np.clip(cosine, -0.99, 0.99)[..., None]
    return _unit(cosine * anchor + np.sqrt(1 - cosine**2) * away)


def validation(rng: np.random.Generator, *, allowed: bool = False) -> EmbeddedSet:
    """KNOWN individuals with one gallery photo and PHOTOS queries at cosine 0.70 ± 0.1 to it;
    NEW_INDIVIDUALS not in the gallery, each PHOTOS queries at 0.55 ± 0.1 to one look-alike (a
    gallery individual never queried). Each photo's noise is its own, so fusing the best two
    of three photos lifts the known animal's score and the look-alike's alike: the best
    threshold for encounters of three lies above the single-photo one; of two (their mean) it
    does not move much."""
    gallery = _unit(rng.normal(size=(KNOWN + NEW_INDIVIDUALS, DIM)))
    anchors = np.repeat(gallery, PHOTOS, axis=0)
    mean = np.repeat(np.r_[np.full(KNOWN, 0.70), np.full(NEW_INDIVIDUALS, 0.55)], PHOTOS)
    queries = _at_cosine(anchors, mean + 0.1 * rng.normal(size=mean.shape), rng)
    names = [f"known-{i}" for i in range(KNOWN)] + [f"new-{i}" for i in range(NEW_INDIVIDUALS)]
    owners = np.repeat(names, PHOTOS)
    photos = [Photo(f"{n}-{i}.jpg", Path("unused"), "whale", n) for i, n in enumerate(owners)]
    truth = np.r_[np.repeat(np.arange(KNOWN), PHOTOS), np.full(NEW_INDIVIDUALS * PHOTOS, NEW)]
    eval_set = EvalSet(
        gallery=[],
        queries=photos,
        gallery_labels=np.arange(len(gallery)),
        query_truth=truth,
        individuals=[f"g{k}" for k in range(len(gallery))],
        allowed=np.ones((len(queries), len(gallery)), bool) if allowed else None,
    )
    return EmbeddedSet(eval_set, gallery, queries)


def test_encounters_of_three_are_tuned_above_single_photos() -> None:
    embedded = validation(np.random.default_rng(0))
    cfg = EvalConfig()
    result = sweep(embedded, cfg)
    offsets = encounter_offsets(embedded, result, cfg, sizes=(2, 3, 7))
    by_size = {o["photos"]: o for o in offsets}
    shown = {k: (round(o["offset"], 3), o["map5_at_single"], o["map5"]) for k, o in by_size.items()}
    print(f"\nsingle {result.best_threshold:.3f}; photos: (offset, MAP@5 single → tuned) {shown}")
    # Six queries each: three encounters of 2, two of 3, none of 7 (no entry for it).
    assert sorted(by_size) == [2, 3]
    assert by_size[2]["encounters"] == 3 * (KNOWN + NEW_INDIVIDUALS)
    assert by_size[3]["encounters"] == 2 * (KNOWN + NEW_INDIVIDUALS)
    three = by_size[3]
    assert three["offset"] > 0.02
    assert three["threshold"] == pytest.approx(result.best_threshold + three["offset"], abs=1e-5)
    assert three["map5"] > three["map5_at_single"]
    # Two photos' mean lifts no one's score, it only steadies it: a smaller offset (the mean
    # rule in place of top2 would give both sizes the same one).
    assert three["offset"] > by_size[2]["offset"]
    # The same photos, the same offsets: the shuffle is seeded.
    assert encounter_offsets(embedded, result, cfg, sizes=(2, 3)) == offsets
    # Too few encounters of a size to tune on: no entry.
    fewer = encounter_offsets(embedded, result, cfg, min_encounters=500)
    assert [o["photos"] for o in fewer] == [2]


def test_viewpoints_that_allow_every_photo_change_nothing() -> None:
    """The viewpoint path (masked search, photos that could not see an individual abstaining)
    agrees with the plain one when every photo may be compared with every other."""
    cfg = EvalConfig()
    plain = validation(np.random.default_rng(1))
    masked = validation(np.random.default_rng(1), allowed=True)
    result = sweep(plain, cfg)
    assert encounter_offsets(masked, result, cfg) == encounter_offsets(plain, result, cfg)


# -- in the manifest and at serving time --------------------------------------------------------


OFFSETS = [
    {"photos": 3, "offset": 0.05, "encounters": 40},
    {"photos": 2, "offset": 0.02, "encounters": 80},
]


def test_encounter_threshold_takes_the_largest_size_tuned_at_or_below() -> None:
    curve = [{"images": 10, "threshold": 0.6}, {"images": 1000, "threshold": 0.8}]
    m = manifest(encounter_offsets=OFFSETS, threshold_curve=curve, species_thresholds={"orca": 0.5})
    expected = {1: 0.0, 2: 0.02, 3: 0.05, 5: 0.05}
    for photos, offset in expected.items():
        assert encounter_threshold(m, None, 2000, photos) == pytest.approx(0.8 + offset)
        # On top of the threshold for the gallery's size, and of a species' own.
        assert encounter_threshold(m, None, 10, photos) == pytest.approx(0.6 + offset)
        assert encounter_threshold(m, "orca", 2000, photos) == pytest.approx(0.5 + offset)
    only_three = manifest(encounter_offsets=OFFSETS[:1])
    assert encounter_threshold(only_three, None, 2000, 2) == 0.8
    assert encounter_threshold(only_three, None, 2000, 4) == pytest.approx(0.85)
    # A bundle without offsets: the single-photo threshold for every encounter.
    assert all(encounter_threshold(manifest(), None, 2000, p) == 0.8 for p in (1, 2, 3, 5))


def test_offsets_round_trip_and_stay_out_of_the_fingerprint(tmp_path: Path) -> None:
    from fixtures.bundle import make_toy_bundle

    bundle = make_toy_bundle(tmp_path / "bundle")
    old = Manifest.read(bundle)
    raw = json.loads((bundle / "manifest.json").read_text())
    # Bundles exported before encounters were tuned load unchanged, without offsets.
    assert "encounter_offsets" not in {k for k, v in raw.items() if v}
    raw.pop("encounter_offsets", None)
    (bundle / "manifest.json").write_text(json.dumps(raw))
    assert Manifest.read(bundle) == old and old.encounter_offsets == []
    tuned = old.model_copy(update={"encounter_offsets": [EncounterOffset(**o) for o in OFFSETS]})
    tuned.write(bundle)
    again = Manifest.read(bundle)  # verifies the files against the same fingerprint
    assert again == tuned and again.fingerprint == old.fingerprint
    assert [o.model_dump() for o in again.encounter_offsets] == OFFSETS


@pytest.mark.parametrize(
    ("offsets", "message"),
    [
        ([{"photos": 1, "offset": 0.1, "encounters": 20}], "greater than or equal to 2"),
        ([{"photos": 2, "offset": 0.1, "encounters": 0}], "greater than or equal to 1"),
        ([{"photos": 2, "offset": 0.1, "encounters": 20}] * 2, "one offset per size"),
        ([{"photos": 2, "offset": 0.1, "encounters": 20, "k": 2}], "Extra inputs"),
    ],
)
def test_bad_offsets_are_refused(offsets: list[dict[str, object]], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        manifest(encounter_offsets=offsets)
