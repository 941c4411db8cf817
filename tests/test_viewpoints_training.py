"""Viewpoints in training: the classes (data.class_by), the flip rule, the split, and the
evaluation that compares a query only with compatible gallery photos, as the service does."""

from __future__ import annotations

import json
from dataclasses import asdict
from itertools import product
from pathlib import Path

import faiss
import numpy as np
import pytest
from PIL import Image

from app.preprocess import EmbedTransform
from gallery.metrics import sweep_thresholds
from gallery.rank import NEW
from gallery.viewpoints import compatible, compatible_mask
from training.catalogue import Photo
from training.config import AugmentConfig, DataConfig, EvalConfig
from training.data import PhotoDataset
from training.evaluate import EmbeddedSet, knn_hits, score_at, sweep, sweep_grid, threshold_curve
from training.runs import Labels
from training.splits import build_eval_set, make_splits
from training.viewpoints import by_viewpoint, flip_classes

REPO = Path(__file__).resolve().parents[1]
SIDES = ("left", "right")
SWAP = {"left": "right", "right": "left"}


def _photos(counts: list[int], sides: bool = True) -> list[Photo]:
    """Individual i has counts[i] photos alternating left and right (no labels: `sides`)."""
    return [
        Photo(
            f"{i}_{j}.jpg",
            Path(f"{i}_{j}.jpg"),
            "orca",
            f"ind{i:02d}",
            viewpoint=SIDES[j % 2] if sides else None,
        )
        for i, n in enumerate(counts)
        for j in range(n)
    ]


def _unit(rng: np.random.Generator, n: int, d: int = 16) -> np.ndarray:
    v = rng.normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_compatible_mask_is_the_pairwise_rule() -> None:
    labels = ["left", "right", None, "front"]
    queries = [a for a, _ in product(labels, labels)]
    gallery = [b for _, b in product(labels, labels)]
    mask = compatible_mask(queries, gallery)
    assert mask is not None
    for i, j in product(range(len(queries)), range(len(gallery))):
        assert mask[i, j] == compatible(queries[i], gallery[j])
    assert not compatible("left", "right") and compatible(None, "right")
    assert compatible_mask([None, None], ["left"]) is None  # nothing to exclude
    assert compatible_mask(["left"], [None, None]) is None


def test_truth_is_new_where_the_gallery_shows_only_the_other_side() -> None:
    photos = _photos([3, 3])  # ind00: left, right, left; ind01 likewise
    gallery = [photos[0], photos[4]]  # ind00 left, ind01 right
    queries = [photos[1], photos[2], photos[3], photos[5]]  # 00 right, 00 left, 01 left, 01 left
    eval_set = build_eval_set(gallery, queries)
    assert eval_set.query_truth.tolist() == [NEW, 0, NEW, NEW]
    assert eval_set.allowed is not None and eval_set.allowed.tolist() == [
        [False, True], [True, False], [True, False], [True, False],
    ]  # fmt: skip
    unknown = Photo("u.jpg", Path("u.jpg"), "orca", "ind00")  # no viewpoint: compares with all
    assert build_eval_set(gallery, [unknown]).query_truth.tolist() == [0]


def test_masked_search_never_returns_an_incompatible_photo() -> None:
    rng = np.random.default_rng(3)
    n_gallery, n_queries, k = 60, 25, 8
    choices: list[str | None] = ["left", "right", None]
    g_sides = [choices[i] for i in rng.integers(2, size=n_gallery)]
    g_sides[:3] = [None] * 3  # three gallery photos of unknown side
    q_sides = [choices[i] for i in rng.integers(3, size=n_queries)]
    q_sides[0] = "front"  # compatible only with the unknown ones: fewer than k
    gallery, queries = _unit(rng, n_gallery), _unit(rng, n_queries)
    labels = np.arange(n_gallery) * 7  # one photo per label: a hit's label names its photo
    allowed = compatible_mask(q_sides, g_sides)
    assert allowed is not None
    sims, hit_labels = knn_hits(gallery, labels, queries, k, allowed)
    for i in range(n_queries):
        ok = np.flatnonzero(allowed[i])
        expected = ok[np.argsort(-(gallery[ok] @ queries[i]), kind="stable")][:k]
        got = hit_labels[i][hit_labels[i] >= 0] // 7
        assert got.tolist() == expected.tolist()  # the k best compatible, in order
        assert all(compatible(q_sides[i], g_sides[j]) for j in got)
        np.testing.assert_allclose(sims[i, : len(got)], gallery[got] @ queries[i], rtol=1e-5)
        assert np.isneginf(sims[i, len(got) :]).all()
    assert (hit_labels[0] < 0).any()  # the "front" query had fewer than k photos to see


