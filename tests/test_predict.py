"""`whaleid predict` end to end: a gallery of the open-set gallery photos, the held-out queries
identified to a submission CSV, and its MAP@5 equal to what evaluation computed for them."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from fixtures.service import GALLERY_INDIVIDUALS, GALLERY_PHOTOS, Server, catalogue_photos
from PIL import Image

from app.cli import main
from app.decode import open_image
from app.pipeline import Pipeline
from gallery.gallery import Gallery, ImportItem
from gallery.metrics import map_at_k
from gallery.rank import NEW_INDIVIDUAL
from gallery.records import NewImage

if TYPE_CHECKING:
    from training.catalogue import Photo


def import_gallery(bundle: Path, db: Path, photos: Sequence[Photo]) -> None:
    """`whaleid gallery import` of these catalogue photos with their boxes (a sub-catalogue:
    train.csv and boxes.csv of just them, beside the catalogue's own images folder)."""
    folder = db.parent / f"{db.stem}-catalogue"
    folder.mkdir()
    (folder / "images").symlink_to(photos[0].path.parent)
    with (folder / "train.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(
            [("image", "species", "individual_id")]
            + [(p.image, p.species, p.individual_id) for p in photos]
        )
    with (folder / "boxes.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(
            [("image", "x1", "y1", "x2", "y2")] + [(p.image, *p.box) for p in photos if p.box]
        )
    args = ["gallery", "--gallery", str(db), "import", "--bundle", str(bundle)]
    assert main([*args, "--catalogue", str(folder)]) == 0


def read_submission(path: Path) -> dict[str, list[str]]:
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["image", "predictions"]
    return {image: predictions.split(" ") for image, predictions in rows[1:]}


def submission_map5(submission: dict[str, list[str]], truth: dict[str, str]) -> float:
    names = sorted(truth)
    vocab = {name: i for i, name in enumerate(sorted({*truth.values(), NEW_INDIVIDUAL}))}
    codes = np.array([[vocab.get(p, -9) for p in submission[n]] for n in names])
    return map_at_k(codes, np.array([vocab[truth[n]] for n in names]))


def predict(bundle: Path, db: Path, images: Path, out: Path) -> float:
    start = time.perf_counter()
    status = main(
        ["predict", "--bundle", str(bundle), "--gallery", str(db), "--images", str(images),
         "--out", str(out), "--quiet"]
    )  # fmt: skip
    assert status == 0
    return time.perf_counter() - start


@pytest.mark.slow
@pytest.mark.timeout(2400)  # may be the first to ask for the trained bundle
def test_predict_scores_the_ensemble_as_export_tuned_it(
    bundle: Path, tiny_run: Path, tmp_path: Path
) -> None:
    """The bundle (ensemble + detector): export embedded the open set as serving does, so the
    CSV's MAP@5 is the manifest's figure exactly."""
    from training.runs import Run

    open_set = Run(tiny_run).open_set_split()
    import_gallery(bundle, tmp_path / "gallery.db", open_set.gallery)
    queries = tmp_path / "queries"
    queries.mkdir()
    for photo in open_set.queries:
        (queries / photo.image).symlink_to(photo.path)
    seconds = predict(bundle, tmp_path / "gallery.db", queries, tmp_path / "submission.csv")

    submission = read_submission(tmp_path / "submission.csv")
    assert sorted(submission) == sorted(p.image for p in open_set.queries)
    assert all(len(ids) == 5 and len(set(ids)) == 5 for ids in submission.values())
    in_gallery = {p.individual_id for p in open_set.gallery}
    truth = {
        p.image: p.individual_id if p.individual_id in in_gallery else NEW_INDIVIDUAL
        for p in open_set.queries
    }
    map5 = submission_map5(submission, truth)
    manifest = json.loads((bundle / "manifest.json").read_text())
    print(f"\npredict {len(truth)} photos: {seconds:.1f} s; MAP@5 {map5:.6f}, "
          f"export's {manifest['cv_metrics']['map5']:.6f}")  # fmt: skip
    assert map5 == pytest.approx(manifest["cv_metrics"]["map5"], abs=1e-9)


@pytest.mark.slow
@pytest.mark.timeout(2400)  # may be the first to ask for the trained bundle
def test_predict_agrees_with_whaleid_evaluate(tiny_run: Path, tmp_path: Path) -> None:
    """One run, no detector, queries given as the crops evaluation embeds: the CSV's MAP@5 is
    the run's own evaluation figure (torch there, onnxruntime here)."""
    from training.catalogue import read_photo
    from training.export import export_bundle
    from training.runs import Run

    run = Run(tiny_run)
    bundle = export_bundle([tiny_run], tmp_path / "bundle").bundle
    open_set = run.open_set_split()
    import_gallery(bundle, tmp_path / "gallery.db", open_set.gallery)
    queries = tmp_path / "queries"
    queries.mkdir()
    for photo in open_set.queries:
        # PNG: the crop evaluation embedded, pixel for pixel.
        read_photo(photo, run.config.data.box_padding).save(queries / f"{photo.image}.png")
    predict(bundle, tmp_path / "gallery.db", queries, tmp_path / "submission.csv")

    submission = read_submission(tmp_path / "submission.csv")
    assert all(len(ids) == 5 for ids in submission.values())
    in_gallery = {p.individual_id for p in open_set.gallery}
    truth = {
        f"{p.image}.png": p.individual_id if p.individual_id in in_gallery else NEW_INDIVIDUAL
        for p in open_set.queries
    }
    map5 = submission_map5(submission, truth)
    evaluated = run.evaluation["map5"]
    print(f"\nsingle run: predict MAP@5 {map5:.6f}, whaleid evaluate {evaluated:.6f}")
    assert map5 == pytest.approx(evaluated, abs=1e-6)


def toy_photos(folder: Path, n: int) -> list[Path]:
    folder.mkdir()
    rng = np.random.default_rng(3)
    paths = []
    for i in range(n):
        path = folder / f"p{i}.png"
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_predict_with_a_toy_bundle(toy_bundle: Path, tmp_path: Path) -> None:
    """Fast, torch-free: each photo registered as its own individual comes back first."""
    paths = toy_photos(tmp_path / "photos", 7)
    pipeline = Pipeline.from_bundle(toy_bundle)
    vectors = pipeline.embed([open_image(p) for p in paths]).vectors
    with Gallery.open(
        f"sqlite:///{tmp_path / 'g.db'}", fingerprint=pipeline.fingerprint, dim=vectors.shape[1]
    ) as gallery:
        gallery.import_images(
            ImportItem(f"ind-{p.stem}", None, NewImage(p.read_bytes(), p.name, v))
            for p, v in zip(paths, vectors, strict=True)
        )
    # Truncated, not unidentifiable: once ultralytics is imported (other tests) its patched
    # Image.open answers an unidentifiable file with ModuleNotFoundError (pi_heif).
    (tmp_path / "photos" / "broken.png").write_bytes(paths[0].read_bytes()[:200])
    predict(toy_bundle, tmp_path / "g.db", tmp_path / "photos", tmp_path / "s.csv")
    submission = read_submission(tmp_path / "s.csv")
    assert sorted(submission) == sorted(p.name for p in paths)  # the broken one left out
    for name, ids in submission.items():
        assert len(ids) == 5 and ids[0] == f"ind-{Path(name).stem}"


def test_predict_lists_unusable_photos_and_goes_on(
    toy_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Photos the models cannot use (a pixel, a sliver, a blank) are named with the reason and
    counted; every other photo of their batch is identified."""
    paths = toy_photos(tmp_path / "photos", 3)
    pipeline = Pipeline.from_bundle(toy_bundle)
    vectors = pipeline.embed([open_image(p) for p in paths]).vectors
    with Gallery.open(
        f"sqlite:///{tmp_path / 'g.db'}", fingerprint=pipeline.fingerprint, dim=vectors.shape[1]
    ) as gallery:
        gallery.import_images(
            ImportItem(f"ind-{p.stem}", None, NewImage(p.read_bytes(), p.name, v))
            for p, v in zip(paths, vectors, strict=True)
        )
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 255, (1, 1, 3), dtype=np.uint8)).save(
        tmp_path / "photos" / "a-pixel.png"
    )
    Image.fromarray(rng.integers(0, 255, (20, 10000, 3), dtype=np.uint8)).save(
        tmp_path / "photos" / "a-sliver.png"
    )
    Image.new("RGB", (64, 48), (0, 0, 0)).save(tmp_path / "photos" / "blank.png")
    predict(toy_bundle, tmp_path / "g.db", tmp_path / "photos", tmp_path / "s.csv")
    submission = read_submission(tmp_path / "s.csv")
    assert sorted(submission) == sorted(p.name for p in paths)
    assert all(ids[0] == f"ind-{Path(name).stem}" for name, ids in submission.items())
    err = capsys.readouterr().err
    assert "skipped a-pixel.png: a-pixel.png is 1x1 pixels: too small" in err
    assert "skipped a-sliver.png: a-sliver.png is 10000x20 pixels: too narrow" in err
    assert "skipped blank.png: blank.png has no usable pixels" in err
    assert "3 unusable photo(s) left out" in err


def test_predict_refuses_a_missing_gallery(
    toy_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toy_photos(tmp_path / "q", 1)
    status = main(
        ["predict", "--bundle", str(toy_bundle), "--gallery", str(tmp_path / "none.db"),
         "--images", str(tmp_path / "q"), "--out", str(tmp_path / "s.csv")]
    )  # fmt: skip
    assert status == 1
    assert "none.db does not exist" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()


@pytest.mark.slow
@pytest.mark.timeout(2400)  # may be the first to ask for the trained bundle
def test_predict_answers_as_the_service_does(
    service: Server, service_bundle: Path, catalogue: Path, tmp_path: Path
) -> None:
    """Same photos, same gallery (the service's own SQLite file): the same five ids."""
    photos = catalogue_photos(catalogue)
    names = list(photos)
    chosen = [p for n in names[:GALLERY_INDIVIDUALS] for p in photos[n][GALLERY_PHOTOS:][:2]]
    chosen += [photos[n][0] for n in names[GALLERY_INDIVIDUALS:][:4]]
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in chosen:
        (folder / path.name).symlink_to(path)
    db = service.workdir / "gallery.db"
    predict(service_bundle, db, folder, tmp_path / "s.csv")
    submission = read_submission(tmp_path / "s.csv")
    with service.client(service.read_key) as client:
        for path in chosen:
            files = {"image": (path.name, path.read_bytes(), "image/jpeg")}
            response = client.post("/identify", files=files)
            assert response.status_code == 200, response.text
            answer = [c["individual_id"] for c in response.json()["predictions"]]
            assert submission[path.name] == answer, path.name
