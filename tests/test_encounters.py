"""Encounters: several photos of one sighting answered together. A constructed case through
`Gallery` (vectors by hand) where three photos rank the animal first and one alone does not,
then the real server: POST /identify with several `image` parts, and viewpoints over HTTP."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from fixtures.gallery import photo_bytes, unit_vectors
from fixtures.service import GALLERY_INDIVIDUALS, Server, catalogue_photos, next_frame
from PIL import Image

from app.encounters import encounter_offset
from app.manifest import Manifest
from gallery.encounter import FUSIONS, FusedHits, fuse
from gallery.encounter_rank import rank_encounter
from gallery.gallery import Gallery
from gallery.images import ImportItem
from gallery.rank import NEW_INDIVIDUAL
from gallery.records import NewImage

DIM = 16


def unit(*weights: tuple[int, float]) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    for axis, w in weights:
        v[axis] = w
    return v / np.linalg.norm(v)


def test_three_photos_rank_the_animal_first_where_one_alone_does_not(tmp_path: Path) -> None:
    with Gallery.open(f"sqlite:///{tmp_path / 'g.db'}", fingerprint="fp", dim=DIM) as gallery:
        # X and Y are registered, and five others away from them (no ties among scores).
        people = {"X": unit((0, 1.0)), "Y": unit((1, 1.0))}
        others = unit_vectors(5, DIM, seed=5)
        others[:, :2] = 0
        others /= np.linalg.norm(others, axis=1, keepdims=True)
        people.update({f"other-{k}": v for k, v in enumerate(others)})
        gallery.import_images(
            ImportItem(name, None, NewImage(photo_bytes(name), f"{name}.jpg", v))
            for name, v in people.items()
        )
        x_image = gallery.individual("X").images[0].id
        # A poor photo of X (closer to Y), then two good ones.
        photos = np.stack(
            [
                unit((0, 0.55), (1, 0.65), (2, 0.5)),
                unit((0, 0.8), (1, 0.3), (3, 0.4)),
                unit((0, 0.75), (1, 0.35), (4, 0.4)),
            ]
        )
        threshold = 0.7
        (alone,) = gallery.search(photos[:1], threshold=threshold)
        assert alone[0].individual_id == NEW_INDIVIDUAL and alone[1].individual_id == "Y"
        together = gallery.search_encounter(photos, threshold=threshold)
        first = together[0]
        assert first.individual_id == "X" and first.score > threshold
        # Its evidence: X's photo, found by the encounter's photo most like it (the second).
        assert first.evidence_image_id == x_image and first.evidence_photo == 1
        assert first.evidence_similarity == pytest.approx(float(photos[1] @ people["X"]))
        # One photo as an encounter is the photo's own answer.
        (single,) = gallery.search(photos[1:2], threshold=threshold)
        as_encounter = gallery.search_encounter(photos[1:2], threshold=threshold)
        assert [(c.individual_id, c.score, c.evidence_image_id) for c in as_encounter] == [
            (c.individual_id, c.score, c.evidence_image_id) for c in single
        ]


def test_a_photo_that_cannot_see_an_individual_abstains(tmp_path: Path) -> None:
    """X is registered from its left side only; Y from both. An encounter of X's left and
    right sides: the right photo is compared with no photo of X, so it says nothing about X
    (it does not count as X's worst match)."""
    with Gallery.open(f"sqlite:///{tmp_path / 'g.db'}", fingerprint="fp", dim=DIM) as gallery:
        others = unit_vectors(6, DIM, seed=5)
        others[:, :5] = 0
        others /= np.linalg.norm(others, axis=1, keepdims=True)
        entries = [
            ("X", unit((0, 1.0)), "left"),
            ("Y", unit((1, 1.0)), "left"),
            ("Y", unit((2, 1.0)), "right"),
            *((f"other-{k}", v, ("right", None)[k % 2]) for k, v in enumerate(others)),
        ]
        gallery.import_images(
            ImportItem(name, None, NewImage(photo_bytes(f"{i}"), f"{i}.jpg", v, viewpoint=side))
            for i, (name, v, side) in enumerate(entries)
        )
        photos = np.stack(
            [unit((0, 0.85), (1, 0.45), (3, 0.27)), unit((2, 0.6), (0, 0.7), (4, 0.39))]
        )
        sides = ["left", "right"]
        together = gallery.search_encounter(photos, threshold=0.7, viewpoint=sides)
        assert together[0].individual_id == "X" and together[0].evidence_photo == 0
        assert together[0].score == pytest.approx(float(photos[0] @ unit((0, 1.0))), abs=1e-5)
        scores = {c.individual_id: c.score for c in together}
        assert scores["Y"] == pytest.approx((0.45 + 0.6) / 2, abs=0.01)
        # Counted as a miss instead, the right photo would have sunk X below the threshold.
        found, visible = gallery.replica.encounter_shortlist(photos, viewpoint=sides)
        assert visible is not None and visible.shape[0] == 2
        missed = rank_encounter(found, threshold=0.7)
        assert missed[0].individual_id != "X"
        # Without viewpoints every photo sees everyone: nothing to abstain from.
        assert gallery.replica.encounter_shortlist(photos)[1] is None


def _scores(hits: FusedHits) -> dict[int, float]:
    return dict(zip(hits.labels[0].tolist(), hits.sims[0].tolist(), strict=True))


def test_fuse_leaves_out_the_photos_that_abstain() -> None:
    sims = np.array([[0.9, 0.5], [0.4, 0.3]], dtype=np.float32)
    labels = np.array([[0, 1], [1, 2]])
    visible = np.array([[True, True, True], [False, True, True]])
    for how in FUSIONS:
        seen = _scores(fuse(sims, labels, how, visible))
        plain = _scores(fuse(sims, labels, how))
        assert seen[0] == pytest.approx(0.9)  # photo 1 could not see individual 0
        assert seen[1] == plain[1] and seen[2] == plain[2]  # the others are as before
        assert how == "max" or plain[0] < seen[0]  # as a miss, photo 1 pulled it down


# -- over HTTP ---------------------------------------------------------------------------------


def jpeg(path: Path) -> bytes:
    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_identify_an_encounter_over_http(
    edit_service: Server, catalogue: Path, service_bundle: Path
) -> None:
    photos = catalogue_photos(catalogue)
    individual = list(photos)[6]  # registered; no other test edits it
    with edit_service.client(edit_service.read_key) as client:
        frames = [next_frame(p) for p in photos[individual][:3]]
        files = [("image", (f"f{i}.jpg", b, "image/jpeg")) for i, b in enumerate(frames)]
        response = client.post("/identify", files=files)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["predictions"][0]["individual_id"] == individual
        assert body["viewpoint"] is None and len(body["crops"]) == 3
        assert body["crop"] == body["crops"][0]
        for prediction in body["predictions"]:
            if prediction["evidence"] is not None:
                assert prediction["evidence"]["photo"] in (0, 1, 2)
        top = body["predictions"][0]["evidence"]
        image = client.get(f"/gallery/images/{top['image_id']}").json()
        assert image["individual_id"] == individual

        # One photo answers as it always has; the same photo twice ranks the individuals
        # alike, new_individual at the threshold for two photos.
        one = [("image", ("a.jpg", frames[0], "image/jpeg"))]
        single = client.post("/identify", data={"top_k": "5"}, files=one).json()
        assert single["crops"] is None and single["viewpoint"] is None
        assert all(
            p["evidence"] is None or p["evidence"]["photo"] is None for p in single["predictions"]
        )
        twice = client.post("/identify", files=one * 2).json()

        def answer(body: dict) -> list[tuple[str, float, int | None]]:
            return [
                (p["individual_id"], p["score"], p["evidence"] and p["evidence"]["image_id"])
                for p in body["predictions"]
                if p["individual_id"] != NEW_INDIVIDUAL  # its score is the threshold
            ]

        # The same known individuals and scores (one more may show where new_individual,
        # placed at another threshold, takes or leaves one of the top_k slots).
        shown = min(len(answer(twice)), len(answer(single)))
        assert shown >= 1 and answer(twice)[:shown] == answer(single)[:shown]
        # The threshold for two photos: the single photo's plus the bundle's offset for two.
        offset = encounter_offset(Manifest.read(service_bundle).encounter_offsets, 2)
        assert twice["threshold"] == pytest.approx(single["threshold"] + offset, abs=2e-6)

        too_many = client.post("/identify", files=one * 11)
        assert too_many.status_code == 422 and "at most 10" in too_many.text


def test_viewpoints_over_http(edit_service: Server, catalogue: Path) -> None:
    photos = catalogue_photos(catalogue)
    stranger = list(photos)[GALLERY_INDIVIDUALS + 5]  # not in the gallery
    photo = photos[stranger][0].read_bytes()
    with edit_service.client(edit_service.write_key) as client:
        bad = client.post(
            "/gallery",
            files=[("image", ("s.png", photo, "image/png"))],
            data={"individual_id": "vp-left", "viewpoint": "left side"},
        )
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_field"
        created = client.post(
            "/gallery",
            files=[("image", ("s.png", photo, "image/png"))],
            data={"individual_id": "vp-left", "viewpoint": "Left"},
        )
        assert created.status_code == 201, created.text
        image_id = created.json()["images"][0]["image_id"]
        try:
            assert client.get(f"/gallery/images/{image_id}").json()["viewpoint"] == "left"
            detail = client.get("/gallery/individuals/vp-left").json()
            assert [im["viewpoint"] for im in detail["images"]] == ["left"]

            query = [("image", ("q.png", photo, "image/png"))]
            left = client.post("/identify", files=query, data={"viewpoint": "LEFT"}).json()
            assert left["viewpoint"] == "left"
            assert left["predictions"][0]["individual_id"] == "vp-left"
            assert left["predictions"][0]["evidence"]["image_id"] == image_id
            # The other side: that photo is no evidence, and the rest of the gallery (of
            # unknown viewpoint) is still searched.
            right = client.post("/identify", files=query, data={"viewpoint": "right"}).json()
            assert right["viewpoint"] == "right"
            evidence = [p["evidence"]["image_id"] for p in right["predictions"] if p["evidence"]]
            assert evidence and image_id not in evidence
            plain = client.post("/identify", files=query).json()
            assert plain["viewpoint"] is None
            assert plain["predictions"][0]["evidence"]["image_id"] == image_id
            wrong = client.post("/identify", files=query, data={"viewpoint": "le ft"})
            assert wrong.status_code == 422
        finally:
            assert client.delete("/gallery/individuals/vp-left").status_code == 204
