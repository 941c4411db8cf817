"""Re-ranking in the service, end to end: a bundle exported with `--matcher`, a real server, photos
registered over HTTP (their keypoints stored), and `POST /identify` answering with the fused
probability, each candidate's global similarity and match count, and with `?explain=1` the
matched keypoints in photo pixels. With WHALEID_RERANK_SHORTLIST=0 the same bundle answers
exactly as the bundle exported from the same run without a matcher."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures.service import (
    GALLERY_PHOTOS,
    REPO,
    Server,
    catalogue_photos,
    register_catalogue,
    start_server,
)
from PIL import Image

from app.manifest import Manifest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2700)]

NEW = "new_individual"


def serving(bundle: Path, catalogue: Path, workdir: Path, **env: str) -> Iterator[Server]:
    """A server on `bundle` whose gallery holds the session's catalogue individuals."""
    server = start_server(bundle, workdir, **env)
    try:
        register_catalogue(server, catalogue)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def rerank_service(
    rerank_bundle: Path, catalogue: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    yield from serving(rerank_bundle, catalogue, tmp_path_factory.mktemp("rerank-service"))


@pytest.fixture(scope="module")
def rerank_off_service(
    rerank_bundle: Path, catalogue: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("rerank-off")
    yield from serving(rerank_bundle, catalogue, workdir, WHALEID_RERANK_SHORTLIST="0")


@pytest.fixture(scope="module")
def plain_service(
    plain_rerank_twin: Path, catalogue: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    yield from serving(plain_rerank_twin, catalogue, tmp_path_factory.mktemp("plain-service"))


def queries(catalogue: Path, count: int = 6) -> list[Path]:
    """Photos of registered individuals that are not in the gallery."""
    photos = catalogue_photos(catalogue)
    return [photos[i][GALLERY_PHOTOS] for i in list(photos)[:count]]


def identify(server: Server, path: Path, explain: bool = False) -> dict:
    url = "/identify?explain=1" if explain else "/identify"
    with server.client(server.read_key) as client:
        response = client.post(url, files={"image": (path.name, path.read_bytes(), "image/jpeg")})
    assert response.status_code == 200, response.text
    return response.json()


def test_readyz_reports_reranking(
    rerank_service: Server, rerank_off_service: Server, rerank_bundle: Path
) -> None:
    spec = Manifest.read(rerank_bundle).rerank
    assert spec is not None
    with rerank_service.client() as client:
        on = client.get("/readyz").json()["rerank"]
    with rerank_off_service.client() as client:
        off = client.get("/readyz").json()["rerank"]
    assert on == f"{spec.method}/aliked, {spec.shortlist} photos"
    assert off == "off"


def test_identify_answers_the_fused_probability_with_its_evidence(
    rerank_service: Server, rerank_bundle: Path, catalogue: Path
) -> None:
    manifest = Manifest.read(rerank_bundle)
    matched = 0
    for query in queries(catalogue):
        body = identify(rerank_service, query, explain=True)
        assert body["reranked"] is True
        assert "match" in body["timing_ms"]
        assert 0.0 <= body["threshold"] <= 1.0
        assert body["threshold"] == pytest.approx(
            manifest.rerank_threshold_for(rerank_gallery_size(rerank_service)), abs=1e-6
        )
        predictions = body["predictions"]
        assert NEW in [p["individual_id"] for p in predictions]
        scores = [p["score"] for p in predictions]
        assert scores == sorted(scores, reverse=True)
        assert all(0.0 <= s <= 1.0 for s in scores)
        width, height = Image.open(query).size
        for p in predictions:
            if p["individual_id"] == NEW:
                assert p["evidence"] is None
                continue
            evidence = p["evidence"]
            assert -1.0 <= evidence["similarity"] <= 1.0
            assert isinstance(evidence["match_count"], int)
            assert len(evidence["matches"]) == evidence["match_count"]
            matched += evidence["match_count"] > 0
            gallery_photo = gallery_size_of(rerank_service, evidence["image_id"])
            for xq, yq, xg, yg in evidence["matches"]:
                # Upright photo pixels on both sides (a pixel of slack for rounding).
                assert -1 <= xq <= width + 1 and -1 <= yq <= height + 1
                assert -1 <= xg <= gallery_photo[0] + 1 and -1 <= yg <= gallery_photo[1] + 1
    assert matched > 0  # some candidate of some query was matched at all


def test_explain_is_needed_for_the_points(rerank_service: Server, catalogue: Path) -> None:
    body = identify(rerank_service, queries(catalogue, 1)[0])
    for p in body["predictions"]:
        if p["evidence"] is not None:
            assert p["evidence"]["matches"] is None
            assert p["evidence"]["match_count"] is not None


def test_reranking_off_answers_as_the_bundle_without_a_matcher(
    rerank_off_service: Server, plain_service: Server, catalogue: Path
) -> None:
    for query in queries(catalogue):
        off = identify(rerank_off_service, query)
        plain = identify(plain_service, query)
        assert off["reranked"] is False and plain["reranked"] is False
        assert [p["individual_id"] for p in off["predictions"]] == [
            p["individual_id"] for p in plain["predictions"]
        ]
        assert [p["score"] for p in off["predictions"]] == pytest.approx(
            [p["score"] for p in plain["predictions"]], abs=1e-5
        )
        assert off["threshold"] == pytest.approx(plain["threshold"], abs=1e-6)
        for p in off["predictions"]:
            assert p["evidence"] is None or p["evidence"]["match_count"] is None


def test_predict_reranks_as_the_service_does(
    rerank_service: Server, rerank_bundle: Path, catalogue: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "queries"
    folder.mkdir()
    chosen = queries(catalogue)
    for path in chosen:
        (folder / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "predictions.csv"
    gallery = rerank_service.workdir / "gallery.db"
    command = ["predict", "--bundle", str(rerank_bundle), "--gallery", str(gallery)]
    command += ["--images", str(folder), "--out", str(out), "--quiet"]
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", *command],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    rows = dict(line.split(",", 1) for line in out.read_text().splitlines()[1:])
    for path in chosen:
        served = [p["individual_id"] for p in identify(rerank_service, path)["predictions"]]
        assert rows[path.name].split() == served


def rerank_gallery_size(server: Server) -> int:
    with server.client() as client:
        return int(client.get("/readyz").json()["gallery_size"])


def gallery_size_of(server: Server, image_id: int) -> tuple[int, int]:
    """The (width, height) of a gallery image's upright photo, read back over HTTP."""
    with server.client(server.read_key) as client:
        response = client.get(f"/gallery/images/{image_id}/photo")
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(response.content)).size