def test_no_viewpoints_keeps_the_unfiltered_search_bit_identical() -> None:
    """Photos without viewpoints: no mask at all, and the sweep and the threshold curve are
    exactly those of a plain faiss search (the evaluation as it was before viewpoints)."""
    rng = np.random.default_rng(5)
    photos = _photos([4] * 30, sides=False)
    gallery = [p for p in photos if p.image.endswith(("_0.jpg", "_1.jpg"))][:50]
    queries = [p for p in photos if p.image.endswith(("_2.jpg", "_3.jpg"))]
    eval_set = build_eval_set(gallery, queries)
    assert eval_set.allowed is None
    embedded = EmbeddedSet(eval_set, _unit(rng, len(gallery)), _unit(rng, len(queries)))
    cfg = EvalConfig(neighbours=10, curve_draws=2)
    index = faiss.IndexFlatIP(16)
    index.add(embedded.gallery)
    ref_sims, idx = index.search(embedded.queries, 10)
    ref_labels = eval_set.gallery_labels[idx]
    reference = sweep_thresholds(
        ref_sims, ref_labels, eval_set.query_truth, sweep_grid(ref_sims, cfg.threshold_step)
    )
    result = sweep(embedded, cfg)
    for got, want in zip(
        (result.thresholds, result.map_all, result.map_known, result.map_new),
        (reference.thresholds, reference.map_all, reference.map_known, reference.map_new),
        strict=True,
    ):
        assert np.array_equal(got, want)
    curve = threshold_curve(embedded, result, cfg, seed=1)
    assert curve[-1] == {"images": len(gallery), "threshold": result.best_threshold}
    # Viewpoints that exclude nothing (every gallery photo unknown) take the same path.
    labelled = [
        Photo(p.image, p.path, p.species, p.individual_id, viewpoint="left") for p in queries
    ]
    same = build_eval_set(gallery, labelled)
    assert same.allowed is None and np.array_equal(same.query_truth, eval_set.query_truth)


def test_evaluation_compares_only_compatible_sides() -> None:
    """Each query is identical to its individual's only gallery photo, which shows the other
    side: masked, that photo is out of reach, so the right answer (and the truth) is new."""
    photos = _photos([2] * 6)  # ind i: photo 2i left, 2i+1 right
    gallery = [photos[0], photos[3], photos[4], photos[7], photos[8], photos[11]]
    queries = [photos[1], photos[2], photos[5], photos[6], photos[9], photos[10]]
    eval_set = build_eval_set(gallery, queries)
    # ind00 queried right, gallery left: new; ind01 queried left, gallery right: new; ...
    assert (eval_set.query_truth == NEW).all()
    # Every query equals its individual's gallery photo: unmasked, each would be found.
    g = np.eye(6, 16, dtype=np.float32)
    embedded = EmbeddedSet(eval_set, g, g.copy())
    figures = score_at(embedded, 0.5, EvalConfig(neighbours=5))
    assert figures["map5_new"] == 1.0 and figures["map5_known"] is None


def test_classes_by_individual_and_viewpoint() -> None:
    photos = [*_photos([3, 2]), Photo("x.jpg", Path("x.jpg"), "orca", "ind01")]
    labels = Labels.fit(photos, by_viewpoint=True)
    assert list(zip(labels.individuals, labels.viewpoints or [], strict=True)) == [
        ("ind00", "left"), ("ind00", "right"), ("ind01", ""), ("ind01", "left"),
        ("ind01", "right"),
    ]  # fmt: skip
    assert labels.codes(photos) == [0, 1, 0, 3, 4, 2]
    plain = Labels.fit(photos)
    assert plain.viewpoints is None and plain.codes(photos) == [0, 0, 0, 1, 1, 1]
    assert plain.classes == 2 and labels.classes == 5
    old = {k: v for k, v in asdict(plain).items() if k != "viewpoints"}  # before viewpoints
    assert Labels(**json.loads(json.dumps(old))) == plain

    cfg = DataConfig(catalogue=Path("."))
    assert cfg.class_by == "auto" and by_viewpoint(cfg, photos)
    assert not by_viewpoint(cfg, _photos([3], sides=False))
    assert not by_viewpoint(cfg.model_copy(update={"class_by": "individual"}), photos)


