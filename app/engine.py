"""The identification engine: a loaded bundle, an open gallery and the micro-batcher between them.

decode (thread pool) → detect + crop + embed every ensemble member (batched; each embedding
worker has its own copy of the models and runs one batch at a time in its own thread) → search +
rank (thread pool) → answer. A lone photo (the batcher idle, a JPEG quick to decode) takes one
hand-off instead of three: the worker that embeds it also decodes and searches it. Each hand-off
between the event loop and a thread costs a few hundred microseconds on a small CPU host (the
threads wake cold), which was most of what the service added to the models at concurrency 1
(bench/RESULTS.md); under load the steps stay apart, so decoding runs in parallel with the
batch in flight and searches never hold a worker.

The app's lifespan builds one Engine (`Engine.load`, blocking: it opens sessions, restores or
builds the index and warms the models up) and closes it at shutdown. Routes only call its async
methods, so nothing heavy runs on the event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import io
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from PIL import Image
from starlette.concurrency import run_in_threadpool

from app.batching import MicroBatcher
from app.decode import PhotoInfo, decode_image, photo_info, quick_to_decode
from app.encounters import ENCOUNTER_FUSION, encounter_threshold
from app.metrics import Metrics
from app.pipeline import Pipeline
from app.preprocess import Crop, check_photo
from app.reranker import PairMatches, Reranker
from app.sessions import default_workers
from app.settings import Settings
from app.uploads import Upload
from gallery.errors import NotFoundError, WhaleidError
from gallery.gallery import Gallery
from gallery.keypoints import LocalFeatures
from gallery.records import (
    Candidate,
    ImageRecord,
    Individual,
    IndividualDetail,
    Keep,
    NewImage,
    RegisteredImage,
)
from gallery.rules import check_viewpoint
from gallery.shortlist import Shortlist

__all__ = ["EncounterIdentification", "Engine", "Identification", "Registration"]

log = logging.getLogger("whaleid.app")
T = TypeVar("T")

_WARMUP_SIZE = (320, 240)


Search = Callable[[np.ndarray], list[Candidate]]


@dataclass(frozen=True)
class PhotoJob:
    """One photo for an embedding worker. `photo` as an Upload is decoded (and checked) by the
    worker itself; `local`: the crop's keypoints are wanted; `search`: what the worker then
    ranks the embedding with (the lone-photo path)."""

    photo: Image.Image | Upload
    local: bool
    search: Search | None = None


@dataclass(frozen=True)
class Embedding:
    """One photo through the pipeline: its embedding, its crop and, when the bundle has a
    matcher, the crop's keypoints (a LocalFeatures of one row); where its job asked the worker
    to, the candidates found and the milliseconds that decoding and searching took there."""

    vector: np.ndarray
    crop: Crop | None
    local: LocalFeatures | None
    candidates: list[Candidate] | None = None
    decode_ms: float = 0.0
    search_ms: float = 0.0


@dataclass(frozen=True)
class Identification:
    candidates: list[Candidate]
    threshold: float
    crop: Crop | None
    timing_ms: dict[str, float]
    reranked: bool = False
    viewpoint: str | None = None  # the viewpoint the search was restricted to


@dataclass(frozen=True)
class EncounterIdentification:
    """One answer for several photos of one encounter; each candidate's `evidence_photo` is
    the index of the photo (in request order) that found its evidence."""

    candidates: list[Candidate]
    threshold: float
    crops: list[Crop | None]
    timing_ms: dict[str, float]
    viewpoint: str | None


@dataclass(frozen=True)
class Registration:
    individual_id: str
    images: list[tuple[RegisteredImage, str, Crop | None]]  # record, filename, crop


class Engine:
    def __init__(
        self,
        settings: Settings,
        pipelines: Sequence[Pipeline],
        gallery: Gallery,
        metrics: Metrics,
    ):
        """`pipelines`: copies of one bundle's models, one per embedding worker."""
        if not pipelines:
            raise ValueError("at least one pipeline is needed")
        self.settings = settings
        self.pipelines = list(pipelines)
        self.pipeline = self.pipelines[0]  # the bundle's manifest and fingerprint
        self.gallery = gallery
        self.metrics = metrics
        self.ready = False
        # Keypoints are asked for only where needed: extraction costs more than the embedders
        # (re-ranking, and storing them with a registration).
        self.batcher: MicroBatcher[PhotoJob, Embedding] = MicroBatcher(
            [functools.partial(_embed_batch, p, self._decode_upload) for p in self.pipelines],
            max_batch=settings.max_batch,
            max_wait=settings.max_wait_ms / 1000.0,
            on_batch=self._observe_batch,
            name="whaleid-embed",
        )
        manifest = self.pipeline.manifest
        self.reranker: Reranker | None = None
        self.shortlist_size = 0
        if manifest.rerank is not None and settings.rerank_shortlist != 0:
            self.reranker = Reranker.from_manifest(
                self.pipeline.bundle.path,
                manifest,
                settings.providers,
                spinning=settings.intra_op_spinning,
            )
            self.shortlist_size = settings.rerank_shortlist or manifest.rerank.shortlist
        # Local matching of each query against its shortlist runs in its own worker thread,
        # queries' pairs batched together, so it neither blocks the event loop nor the
        # embedding of the next photos.
        self.matcher: MicroBatcher[tuple[LocalFeatures, LocalFeatures], PairMatches] | None = (
            None
            if self.reranker is None
            else MicroBatcher(
                self.reranker.matcher.match_many,
                max_batch=max(1, settings.max_batch // 4),
                max_wait=settings.max_wait_ms / 1000.0,
                name="whaleid-match",
            )
        )

    # -- life cycle ---------------------------------------------------------------------------

    @classmethod
    def load(cls, settings: Settings, metrics: Metrics) -> Engine:
        """Open the bundle and the gallery and warm the models up (blocking, seconds)."""
        started = time.perf_counter()
        pipeline = Pipeline.from_bundle(
            settings.bundle, settings.providers, spinning=settings.intra_op_spinning
        )
        manifest = pipeline.manifest
        providers = pipeline.bundle.embedders[0].providers
        workers = settings.embed_workers or default_workers(providers)
        pipelines = [pipeline] + [
            Pipeline.from_bundle(
                settings.bundle,
                settings.providers,
                spinning=settings.intra_op_spinning,
                manifest=manifest,
            )
            for _ in range(workers - 1)
        ]
        log.info(
            "bundle %s (%s…): %d embedder(s)%s, dim %d, on %s, %d embedding worker(s)",
            settings.bundle,
            manifest.fingerprint[:12],
            len(manifest.embedders),
            " + detector" if manifest.detector else "",
            manifest.embedding_dim,
            ", ".join(providers),
            workers,
        )
        gallery = Gallery.open(
            settings.gallery,
            fingerprint=manifest.fingerprint,
            dim=manifest.embedding_dim,
            photos_dir=settings.photos_dir,
            index=settings.index,
            snapshot=settings.index_snapshot,
            nprobe=settings.index_nprobe,
        )
        log.info("gallery %s: %d images in the index", _redact(settings.gallery), gallery.size)
        engine = cls(settings, pipelines, gallery, metrics)
        if settings.warmup:
            # First runs allocate arenas and pick kernels (seconds on a GPU): pay that now,
            # before /readyz says yes, not on the first user's request.
            photo = Image.new("RGB", _WARMUP_SIZE, (90, 110, 130))
            for copy in pipelines:
                (first,) = _embed_batch(
                    copy, engine._decode_upload, [PhotoJob(photo, engine.reranker is not None)]
                )
                _embed_batch(
                    copy,
                    engine._decode_upload,
                    [PhotoJob(photo, False)] * min(settings.max_batch, 4),
                )
            if (
                engine.reranker is not None
                and isinstance(first, Embedding)
                and first.local is not None
            ):
                engine.reranker.matcher.match_many([(first.local, first.local)])
        metrics.track_gallery(lambda: float(engine.gallery.size))
        log.info("ready in %.1f s", time.perf_counter() - started)
        return engine

    @property
    def providers(self) -> list[str]:
        return self.pipeline.bundle.embedders[0].providers

    @property
    def rerank_status(self) -> str:
        """`off`, or what re-ranks: method, extractor and shortlist."""
        manifest = self.pipeline.manifest
        if self.reranker is None or manifest.rerank is None or manifest.matcher is None:
            return "off"
        method = manifest.rerank.method
        return f"{method}/{manifest.matcher.extractor}, {self.shortlist_size} photos"

    async def start(self) -> None:
        self.batcher.start()
        if self.matcher is not None:
            self.matcher.start()
        if self.settings.refresh_seconds > 0:
            # Other workers and replicas write to the same store: follow their changes.
            self.gallery.follow(interval=self.settings.refresh_seconds)
        self.ready = True

    async def close(self) -> None:
        self.ready = False
        await self.batcher.close()
        if self.matcher is not None:
            await self.matcher.close()
        # Stops the follower and writes the index snapshot when one is configured.
        await run_in_threadpool(self.gallery.close)

    # -- the steps ----------------------------------------------------------------------------

    def _observe_batch(self, size: int, seconds: float) -> None:
        self.metrics.batch_size.observe(size)
        self.metrics.batch_seconds.observe(seconds)

    async def _gallery(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        # The gallery is thread-safe (searches concurrent, updates alone); its store and faiss
        # calls block, so they run in the thread pool.
        return await run_in_threadpool(fn, *args, **kwargs)

    def _decode_upload(self, upload: Upload) -> Image.Image:
        """The upright photo; a WhaleidError (4xx) when unreadable or unusable."""
        name = upload.filename or "image"
        image = decode_image(
            upload.content,
            max_pixels=self.settings.max_pixels,
            draft_side=self.settings.draft_side,
            name=name,
        )
        check_photo(image, name)
        return image

    async def decode(self, upload: Upload) -> Image.Image:
        """The upright photo, refused here (4xx) when unreadable or unusable, before it joins a
        batch with other requests' photos."""
        return await run_in_threadpool(self._decode_upload, upload)

    async def _photo(self, upload: Upload) -> Image.Image | Upload:
        """What a single-photo request hands the batcher: the upload itself where the worker
        will decode it (a lone photo, quick to decode), else the photo decoded here, in
        parallel with the batch in flight. A photo that could hold the worker for long (a big
        PNG) is never the worker's to decode."""
        if self.batcher.idle and quick_to_decode(upload.content):
            return upload
        return await self.decode(upload)

    def _search_one(
        self,
        vector: np.ndarray,
        *,
        top_k: int,
        threshold: float,
        species: str | None,
        viewpoint: str | None,
    ) -> list[Candidate]:
        (candidates,) = self.gallery.search(
            vector[None, :],
            top_k=top_k,
            threshold=threshold,
            species=species,
            viewpoint=viewpoint,
        )
        return candidates

    # -- what routes call ---------------------------------------------------------------------

    async def identify(
        self,
        upload: Upload,
        *,
        top_k: int,
        species: str | None,
        viewpoint: str | None = None,
        explain: bool = False,
    ) -> Identification:
        """The top_k individuals for one photo: global kNN, then, when the bundle re-ranks,
        local matches against the shortlist fused with it. `explain`: matched keypoints in
        each candidate's evidence."""
        timing: dict[str, float] = {}
        start = time.perf_counter()
        viewpoint = check_viewpoint(viewpoint)
        photo = await self._photo(upload)
        decoded = time.perf_counter()
        reranks = self.reranker is not None
        # Without re-ranking, a photo the worker decodes is searched there too.
        search = None
        if isinstance(photo, Upload) and not reranks:
            threshold = self._threshold(species, viewpoint)
            search = functools.partial(
                self._search_one,
                top_k=top_k,
                threshold=threshold,
                species=species,
                viewpoint=viewpoint,
            )
        embedding, waited = await self.batcher.submit(PhotoJob(photo, reranks, search))
        embedded = time.perf_counter()
        in_worker = embedding.decode_ms + embedding.search_ms
        timing["decode"] = (decoded - start) * 1000 + embedding.decode_ms
        timing["queue"] = waited * 1000
        timing["embed"] = (embedded - decoded - waited) * 1000 - in_worker
        reranked = reranks and embedding.local is not None
        if reranked:
            candidates, threshold = await self._reranked(
                embedding,
                top_k=top_k,
                species=species,
                viewpoint=viewpoint,
                explain=explain,
                timing=timing,
            )
        elif embedding.candidates is not None:
            candidates = embedding.candidates
            timing["search"] = embedding.search_ms
        else:
            threshold = self._threshold(species, viewpoint)
            candidates = await self._gallery(
                self._search_one,
                embedding.vector,
                top_k=top_k,
                threshold=threshold,
                species=species,
                viewpoint=viewpoint,
            )
            timing["search"] = (time.perf_counter() - embedded) * 1000
        timing["total"] = (time.perf_counter() - start) * 1000
        return Identification(
            candidates=list(candidates),
            threshold=threshold,
            crop=embedding.crop,
            timing_ms={k: round(v, 2) for k, v in timing.items()},
            reranked=reranked,
            viewpoint=viewpoint,
        )

    def _threshold(self, species: str | None, viewpoint: str | None) -> float:
        """The new_individual threshold of a global search (the bundle's, for the size of the
        gallery searched)."""
        return self.pipeline.manifest.threshold_for(species, self._searched(viewpoint))

    def _searched(self, viewpoint: str | None) -> int:
        """The size of the gallery a query of this viewpoint is searched in: its threshold's."""
        if viewpoint is None:
            return self.gallery.size
        return self.gallery.count_compatible(viewpoint)

    async def _reranked(
        self,
        embedding: Embedding,
        *,
        top_k: int,
        species: str | None,
        viewpoint: str | None,
        explain: bool,
        timing: dict[str, float],
    ) -> tuple[list[Candidate], float]:
        """Shortlist → the shortlisted photos' stored keypoints → local matches (the match
        worker) → fused ranking (app.reranker, as export tuned it)."""
        assert self.reranker is not None and self.matcher is not None
        assert embedding.local is not None
        spec = self.pipeline.manifest.matcher
        assert spec is not None
        started = time.perf_counter()

        def shortlist() -> tuple[Shortlist, LocalFeatures]:
            found = self.gallery.shortlist(
                embedding.vector[None, :],
                hits=self.shortlist_size,
                species=species,
                viewpoint=viewpoint,
            )
            ids = found.image_ids[0]
            features, _ = self.gallery.local_features(
                ids[ids >= 0].tolist(), max_keypoints=spec.max_keypoints, dim=spec.descriptor_dim
            )
            return found, features

        found, features = await run_in_threadpool(shortlist)
        listed = time.perf_counter()
        matches, _ = await self.matcher.submit((embedding.local, features))
        matched = time.perf_counter()
        local = np.full(found.sims.shape, np.nan)
        local[0, : len(matches.counts)] = matches.counts
        threshold = self.pipeline.manifest.rerank_threshold_for(self._searched(viewpoint))
        reranked = self.reranker.rerank(
            found.sims,
            found.codes,
            embedding.local,
            [features],
            threshold,
            top_k,
            local=(local, [matches]),
        )
        points = None
        if explain:
            points = [
                [
                    _photo_points(embedding.local, features, b, pairs)
                    for b, pairs in enumerate(matches.pairs)
                ]
            ]
        candidates = found.candidates(reranked.ranking, matches=local, points=points)
        done = time.perf_counter()
        timing["search"] = (listed - started) * 1000
        timing["match"] = (matched - listed) * 1000
        timing["rank"] = (done - matched) * 1000
        return candidates[0], threshold

    async def identify_encounter(
        self,
        uploads: Sequence[Upload],
        *,
        top_k: int,
        species: str | None,
        viewpoint: str | None = None,
    ) -> EncounterIdentification:
        """One answer for several photos of one encounter: each embedded through the batcher
        (concurrently, so they share batches), the individuals' scores fused across photos.
        Global similarity only: re-ranking by local matches is per photo."""
        timing: dict[str, float] = {}
        start = time.perf_counter()
        viewpoint = check_viewpoint(viewpoint)
        images = await _every(self.decode(u) for u in uploads)
        decoded = time.perf_counter()
        embedded_all = await _every(self.batcher.submit(PhotoJob(img, False)) for img in images)
        embedded = time.perf_counter()
        vectors = np.stack([e.vector for e, _ in embedded_all])
        threshold = encounter_threshold(
            self.pipeline.manifest, species, self._searched(viewpoint), len(uploads)
        )
        candidates = await self._gallery(
            self.gallery.search_encounter,
            vectors,
            threshold=threshold,
            top_k=top_k,
            species=species,
            viewpoint=viewpoint,
            fusion=ENCOUNTER_FUSION,
        )
        done = time.perf_counter()
        waited = max(w for _, w in embedded_all)
        timing["decode"] = (decoded - start) * 1000
        timing["queue"] = waited * 1000
        timing["embed"] = (embedded - decoded - waited) * 1000
        timing["search"] = (done - embedded) * 1000
        timing["total"] = (done - start) * 1000
        return EncounterIdentification(
            candidates=candidates,
            threshold=threshold,
            crops=[e.crop for e, _ in embedded_all],
            timing_ms={k: round(v, 2) for k, v in timing.items()},
            viewpoint=viewpoint,
        )

    async def register(
        self,
        uploads: Sequence[Upload],
        *,
        individual_id: str,
        species: str | None,
        encounter: str | None,
        metadata: dict[str, Any] | None,
        viewpoint: str | None = None,
    ) -> Registration:
        # A bundle with a matcher stores every registered crop's keypoints, re-ranking on or
        # off here: the gallery serves whichever setting the next start has.
        keypoints = self.pipeline.has_matcher
        # Every photo is decoded before any is embedded: one bad photo refuses the request
        # and nothing is stored.
        images = [await self.decode(u) for u in uploads]
        outcomes = await asyncio.gather(
            *(self.batcher.submit(PhotoJob(img, keypoints)) for img in images),
            return_exceptions=True,
        )
        # Every photo's outcome is collected before the first failure is raised, so none is
        # left unretrieved; one failure stores nothing.
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        embedded = [o for o in outcomes if not isinstance(o, BaseException)]
        new = [
            NewImage(
                content=u.content,
                filename=u.filename,
                vector=e.vector,
                encounter=encounter,
                box=None if e.crop is None else e.crop.box,
                local=None if e.local is None else e.local.compact(0),
                viewpoint=viewpoint,
            )
            for u, (e, _) in zip(uploads, embedded, strict=True)
        ]
        registered = await self._gallery(
            self.gallery.register,
            individual_id=individual_id,
            species=species,
            images=new,
            metadata=metadata,
        )
        crops = [e.crop for e, _ in embedded]
        return Registration(
            individual_id=individual_id,
            images=[(r, u.filename, c) for r, u, c in zip(registered, uploads, crops, strict=True)],
        )

    async def individuals(
        self, *, limit: int, offset: int, species: str | None
    ) -> list[Individual]:
        return list(
            await self._gallery(
                self.gallery.individuals, limit=limit, offset=offset, species=species
            )
        )

    async def individual(self, individual_id: str) -> IndividualDetail:
        return await self._gallery(self.gallery.individual, individual_id)

    async def update_individual(
        self,
        individual_id: str,
        *,
        new_id: str | None,
        species: str | Keep | None,
        metadata: dict[str, Any] | None,
    ) -> IndividualDetail:
        """Rename and/or set species and metadata; the individual as it is now."""
        await self._gallery(
            self.gallery.update, individual_id, new_id=new_id, species=species, metadata=metadata
        )
        return await self.individual(new_id or individual_id)

    async def merge(self, source: str, target: str) -> IndividualDetail:
        """Merge `source` into `target`; the index follows before this returns."""
        await self._gallery(self.gallery.merge, source, target)
        return await self.individual(target)

    async def image(self, image_id: int) -> tuple[ImageRecord, PhotoInfo | None]:
        """An image's record, and what its kept photo is (None when the gallery keeps none, or
        its file is gone: the record still answers)."""

        def read() -> tuple[ImageRecord, PhotoInfo | None]:
            record = self.gallery.image(image_id)
            if self.gallery.photos is None:
                return record, None
            try:
                content = self.gallery.photos.get(record.content_hash)
            except NotFoundError:
                return record, None
            return record, photo_info(content, name=f"image {image_id}")

        return await run_in_threadpool(read)

    async def photo(self, image_id: int) -> tuple[bytes, str]:
        """A gallery photo as it was registered, with its media type."""

        def read() -> tuple[bytes, str]:
            content = self.gallery.photo(image_id)
            return content, photo_info(content, name=f"image {image_id}").media_type

        return await run_in_threadpool(read)

    async def delete_individual(self, individual_id: str) -> None:
        await self._gallery(self.gallery.delete_individual, individual_id)

    async def thumbnail(self, image_id: int, size: int) -> bytes:
        """A JPEG of a gallery photo, upright, its longer side at most `size` (evidence to
        show a person); NotFoundError when the gallery keeps no photos."""

        def make() -> bytes:
            photo = decode_image(
                self.gallery.photo(image_id), max_pixels=self.settings.max_pixels, draft_side=size
            )
            photo.thumbnail((size, size))
            buf = io.BytesIO()
            photo.save(buf, format="JPEG", quality=85)
            return buf.getvalue()

        return await run_in_threadpool(make)

    async def delete_image(self, image_id: int) -> None:
        await self._gallery(self.gallery.delete_image, image_id)


async def _every(steps: Iterable[Awaitable[T]]) -> list[T]:
    """Run the steps concurrently; every outcome is collected before the first failure is
    raised, so none is left unretrieved (one bad photo fails the whole encounter)."""
    outcomes = await asyncio.gather(*steps, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return [o for o in outcomes if not isinstance(o, BaseException)]


def _photo_points(
    query: LocalFeatures, candidates: LocalFeatures, row: int, pairs: np.ndarray
) -> np.ndarray:
    """(M, 4) matched keypoints of the query and candidate `row`, in their photos' pixels."""
    if len(pairs) == 0:
        return np.zeros((0, 4), np.float32)
    xy_query = query.to_photo(0, query.keypoints[0][pairs[:, 0]])
    xy_gallery = candidates.to_photo(row, candidates.keypoints[row][pairs[:, 1]])
    return np.concatenate([xy_query, xy_gallery], axis=1)


def _redact(url: str) -> str:
    """A store URL fit for a log line: no password."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        credentials, _, host = rest.rpartition("@")
        user = credentials.split(":", 1)[0]
        return f"{scheme}{sep}{user}:***@{host}"
    return url


def _embed_batch(
    pipeline: Pipeline, decode: Callable[[Upload], Image.Image], jobs: list[PhotoJob]
) -> list[Embedding | Exception]:
    """One batch through one copy of the models (in its embedding worker's thread): uploads
    decoded first, each refused alone (its WhaleidError is its answer); the others embedded
    together; then each job's search, a failure answering only its own request."""
    decode_ms = [0.0] * len(jobs)
    photos: list[Image.Image | Exception] = []
    for i, job in enumerate(jobs):
        if not isinstance(job.photo, Upload):
            photos.append(job.photo)
            continue
        started = time.perf_counter()
        try:
            photos.append(decode(job.photo))
        except WhaleidError as exc:
            photos.append(exc)
        decode_ms[i] = (time.perf_counter() - started) * 1000
    images = [photo for photo in photos if isinstance(photo, Image.Image)]
    wanted = any(
        job.local for job, photo in zip(jobs, photos, strict=True) if isinstance(photo, Image.Image)
    )
    embedded = pipeline.embed(images, local=wanted)
    local = embedded.local
    outcomes: list[Embedding | Exception] = []
    row = 0
    for job, photo, ms in zip(jobs, photos, decode_ms, strict=True):
        if isinstance(photo, Exception):
            outcomes.append(photo)
            continue
        embedding = Embedding(
            embedded.vectors[row],
            embedded.crops[row],
            None if local is None or not job.local else local.take([row]),
            decode_ms=ms,
        )
        outcomes.append(_searched(job.search, embedding))
        row += 1
    return outcomes


def _searched(search: Search | None, embedding: Embedding) -> Embedding | Exception:
    """The embedding with its job's search done, or the search's failure."""
    if search is None:
        return embedding
    started = time.perf_counter()
    try:
        candidates = search(embedding.vector)
    except Exception as exc:  # the request's own failure, answered as the pool path would
        return exc
    search_ms = (time.perf_counter() - started) * 1000
    return dataclasses.replace(embedding, candidates=candidates, search_ms=search_ms)
