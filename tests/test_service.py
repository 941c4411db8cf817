"""The identification service end to end: a real `whaleid serve` process, real multipart
requests over TCP, a SQLite gallery on disk that survives a restart."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fixtures.service import (
    GALLERY_INDIVIDUALS,
    GALLERY_PHOTOS,
    Server,
    catalogue_photos,
    next_frame,
)
from PIL import Image

from app.manifest import Manifest

# The first test to ask for the session bundle pays for training it (two runs and a detector,
# tens of minutes on a loaded 2-core host), as the bundle and bench tests allow for.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2700)]

NEW = "new_individual"


def jpeg_part(path: Path) -> dict[str, tuple[str, bytes, str]]:
    return {"image": (path.name, path.read_bytes(), "image/jpeg")}


def test_identify_answers_five_predictions_with_new_individual(
    service: Server, service_bundle: Path, catalogue: Path
) -> None:
    photos = catalogue_photos(catalogue)
    known = next(iter(photos))
    query = photos[known][GALLERY_PHOTOS]  # a photo that is not in the gallery
    with service.client(service.read_key) as client:
        response = client.post("/identify", files=jpeg_part(query))
        gallery_size = client.get("/readyz").json()["gallery_size"]
    assert response.status_code == 200, response.text
    body = response.json()
    predictions = body["predictions"]
    assert len(predictions) == 5
    ids = [p["individual_id"] for p in predictions]
    assert NEW in ids and len(set(ids)) == 5
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores, reverse=True)
    for p in predictions:
        if p["individual_id"] == NEW:
            assert p["evidence"] is None and p["score"] == pytest.approx(body["threshold"])
        else:
            assert p["evidence"]["similarity"] == pytest.approx(p["score"])
    # The threshold tuned for a gallery of this size: lower than the whole validation
    # gallery's, whose 628 photos give a new individual's photo more impostors.
    manifest = Manifest.read(service_bundle)
    assert body["threshold"] == pytest.approx(manifest.threshold_for(None, gallery_size))
    if manifest.threshold_curve and gallery_size < manifest.threshold_curve[-1].images:
        assert body["threshold"] < manifest.threshold
    assert len(body["model"]) == 64
    assert {"decode", "queue", "embed", "search", "total"} <= set(body["timing_ms"])


def test_top_k_and_species_filter(service: Server, catalogue: Path) -> None:
    photos = catalogue_photos(catalogue)
    query = photos[list(photos)[1]][GALLERY_PHOTOS]
    with service.client(service.read_key) as client:
        three = client.post("/identify", files=jpeg_part(query), data={"top_k": "3"})
        bad = client.post("/identify", files=jpeg_part(query), data={"top_k": "0"})
    assert three.status_code == 200 and len(three.json()["predictions"]) == 3
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_field"


def test_registered_individual_ranks_first_and_survives_a_restart(
    service: Server, strangers: Path
) -> None:
    """A photo registered for a new individual (an animal no model of the bundle was trained
    on) is searchable from the next request, durably: the next frame of that photo ranks it
    first, and still does after a restart. Identification across different photos, which is
    the model's part, is the next test's."""
    photos = catalogue_photos(strangers)
    first = photos[next(iter(photos))][0]
    query = {"image": ("next-frame.jpg", next_frame(first), "image/jpeg")}
    with service.client(service.write_key) as client:
        registered = client.post(
            "/gallery",
            files=jpeg_part(first),
            data={"individual_id": "newcomer-1", "encounter": "survey 7"},
        )
        assert registered.status_code == 201, registered.text
        (image,) = registered.json()["images"]
        assert image["created"] is True and isinstance(image["image_id"], int)
        before = client.post("/identify", files=query).json()
    assert before["predictions"][0]["individual_id"] == "newcomer-1"
    assert before["predictions"][0]["evidence"]["image_id"] == image["image_id"]

    service.restart()
    with service.client(service.read_key) as client:
        after = client.post("/identify", files=query).json()
        detail = client.get("/gallery/individuals/newcomer-1")
    assert after["predictions"][0]["individual_id"] == "newcomer-1"
    assert after["predictions"][0]["score"] == pytest.approx(before["predictions"][0]["score"])
    assert detail.status_code == 200
    assert [i["id"] for i in detail.json()["images"]] == [image["image_id"]]


def test_new_individuals_are_identified_from_their_other_photos(
    service: Server, strangers: Path
) -> None:
    """Ten new individuals registered over HTTP with one photo each; each of their other
    photos (independent shots: pose, light, sea, camera all redrawn) is sent to /identify.

    Scored from the HTTP answers: how often the newcomer is the best-scored individual, how
    often it ranks first overall (ahead of new_individual too), and MAP@5 with new_individual
    where the bundle's threshold puts it. Chance is 1 in 19 individuals; a service whose
    preprocessing or ranking drifted from training's would fall to it. The tiny CPU bundle's
    training is not bit-identical across CPUs (oneDNN picks other kernels), and its figure
    moves with it: measured 70% best, 58% first, MAP@5 0.67 on one host; 50% best and 25% first
    (of 20 queries) on CI's. The bounds sit below both and far above chance (P(8 or more of 40
    first by chance) < 0.001). Ranking first needs the threshold tuned for a gallery this small
    (about 0.71, against 0.81 for the 628 photos of the validation gallery): with that one
    threshold it was 25%."""
    photos = catalogue_photos(strangers)
    newcomers = {f"stranger-{k}": shots for k, shots in enumerate(list(photos.values())[1:])}
    hits, firsts, precision = [], [], []
    with service.client(service.write_key) as client:
        for name, shots in newcomers.items():
            made = client.post("/gallery", files=jpeg_part(shots[0]), data={"individual_id": name})
            assert made.status_code == 201, made.text
        for name, shots in newcomers.items():
            for shot in shots[1:]:
                answer = client.post("/identify", files=jpeg_part(shot)).json()
                ids = [p["individual_id"] for p in answer["predictions"]]
                hits.append(next(i for i in ids if i != NEW) == name)
                firsts.append(ids[0] == name)
                precision.append(1 / (ids.index(name) + 1) if name in ids else 0.0)
    best, map5 = sum(hits) / len(hits), sum(precision) / len(precision)
    print(
        f"\nbest-scored individual right on {sum(hits)}/{len(hits)}, "
        f"first overall on {sum(firsts)}/{len(firsts)}; MAP@5 {map5:.3f}"
    )
    assert best >= 0.4
    assert sum(firsts) / len(firsts) >= 0.2
    assert map5 >= 0.5


def test_gallery_resources(service: Server, catalogue: Path) -> None:
    photos = catalogue_photos(catalogue)
    someone = list(photos)[GALLERY_INDIVIDUALS + 5]
    write = service.client(service.write_key)
    read = service.client(service.read_key)
    with write, read:
        made = write.post(
            "/gallery",
            files=[("image", (p.name, p.read_bytes(), "image/jpeg")) for p in photos[someone][:2]],
            data={"individual_id": "to-delete", "metadata": '{"sex": "F"}'},
        )
        assert made.status_code == 201, made.text
        ids = [i["image_id"] for i in made.json()["images"]]
        again = write.post(
            "/gallery", files=jpeg_part(photos[someone][0]), data={"individual_id": "x-2"}
        )
        assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"

        listing = read.get("/gallery/individuals", params={"limit": 1000}).json()
        assert "to-delete" in [i["id"] for i in listing["items"]]
        detail = read.get("/gallery/individuals/to-delete").json()
        assert detail["image_count"] == 2 and detail["metadata"] == {"sex": "F"}

        assert write.delete(f"/gallery/images/{ids[0]}").status_code == 204
        assert read.get("/gallery/individuals/to-delete").json()["image_count"] == 1
        assert write.delete("/gallery/individuals/to-delete").status_code == 204
        gone = read.get("/gallery/individuals/to-delete")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"
        assert write.delete(f"/gallery/images/{ids[1]}").status_code == 404
        assert read.get("/gallery/individuals/bad id!").status_code in (404, 422)


def test_keys_missing_wrong_or_insufficient(service: Server, catalogue: Path) -> None:
    query = next(iter(catalogue_photos(catalogue).values()))[0]
    data = {"individual_id": "intruder"}
    with service.client() as anonymous:
        missing = anonymous.post("/identify", files=jpeg_part(query))
        missing_write = anonymous.post("/gallery", files=jpeg_part(query), data=data)
    with service.client("whid_not-a-real-key") as stranger:
        wrong = stranger.post("/identify", files=jpeg_part(query))
    with service.client(service.read_key) as reader:
        too_small = reader.post("/gallery", files=jpeg_part(query), data=data)
        delete = reader.delete("/gallery/individuals/intruder")
    for response, status, code in [
        (missing, 401, "missing_key"),
        (missing_write, 401, "missing_key"),
        (wrong, 403, "forbidden"),
        (too_small, 403, "forbidden"),
        (delete, 403, "forbidden"),
    ]:
        assert response.status_code == status, response.text
        assert response.json()["error"]["code"] == code


def test_health_ready_metrics_and_docs(service: Server) -> None:
    with service.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz").json()
        assert ready["status"] == "ready" and ready["gallery_size"] >= GALLERY_INDIVIDUALS
        # On the CPU provider alone the service runs two copies of the models by default.
        assert ready["providers"] == ["CPUExecutionProvider"] and ready["embed_workers"] == 2
        metrics = client.get("/metrics").text
        missing = client.get("/no/such/path")
        schema = client.get("/openapi.json").json()
    assert 'whaleid_request_seconds_count{method="POST",route="/identify"' in metrics
    assert "whaleid_batch_size_bucket" in metrics and "whaleid_gallery_images" in metrics
    assert 'whaleid_errors_total{code="missing_key",status="401"}' in metrics
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    identify = schema["paths"]["/identify"]["post"]
    assert {"400", "401", "403", "413", "415", "422", "503"} <= set(identify["responses"])
    assert "ErrorResponse" in schema["components"]["schemas"]


def test_review_page_and_evidence_thumbnails(service: Server, catalogue: Path) -> None:
    photos = catalogue_photos(catalogue)
    query = photos[next(iter(photos))][GALLERY_PHOTOS]
    with service.client(service.read_key) as client:
        page = client.get("/review")
        script = client.get("/review/review.js")
        style = client.get("/review/review.css")
        answer = client.post("/identify", files=jpeg_part(query)).json()
        evidence = next(p["evidence"] for p in answer["predictions"] if p["evidence"])
        thumb = client.get(f"/gallery/images/{evidence['image_id']}/thumbnail", params={"size": 64})
        missing = client.get("/gallery/images/999999/thumbnail")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'src="review/review.js"' in page.text and 'href="review/review.css"' in page.text
    assert script.status_code == 200 and "text/javascript" in script.headers["content-type"]
    assert '"identify?explain=1"' in script.text and "document.cookie" not in script.text
    assert style.status_code == 200 and "text/css" in style.headers["content-type"]
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 64
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def batch_counts(metrics: str) -> tuple[float, float]:
    """(photos embedded, batches run) from the batch-size histogram."""
    values = {}
    for line in metrics.splitlines():
        if line.startswith(("whaleid_batch_size_sum", "whaleid_batch_size_count")):
            name, value = line.split()
            values[name] = float(value)
    return values["whaleid_batch_size_sum"], values["whaleid_batch_size_count"]


def test_concurrent_requests_share_batches(service: Server, catalogue: Path) -> None:
    """Batched with others, on either of the CPU's two embedding workers (each its own copy
    of the models), a photo gets the answer it gets alone."""
    photos = [p for group in catalogue_photos(catalogue).values() for p in group][:16]
    with service.client(service.read_key) as client:
        alone = [client.post("/identify", files=jpeg_part(p)).json() for p in photos]
        before = batch_counts(client.get("/metrics").text)
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda p: client.post("/identify", files=jpeg_part(p)), photos))
        after = batch_counts(client.get("/metrics").text)
    assert all(a.status_code == 200 for a in answers)
    embedded, batches = after[0] - before[0], after[1] - before[1]
    assert embedded == len(photos)
    assert batches < len(photos)  # some requests were embedded together
    for single, batched in zip(alone, (a.json() for a in answers), strict=True):
        assert [p["individual_id"] for p in batched["predictions"]] == [
            p["individual_id"] for p in single["predictions"]
        ]
        assert [p["score"] for p in batched["predictions"]] == pytest.approx(
            [p["score"] for p in single["predictions"]], abs=1e-4
        )