def test_flip_is_off_with_viewpoints_unless_it_swaps_them() -> None:
    photos = [*_photos([3, 1]), Photo("x.jpg", Path("x.jpg"), "orca", "ind01")]
    labels = Labels.fit(photos, by_viewpoint=True)  # ind01 has no right-side class
    code = labels.code()
    off = AugmentConfig(hflip_p=1.0)
    assert flip_classes(photos, labels, off) == [None] * 5
    swap = AugmentConfig(hflip_p=1.0, flip_swaps_viewpoint=SWAP)
    assert flip_classes(photos, labels, swap) == [
        code[("ind00", "right")], code[("ind00", "left")], code[("ind00", "right")],
        None,  # ind01's mirrored side was never trained: not flipped
        None,  # unknown side: not flipped
    ]  # fmt: skip
    by_individual = Labels.fit(photos)
    assert flip_classes(photos, by_individual, swap) == [0, 0, 0, 1, None]
    assert flip_classes(photos, by_individual, off) == [None] * 5
    # Without viewpoints hflip_p alone decides, and the class stays.
    plain = _photos([2, 2], sides=False)
    assert flip_classes(plain, Labels.fit(plain), off) == [0, 0, 1, 1]


def test_dataset_flips_into_the_mirrored_class_or_not_at_all(tmp_path: Path) -> None:
    pixels = np.zeros((24, 32, 3), dtype=np.uint8)
    pixels[:, :8] = 255  # a bright left edge: a flip moves it to the right
    photos = []
    for side in SIDES:
        Image.fromarray(pixels).save(tmp_path / f"{side}.png")
        photos.append(Photo(f"{side}.png", tmp_path / f"{side}.png", "orca", "ind00", None, side))
    labels = Labels.fit(photos, by_viewpoint=True)
    transform = EmbedTransform(input_size=(24, 32))
    off = {"p": 0}
    still = {"affine": off, "resized_crop": off, "color": off, "gray_p": 0, "blur": off,
             "noise": off, "grid_shuffle": off, "hflip_p": 1.0}  # fmt: skip

    def item(augment: AugmentConfig) -> list[tuple[bool, int]]:
        flips = flip_classes(photos, labels, augment)
        data = PhotoDataset(photos, labels.codes(photos), [0, 0], transform, padding=0.0,
                            augment=augment, flip_labels=flips)  # fmt: skip
        out = []
        for i in range(2):
            x, label, _ = data[i]
            out.append((bool(x[0, 0, -1] > x[0, 0, 0]), label))  # bright edge on the right?
        return out

    assert item(AugmentConfig.model_validate(still)) == [(False, 0), (False, 1)]
    swap = AugmentConfig.model_validate({**still, "flip_swaps_viewpoint": SWAP})
    assert item(swap) == [(True, 1), (True, 0)]


def test_both_sides_of_an_animal_stay_on_one_side_of_the_split() -> None:
    photos = _photos(np.random.default_rng(2).integers(2, 9, size=40).tolist())
    splits = make_splits(photos, DataConfig(catalogue=Path("."), open_set_fraction=0.3), seed=4)
    owner = {p.image: p.individual_id for p in photos}
    trained = {owner[n] for n in splits.train + splits.val}
    held = {owner[n] for n in splits.open_set.gallery + splits.open_set.queries}
    assert held and trained and not trained & held


@pytest.mark.parametrize(
    ("sides", "class_by"), [(2, "individual"), (2, "individual_viewpoint"), (1, "auto")]
)
def test_a_two_sided_run_trains_and_evaluates(tmp_path: Path, sides: int, class_by: str) -> None:
    """End to end on a tiny catalogue, flips swapping sides: the classes class_by asks for,
    and the masked evaluation; a one-sided catalogue trains and evaluates as before."""
    from training.config import load_config
    from training.loop import train
    from training.runs import Run
    from training.synth import make_catalogue

    make_catalogue(tmp_path / "cat", individuals=12, photos=4, species=1, seed=3,
                   image_size=(128, 96), sides=sides)  # fmt: skip
    overrides = [
        f"data.catalogue={tmp_path / 'cat'}", f"out={tmp_path}", "data.image_size=32",
        "optim.epochs=1", "optim.batch_size=8", f"data.class_by={class_by}",
        "augment.hflip_p=1.0", "augment.flip_swaps_viewpoint={left: right, right: left}",
    ]  # fmt: skip
    run = Run(train(load_config(REPO / "configs" / "tiny.yaml", overrides), tmp_path / "run"))
    trained = [p for p in run.photos if p.image in set(run.splits.train)]
    individuals = {p.individual_id for p in trained}
    if sides == 1:
        assert run.labels.viewpoints is None and run.labels.classes == len(individuals)
        assert run.open_set_split().allowed is None
        return
    if class_by == "individual":
        assert run.labels.viewpoints is None and run.labels.classes == len(individuals)
    else:
        assert set(run.labels.viewpoints or []) == {"left", "right"}
        assert run.labels.classes == len({(p.individual_id, p.viewpoint) for p in trained})
    open_set = run.open_set_split()
    assert open_set.allowed is not None
    assert {"threshold", "map5", "map5_known", "map5_new"} <= set(run.evaluation)
