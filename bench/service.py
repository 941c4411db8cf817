"""Service throughput: the raw onnxruntime models, the running service over HTTP, a seed pipeline.

On one bundle and the held-out photos of the catalogue it was trained on, side by side in one
run, each photo starting from its JPEG bytes in memory:
(a) raw: the bundle's ONNX sessions (detector, then each embedder) called directly, one photo at
    a time, with the shared preprocessing functions and the least numpy glue (then a flat
    faiss search and gallery.rank): the floor under any serving overhead, with the service's
    session options. (a′) is the same with onnxruntime's default intra-op spinning on, the one
    session option that matters on a small CPU (the service turns it off);
(b) service: `whaleid serve` in a subprocess (WHALEID_* settings, a SQLite gallery of the
    catalogue's gallery photos, an API key made for the run), real multipart POST /identify
    over HTTP at concurrency 1 and 8, from a lean client (bench/loadgen.py: each photo's body
    encoded once, keep-alive connections) so that the client, on the same cores, takes as
    little of them as it can; `--clients lean httpx` adds rows from httpx;
(c) seed-style: what the Happywhale notebooks did per photo: the ultralytics detector and the
    torch embedders in eager mode, PIL and torch tensor preprocessing one photo at a time, an
    IndexFlatIP search and the seeds' pandas ranking (bench/ranking.py's `seed_ranking`).
It prints images/s and p50/p95 latency of each, the ratios (b)/(a) and (b)/(c), and how often
they agree on the top-1 individual (a sanity check, not timed). Everything runs on the CPU here;
`--device cuda` gives the GPU rows (onnxruntime's CUDA provider, torch on cuda) where there is one.

    nice python -m bench.service           # on the demo in .demo (built if missing)
    nice python -m bench.service --bundle B --run R1 --run R2 --detector-run D [--catalogue C]
    python -m bench.service --quick ...    # a smoke run (the test suite runs it on its fixtures)
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    # Run as a script, this folder comes first on sys.path and bench/gallery.py would shadow
    # the `gallery` package: look in the repository root instead.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import faiss
import httpx
import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

from app.decode import decode_image
from app.detector import best_crop
from app.embedder import combine
from app.manifest import EmbedderSpec, Manifest
from app.pipeline import Pipeline
from app.preprocess import (
    Crop,
    EmbedTransform,
    crop_box,
    hflip,
    l2_normalize,
    letterbox,
    pad_box,
)
from app.sessions import open_session, resolve_providers
from bench.large_photos import camera_jpeg
from bench.loadgen import LeanClient, multipart
from bench.server import ServeProcess, ServerFailed, serve_env
from gallery.keypoints import StoredFeatures
from gallery.rank import NEW, NEW_INDIVIDUAL, rank

REPO = Path(__file__).resolve().parents[1]
HITS = 50
TOP_K = 5
CONCURRENCY = (1, 8)
SHORTLISTS = (10, 20, 40)
QUICK_QUERIES = 6
QUICK_GALLERY = 64
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _seed_ranking() -> Callable[..., list[list[int]]]:
    """bench/ranking.py's seed_ranking, loaded from its file (bench/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_ranking", REPO / "bench" / "ranking.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.seed_ranking  # type: ignore[no-any-return]


# -- inputs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Inputs:
    """A bundle, the runs it was exported from (in manifest order) and its detector run."""

    bundle: Path
    runs: list[Path]
    detector_run: Path | None
    catalogue: Path | None = None


@dataclass(frozen=True)
class BenchPhoto:
    """One catalogue photo as the benchmark uses it: name, truth, JPEG bytes."""

    image: str
    individual_id: str
    species: str
    content: bytes


def build_demo(work: Path) -> Inputs:
    """The demo's catalogue, tiny embedder, tiny detector and bundle, made by `whaleid demo`'s own
    steps in `work` (each skipped when its output is already there, as the demo does: a folder
    where `whaleid demo --out WORK` ran is used as it is)."""
    from training.commands import demo

    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    catalogue = demo.make_catalogue(work)
    embedder = demo.train_embedder(catalogue, work)
    detector = demo.train_detector(catalogue, work)
    bundle = demo.export(embedder, detector, work)
    return Inputs(bundle, [embedder], detector, catalogue)


def check_runs(manifest: Manifest, runs: Sequence[Path]) -> None:
    """The runs must be the bundle's embedders, in its order: (c) stands in for them."""
    from training.runs import Run

    if len(runs) != len(manifest.embedders):
        raise SystemExit(
            f"--run: the bundle has {len(manifest.embedders)} embedders, {len(runs)} runs given"
        )
    for i, (spec, path) in enumerate(zip(manifest.embedders, runs, strict=True)):
        model = Run(path).config.model
        if (spec.timm_name, spec.output_dim) != (model.backbone, model.embedding_size):
            raise SystemExit(
                f"--run {path}: {model.backbone}/{model.embedding_size}, but the bundle's "
                f"embedder {i} is {spec.timm_name}/{spec.output_dim} (give runs in bundle order)"
            )


def held_out(
    run_dir: Path, catalogue: Path | None, quick: bool, limit: int | None
) -> tuple[list[BenchPhoto], list[BenchPhoto]]:
    """(gallery, queries): the run's training and open-set gallery photos, and its held-out
    photos (the closed-set fold and the open-set queries, new individuals included)."""
    from training.runs import Run

    run = Run(run_dir)
    splits = run.splits
    by_name = {p.image: p for p in run.photos}
    images = catalogue / run.config.data.images if catalogue is not None else None

    def photo(name: str) -> BenchPhoto:
        p = by_name[name]
        path = images / name if images is not None else p.path
        return BenchPhoto(name, p.individual_id, p.species, path.read_bytes())

    query_names = splits.val + splits.open_set.queries
    gallery_names = splits.train + splits.open_set.gallery
    if quick:
        # Spread the few queries over the held-out list; keep the gallery small, but holding
        # every photo of the queries' individuals, so the top-1 means something.
        step = max(1, len(query_names) // QUICK_QUERIES)
        query_names = query_names[::step][:QUICK_QUERIES]
        wanted = {by_name[n].individual_id for n in query_names}
        mine = [n for n in gallery_names if by_name[n].individual_id in wanted]
        others = [n for n in gallery_names if by_name[n].individual_id not in wanted]
        gallery_names = mine + others[: max(0, QUICK_GALLERY - len(mine))]
    if limit is not None:
        query_names = query_names[:limit]
    return [photo(n) for n in gallery_names], [photo(n) for n in query_names]


def camera_size(queries: Sequence[BenchPhoto], side: int) -> list[BenchPhoto]:
    """The queries as camera photos of `side` px on the long side (bench/large_photos.py)."""
    rng = np.random.default_rng(0)
    log(f"making {len(queries)} queries {side} px on the long side")
    return [
        dataclasses.replace(p, content=camera_jpeg(p.content, side, rng, p.image)[0])
        for p in queries
    ]


# -- measurements ------------------------------------------------------------------------------


@dataclass
class Measure:
    """One row of the table: per-photo latencies (ms), wall time and each query's top-1."""

    key: str
    name: str
    latencies_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    top1: list[str] = field(default_factory=list)
    server_ms: list[dict[str, float]] = field(default_factory=list)  # (b): its timing_ms

    @property
    def images_per_s(self) -> float:
        return len(self.latencies_ms) / self.wall_s

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q))

    def summary(self) -> dict[str, float]:
        return {
            "images": len(self.latencies_ms),
            "images_per_s": self.images_per_s,
            "p50_ms": self.percentile(50),
            "p95_ms": self.percentile(95),
        }


def time_serial(
    key: str,
    name: str,
    identify: Callable[[BenchPhoto], str],
    queries: Sequence[BenchPhoto],
    repeat: int,
) -> Measure:
    """One photo after another, `repeat` passes; the first pass's answers are the top-1s."""
    identify(queries[0])  # warm-up: first-call allocations are not what we measure
    measure = Measure(key, name)
    start = time.perf_counter()
    for round_ in range(repeat):
        for photo in queries:
            t0 = time.perf_counter()
            top1 = identify(photo)
            measure.latencies_ms.append((time.perf_counter() - t0) * 1000)
            if round_ == 0:
                measure.top1.append(top1)
    measure.wall_s = time.perf_counter() - start
    return measure


class GalleryData:
    """The gallery photos embedded by the bundle's pipeline: vectors, crops, integer labels."""

    def __init__(self, pipeline: Pipeline, photos: Sequence[BenchPhoto], batch: int = 32) -> None:
        self.photos = list(photos)
        names = sorted({p.individual_id for p in self.photos})
        self.individuals = names
        code = {n: i for i, n in enumerate(names)}
        self.labels = np.array([code[p.individual_id] for p in self.photos], dtype=np.int64)
        vectors, crops, local = [], [], []
        for start in range(0, len(self.photos), batch):
            chunk = self.photos[start : start + batch]
            images = [decode_image(p.content, draft_side=None, name=p.image) for p in chunk]
            embedded = pipeline.embed(images)
            vectors.append(embedded.vectors)
            crops += embedded.crops
            if embedded.local is not None:
                local += [embedded.local.compact(i) for i in range(len(chunk))]
        self.vectors = np.concatenate(vectors)
        self.crops: list[Crop | None] = crops
        # The crops' keypoints, stored with each photo where the bundle has a matcher.
        self.local: list[StoredFeatures] | None = local or None

    def name(self, code: int) -> str:
        return NEW_INDIVIDUAL if code == NEW else self.individuals[code]


# (a) ------------------------------------------------------------------------------------------


class Raw:
    """The bundle's ONNX files in bare onnxruntime sessions, fed one photo at a time.

    Opened as the service opens them (intra-op spinning off), or with `spin=True`:
    onnxruntime's default, threads that spin. On a small shared CPU the spinning threads of
    one session hold the cores the next session needs (detector, then each embedder), so that
    row shows what the same models give with one session option changed.
    """

    def __init__(self, bundle: Path, gallery: GalleryData, device: str, spin: bool = False) -> None:
        self.manifest = Manifest.read(bundle, verify=True)
        detector = self.manifest.detector

        def open_(file: str) -> ort.InferenceSession:
            return open_session(bundle / file, [device], spinning=spin)

        self.detector = None if detector is None else open_(detector.file)
        self.embedders = [open_(s.file) for s in self.manifest.embedders]
        self.weights = [s.weight for s in self.manifest.embedders]
        self.gallery = gallery
        self.index = faiss.IndexFlatIP(gallery.vectors.shape[1])
        self.index.add(gallery.vectors)
        # The threshold the service reads for a gallery of this size (the bundle's curve).
        self.threshold = self.manifest.threshold_for(None, len(gallery.vectors))

    def box(self, img: Any) -> tuple[float, float, float, float] | None:
        spec = self.manifest.detector
        if self.detector is None or spec is None:
            return None
        x, placement = letterbox(img, spec.input_size)
        name = self.detector.get_inputs()[0].name
        rows = self.detector.run(None, {name: x[None]})[0][0]
        crop = best_crop(rows, placement, spec.confidence)
        return None if crop is None else crop.box

    def embed(self, crop: Any) -> np.ndarray:
        arrays: dict[EmbedTransform, np.ndarray] = {}
        parts = []
        for spec, session in zip(self.manifest.embedders, self.embedders, strict=True):
            if spec.transform not in arrays:
                arrays[spec.transform] = spec.transform(crop)[None]
            x = arrays[spec.transform]
            if spec.flip_tta:
                x = np.concatenate([x, hflip(x)])
            inp = session.get_inputs()[0]
            dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
            out = l2_normalize(session.run(None, {inp.name: x.astype(dtype)})[0])
            parts.append(l2_normalize(out.sum(axis=0, keepdims=True)))
        return combine(parts, self.weights)

    def __call__(self, photo: BenchPhoto) -> str:
        img = decode_image(photo.content, name=photo.image)  # the service's decoding
        vector = self.embed(crop_box(img, self.box(img), self.manifest.box_padding))
        sims, ids = self.index.search(vector, min(HITS, self.index.ntotal))
        ranked = rank(sims, self.gallery.labels[ids], self.threshold, TOP_K)
        return self.gallery.name(int(ranked.codes[0, 0]))


# (b) ------------------------------------------------------------------------------------------


class Server(ServeProcess):
    """The service under test, with a read key made for the run."""

    def __init__(
        self, bundle: Path, gallery_db: Path, workdir: Path, device: str, **extra: str
    ) -> None:
        from app.keys import add_key

        self.key, _ = add_key(workdir / "keys.json", scope="read", name="bench/service.py")
        env = serve_env(bundle, gallery_db, workdir / "keys.json", device, **extra)
        super().__init__(workdir, env)


def fill_gallery(url: str, pipeline: Pipeline, gallery: GalleryData) -> None:
    """Register the gallery photos, with the vectors and boxes already computed, through the
    Gallery API (what `whaleid gallery import` does); photos already there are skipped."""
    from gallery.gallery import Gallery, ImportItem, NewImage

    items = [
        ImportItem(
            individual_id=p.individual_id,
            species=p.species,
            image=NewImage(
                content=p.content,
                filename=p.image,
                vector=v,
                box=None if c is None else c.box,
                local=None if gallery.local is None else gallery.local[i],
            ),
        )
        for i, (p, v, c) in enumerate(
            zip(gallery.photos, gallery.vectors, gallery.crops, strict=True)
        )
    ]
    with Gallery.open(url, fingerprint=pipeline.fingerprint, dim=pipeline.embedding_dim) as g:
        g.import_images(items)


class Poster:
    """POST /identify of one photo, timed, from any thread: `lean` (bench/loadgen.py: bodies
    encoded ahead, keep-alive http.client) keeps the client's CPU off the cores the service
    runs on; `httpx` builds each request as an application would."""

    def __init__(
        self, server: Server, queries: Sequence[BenchPhoto], client: str, connections: int
    ) -> None:
        headers = {"X-API-Key": server.key}
        self.fields = {"top_k": str(TOP_K)}
        self.lean: LeanClient | None = None
        self.httpx: httpx.Client | None = None
        if client == "lean":
            self.lean = LeanClient(server.url, headers)
            self.bodies = {
                p.image: multipart(self.fields, [("image", p.image, p.content, "image/jpeg")])
                for p in queries
            }
        else:
            limits = httpx.Limits(
                max_connections=connections, max_keepalive_connections=connections
            )
            self.httpx = httpx.Client(
                base_url=server.url, headers=headers, timeout=120, limits=limits
            )

    def __call__(self, photo: BenchPhoto) -> tuple[float, str, dict[str, float]]:
        """Milliseconds from send to parsed answer, its top-1 and the service's timing_ms."""
        t0 = time.perf_counter()
        if self.lean is not None:
            status, content = self.lean.post("/identify", self.bodies[photo.image], idempotent=True)
        else:
            assert self.httpx is not None
            response = self.httpx.post(
                "/identify",
                files={"image": (photo.image, photo.content, "image/jpeg")},
                data=self.fields,
            )
            status, content = response.status_code, response.content
        body = json.loads(content)
        elapsed = (time.perf_counter() - t0) * 1000
        if status != 200:
            raise SystemExit(f"POST /identify: {status} {content[:300]!r}")
        return elapsed, body["predictions"][0]["individual_id"], body["timing_ms"]

    def close(self) -> None:
        if self.lean is not None:
            self.lean.close()
        if self.httpx is not None:
            self.httpx.close()


def time_http(
    server: Server,
    queries: Sequence[BenchPhoto],
    repeat: int,
    concurrency: int,
    *,
    client: str = "lean",
    key: str | None = None,
    name: str | None = None,
) -> Measure:
    """POST /identify for every query (`repeat` passes) from `concurrency` client threads."""
    post = Poster(server, queries, client, concurrency)
    work = [p for _ in range(repeat) for p in queries]
    try:
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(post, queries[:concurrency]))  # warm-up
            start = time.perf_counter()
            answers = list(pool.map(post, work))
            wall = time.perf_counter() - start
    finally:
        post.close()
    return Measure(
        key or f"service_c{concurrency}",
        name or f"(b) service, HTTP, concurrency {concurrency}",
        latencies_ms=[ms for ms, _, _ in answers],
        wall_s=wall,
        top1=[top for _, top, _ in answers[: len(queries)]],
        server_ms=[timing for _, _, timing in answers],
    )


def time_interleaved(
    server: Server,
    raw: Raw,
    queries: Sequence[BenchPhoto],
    repeat: int,
    *,
    suffix: str = "",
    name: str = "(b) service, HTTP, concurrency 1",
) -> tuple[Measure, Measure]:
    """(a) and (b) at concurrency 1 in turns, photo by photo: raw, then the same photo through
    the service. A shared host's speed drifts by tens of percent between the minutes that
    separate two sequential rows; taken in turns, both rows see the same host."""
    post = Poster(server, queries, "lean", 1)
    pair = (
        Measure(f"raw_turns{suffix}", "(a) raw onnxruntime, in turns with the row below"),
        Measure(f"service_c1_turns{suffix}", f"{name}, in turns with (a)"),
    )
    try:
        raw(queries[0]), post(queries[0])  # warm-up
        for round_ in range(repeat):
            for photo in queries:
                t0 = time.perf_counter()
                top1 = raw(photo)
                pair[0].latencies_ms.append((time.perf_counter() - t0) * 1000)
                ms, served, timing = post(photo)
                pair[1].latencies_ms.append(ms)
                pair[1].server_ms.append(timing)
                if round_ == 0:
                    pair[0].top1.append(top1)
                    pair[1].top1.append(served)
    finally:
        post.close()
    for measure in pair:
        # Each row's own time: images/s is then one photo over its mean latency.
        measure.wall_s = sum(measure.latencies_ms) / 1000
    return pair


# (c) ------------------------------------------------------------------------------------------


class SeedStyle:
    """The notebooks' inference loop: per photo, the ultralytics detector, PIL crop and resize,
    torch tensor normalisation, each torch model in eager mode (flip TTA as a second forward),
    then IndexFlatIP and the pandas ranking."""

    def __init__(
        self,
        inputs: Inputs,
        manifest: Manifest,
        gallery: GalleryData,
        onnx_detector: bool,
        device: str,
    ) -> None:
        import torch

        from training.runs import Run

        self.torch = torch
        self.device = torch.device(device)
        self.manifest = manifest
        self.models = [Run(path).load_embedder().to(self.device) for path in inputs.runs]
        self.specs = manifest.embedders
        self.detect = self._detector(inputs, manifest, onnx_detector, device)
        self.gallery = gallery
        self.seed_ranking = _seed_ranking()
        # The seeds embedded their gallery offline, in batches, with the same preprocessing:
        # done here, not timed.
        crops = [
            crop_box(self.decode(p.content), None if c is None else c.box, manifest.box_padding)
            for p, c in zip(gallery.photos, gallery.crops, strict=True)
        ]
        vectors = np.concatenate([self.embed(crops[i : i + 32]) for i in range(0, len(crops), 32)])
        self.index = faiss.IndexFlatIP(vectors.shape[1])
        self.index.add(vectors)
        # The threshold the service reads for a gallery of this size (the bundle's curve).
        self.threshold = manifest.threshold_for(None, len(vectors))

    @staticmethod
    def _detector(
        inputs: Inputs, manifest: Manifest, onnx: bool, device: str
    ) -> Callable[[Any], Any]:
        spec = manifest.detector
        if spec is None:
            return lambda img: None
        if inputs.detector_run is None or onnx:
            from app.detector import OnnxDetector

            providers = resolve_providers([device])
            detector: Any = OnnxDetector(inputs.bundle / spec.file, spec, providers)
        else:
            from training.detector.predict import TorchDetector
            from training.detector.run import load_run

            weights = load_run(inputs.detector_run).weights
            detector = TorchDetector(
                weights, imgsz=spec.input_size, confidence=spec.confidence, device=device
            )
        return lambda img: detector.detect([img])[0]

    @staticmethod
    def decode(content: bytes) -> Any:
        img = Image.open(io.BytesIO(content))
        return (ImageOps.exif_transpose(img) or img).convert("RGB")

    def tensor(self, crop: Any, spec: EmbedderSpec) -> Any:
        """One crop → a normalised (3, H, W) tensor: PIL resize, then torch ops."""
        torch = self.torch
        height, width = spec.transform.input_size
        img = crop.resize((width, height), _RESAMPLE[spec.transform.interpolation])
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())
        x = x.permute(2, 0, 1).float().div(255.0)
        mean = torch.tensor(spec.transform.mean).view(3, 1, 1)
        std = torch.tensor(spec.transform.std).view(3, 1, 1)
        return (x - mean) / std

    def embed(self, crops: Sequence[Any]) -> np.ndarray:
        """Crops → (N, D) ensemble embeddings: each member's normalised output (flip TTA as a
        second forward), scaled by sqrt(weight), concatenated and normalised, as combine does."""
        torch = self.torch
        normalize = torch.nn.functional.normalize
        parts = []
        with torch.inference_mode():
            for spec, model in zip(self.specs, self.models, strict=True):
                x = torch.stack([self.tensor(crop, spec) for crop in crops]).to(self.device)
                out = normalize(model(x), dim=1)
                if spec.flip_tta:
                    out = normalize(out + normalize(model(torch.flip(x, dims=[3])), dim=1), dim=1)
                parts.append(out * spec.weight**0.5)
            return normalize(torch.cat(parts, dim=1), dim=1).cpu().numpy()

    def __call__(self, photo: BenchPhoto) -> str:
        img = self.decode(photo.content)
        crop = self.detect(img)
        box = None if crop is None else pad_box(crop.box, self.manifest.box_padding, img.size)
        vector = self.embed([img if box is None else img.crop(box)])
        sims, ids = self.index.search(vector, min(HITS, self.index.ntotal))
        labels = self.gallery.labels
        (answer,) = self.seed_ranking(sims, ids, labels, self.threshold)
        return self.gallery.name(answer[0])


# -- the run -----------------------------------------------------------------------------------


def agreement(rows: Sequence[Measure]) -> float:
    """Share of queries on which every row gives the same top-1."""
    firsts = [r.top1 for r in rows]
    same = sum(len(set(answers)) == 1 for answers in zip(*firsts, strict=True))
    return same / len(firsts[0])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_QUERIES} queries, 1 pass")
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=list(CONCURRENCY),
        help="client threads of the (b) rows (default 1 8; bench/gpu.sh adds 32)",
    )
    parser.add_argument("--bundle", type=Path, help="model bundle (default: build the demo)")
    parser.add_argument(
        "--run",
        type=Path,
        action="append",
        default=[],
        help="the bundle's training runs, "
        "in the manifest's order (repeat the option); for (c) and the held-out split",
    )
    parser.add_argument("--detector-run", type=Path, help="the bundle's detector run, for (c)")
    parser.add_argument("--catalogue", type=Path, help="catalogue folder (default: the run's)")
    parser.add_argument(
        "--gallery",
        type=Path,
        help="SQLite file for the service's gallery (filled with the "
        "gallery photos where missing; default: a temporary file)",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=REPO / ".demo",
        help="the demo's folder, built there unless it already is (default: .demo)",
    )
    parser.add_argument(
        "--shortlists",
        type=int,
        nargs="*",
        default=list(SHORTLISTS),
        help="where the bundle re-ranks: a (b′) row at concurrency 1 per shortlist size B "
        "(default 10 20 40); the (b) rows then run with re-ranking off",
    )
    parser.add_argument(
        "--clients",
        nargs="+",
        choices=["lean", "httpx"],
        default=["lean"],
        help="HTTP clients of the (b) rows (default lean: bodies encoded ahead, keep-alive "
        "http.client, so the client takes little of the cores it shares with the service; "
        "httpx: each request built as an application would, a row per concurrency)",
    )
    parser.add_argument(
        "--embed-workers",
        type=int,
        nargs="+",
        help="(b) rows for each WHALEID_EMBED_WORKERS value, side by side (default: one set of "
        "rows at the service's default)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="passes over the queries")
    parser.add_argument("--limit", type=int, help="at most this many queries")
    parser.add_argument(
        "--photo-side",
        type=int,
        help="make the queries camera-size, as bench/large_photos.py does: each one upscaled to "
        "this many px on its long side (4000: 12 megapixels), with noise, as a JPEG of quality "
        "90; the gallery keeps the catalogue's photos (default: the catalogue's own queries)",
    )
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cpu", help="where every model runs"
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch threads for (c) (default 1: on a shared, oversubscribed CPU torch's OpenMP "
        "team of 2 spins and runs a forward several times slower; 0 keeps torch's default)",
    )
    parser.add_argument(
        "--seed-onnx-detector",
        action="store_true",
        help="(c) crops with the ONNX detector instead of ultralytics'",
    )
    return parser


def measure_raw(
    raw_model: Raw,
    bundle: Path,
    gallery: GalleryData,
    device: str,
    queries: Sequence[BenchPhoto],
    repeat: int,
) -> tuple[Measure, Measure]:
    """(a) the bundle's models called back to back, and (a′) the same with spinning on."""
    log("(a) raw onnxruntime")
    raw = time_serial("raw", "(a) raw onnxruntime, back to back", raw_model, queries, repeat)
    spinning = time_serial(
        "raw_spin",
        "(a′) the same, onnxruntime's default intra-op spinning on",
        Raw(bundle, gallery, device, spin=True),
        queries,
        repeat,
    )
    return raw, spinning


def measure_seed(
    args: argparse.Namespace,
    inputs: Inputs,
    manifest: Manifest,
    gallery: GalleryData,
    queries: Sequence[BenchPhoto],
    repeat: int,
) -> tuple[Measure, int]:
    """(c) the seed-style torch pipeline; returns its row and the torch threads it ran on."""
    import torch

    log("(c) seed-style torch eager")
    threads = torch.get_num_threads()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    try:
        seed = SeedStyle(inputs, manifest, gallery, args.seed_onnx_detector, args.device)
        row = time_serial(
            "seed", "(c) seed-style: torch eager, per photo, pandas", seed, queries, repeat
        )
        return row, torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)  # the test suite's process goes on with its own setting


@dataclass(frozen=True)
class ServeSetup:
    """One `whaleid serve` configuration of the (b) rows, and the rows measured on it."""

    shortlist: int | None  # re-ranking shortlist B; None: global ranking only
    workers: int | None  # WHALEID_EMBED_WORKERS; None: the service's default
    concurrencies: list[int]
    clients: list[str]

    def env(self, reranks: bool) -> dict[str, str]:
        extra = {}
        if reranks:
            extra["WHALEID_RERANK_SHORTLIST"] = str(self.shortlist or 0)
        if self.workers is not None:
            extra["WHALEID_EMBED_WORKERS"] = str(self.workers)
        return extra

    @property
    def suffix(self) -> str:
        return "" if self.workers is None else f"_w{self.workers}"

    def key(self, client: str, concurrency: int) -> str:
        """service_c8, service_c8_w1, service_c8_httpx, rerank_b20."""
        if self.shortlist is not None:
            return f"rerank_b{self.shortlist}"
        return f"service_c{concurrency}{self.suffix}" + ("" if client == "lean" else f"_{client}")

    def name(self, client: str, concurrency: int) -> str:
        if self.shortlist is not None:
            return f"(b′) service, re-ranking B = {self.shortlist}, concurrency {concurrency}"
        name = f"(b) service, HTTP, concurrency {concurrency}"
        if self.workers is not None:
            name += f", {self.workers} embedding worker{'s' if self.workers > 1 else ''}"
        return name + ("" if client == "lean" else f", {client} client")


def serve_setups(args: argparse.Namespace, reranks: bool) -> list[ServeSetup]:
    """The global rows (each --embed-workers value), then a re-ranking row per shortlist."""
    setups = [
        ServeSetup(None, workers, list(args.concurrency), list(args.clients))
        for workers in args.embed_workers or [None]
    ]
    if reranks:
        setups += [ServeSetup(b, None, [1], list(args.clients[:1])) for b in args.shortlists]
    return setups


def measure_service(
    args: argparse.Namespace,
    bundle: Path,
    pipeline: Pipeline,
    gallery: GalleryData,
    queries: Sequence[BenchPhoto],
    repeat: int,
    raw: Raw,
) -> list[Measure]:
    """(b) `whaleid serve` over HTTP, at each concurrency (global ranking only), then at
    concurrency 1 in turns with (a) `raw`; and (b′) with local re-ranking of B shortlisted
    photos, at concurrency 1, for each B."""
    rows = []
    reranks = pipeline.manifest.rerank is not None
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        db = args.gallery or Path(tmp) / "gallery.db"
        fill_gallery(f"sqlite:///{db.resolve()}", pipeline, gallery)
        for setup in serve_setups(args, reranks):
            extra = setup.env(reranks)
            log(f"(b) starting whaleid serve {extra}")
            server = Server(bundle, db, Path(tmp), args.device, **extra)
            try:
                server.start()
                for client in setup.clients:
                    for concurrency in setup.concurrencies:
                        log(f"(b) {setup.name(client, concurrency)}")
                        rows.append(
                            time_http(
                                server,
                                queries,
                                repeat,
                                concurrency,
                                client=client,
                                key=setup.key(client, concurrency),
                                name=setup.name(client, concurrency),
                            )
                        )
                if setup.shortlist is None and 1 in setup.concurrencies:
                    log(f"(a) and {setup.name('lean', 1)}, in turns")
                    rows += time_interleaved(
                        server,
                        raw,
                        queries,
                        repeat,
                        suffix=setup.suffix,
                        name=setup.name("lean", 1),
                    )
            except ServerFailed as exc:
                raise SystemExit(str(exc)) from exc
            finally:
                server.stop()
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = build_parser()
    args = parser.parse_args(argv)
    repeat = 1 if args.quick else args.repeat

    if args.bundle is None:
        inputs = build_demo(args.work)
    else:
        if not args.run:
            parser.error("--bundle needs its training runs: --run R (once per embedder)")
        inputs = Inputs(args.bundle, list(args.run), args.detector_run, args.catalogue)
    catalogue = args.catalogue or inputs.catalogue
    manifest = Manifest.read(inputs.bundle, verify=True)
    check_runs(manifest, inputs.runs)
    gallery_photos, queries = held_out(inputs.runs[0], catalogue, args.quick, args.limit)
    if args.photo_side is not None:
        queries = camera_size(queries, args.photo_side)
    log(f"{len(gallery_photos)} gallery photos, {len(queries)} held-out queries × {repeat}")

    pipeline = Pipeline.from_bundle(inputs.bundle, providers=[args.device])
    gallery = GalleryData(pipeline, gallery_photos)
    raw_model = Raw(inputs.bundle, gallery, args.device)
    raw, spinning = measure_raw(raw_model, inputs.bundle, gallery, args.device, queries, repeat)
    seed_row, seed_threads = measure_seed(args, inputs, manifest, gallery, queries, repeat)
    service = measure_service(args, inputs.bundle, pipeline, gallery, queries, repeat, raw_model)
    rows = [raw, spinning, *service, seed_row]
    truth = [
        NEW_INDIVIDUAL if p.individual_id not in gallery.individuals else p.individual_id
        for p in queries
    ]
    correct = sum(a == t for a, t in zip(raw.top1, truth, strict=True)) / len(queries)
    ratios = {}
    turns = {row.key: row for row in service if "turns" in row.key}
    for row in service:
        if row.key.startswith("rerank_"):
            ratios[f"{row.key}/service_c1"] = row.images_per_s / service[0].images_per_s
            continue
        if row.key.startswith("raw_turns"):
            continue
        if row.key.startswith("service_c1_turns"):
            partner = turns[row.key.replace("service_c1_turns", "raw_turns")]
            ratios[f"{row.key}/{partner.key}"] = row.images_per_s / partner.images_per_s
            continue
        ratios[f"{row.key}/raw"] = row.images_per_s / raw.images_per_s
        ratios[f"{row.key}/seed"] = row.images_per_s / seed_row.images_per_s
        ratios[f"{row.key}/raw_spin"] = row.images_per_s / spinning.images_per_s
    describe(args, manifest, gallery, seed_threads, len(gallery_photos), len(queries), repeat)
    report(rows, service, ratios, correct, len(queries))
    return {
        "rows": {row.key: row.summary() for row in rows},
        "ratios": ratios,
        "agreement": agreement(rows),
        "top1_correct": correct,
        "queries": len(queries),
        "agreement_with_raw": {row.key: agreement([raw, row]) for row in rows[1:]},
        "top1": {row.key: row.top1 for row in rows},
    }


def describe(
    args: argparse.Namespace,
    manifest: Manifest,
    gallery: GalleryData,
    seed_threads: int,
    gallery_size: int,
    queries: int,
    repeat: int,
) -> None:
    """The machine, the versions and the bundle the figures were measured on."""
    import torch

    cpu = platform.processor() or platform.machine()
    where = (
        f"{torch.cuda.get_device_name()} (onnxruntime CUDA provider, torch cuda)"
        if args.device == "cuda"
        else f"no GPU (onnxruntime CPU provider, torch on {seed_threads} thread(s))"
    )
    print(
        f"machine: {cpu}, {os.cpu_count()} cores, {where}; torch {torch.__version__}, "
        f"onnxruntime {ort.__version__}, Python {platform.python_version()}; "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
    members = " + ".join(f"{s.timm_name} {s.transform.input_size[0]}px" for s in manifest.embedders)
    detector = "none" if manifest.detector is None else f"{manifest.detector.input_size}px"
    print(
        f"bundle: {members}, detector {detector}; gallery {gallery_size} photos of "
        f"{len(gallery.individuals)} individuals; {queries} held-out queries × {repeat}"
        + ("" if args.photo_side is None else f", made {args.photo_side} px on the long side")
    )


def report(
    rows: Sequence[Measure],
    service: Sequence[Measure],
    ratios: dict[str, float],
    correct: float,
    queries: int,
) -> None:
    """The table, where a request's time goes inside the service, the ratios, the agreement."""
    raw = rows[0]
    print("| pipeline | images | images/s | p50 ms | p95 ms |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        s = row.summary()
        print(
            f"| {row.name} | {s['images']:.0f} | {s['images_per_s']:.1f} | "
            f"{s['p50_ms']:.1f} | {s['p95_ms']:.1f} |"
        )
    for row in service:
        if not row.server_ms:
            continue  # an (a) row taken in turns with a (b) row
        # Where a request's time goes inside the service (its own timing_ms), against the
        # client's view: the rest is HTTP, multipart parsing and the event loop.
        stages = {k: np.median([t[k] for t in row.server_ms]) for k in row.server_ms[0]}
        inside = ", ".join(f"{k} {v:.1f}" for k, v in stages.items())
        print(f"{row.key}: median ms inside the service: {inside}")
    for row in service:
        if row.key.startswith("service_c1_turns"):
            partner = next(r for r in service if r.key == row.key.replace("service_c1", "raw"))
            print(
                f"{row.key}: (b)/(a) in turns = {ratios[f'{row.key}/{partner.key}']:.2f} "
                f"(images/s); p50 (b) − (a) = "
                f"{row.percentile(50) - partner.percentile(50):+.1f} ms"
            )
        if f"{row.key}/raw" in ratios:
            print(
                f"{row.key}: (b)/(a) = {ratios[f'{row.key}/raw']:.2f}, "
                f"(b)/(c) = {ratios[f'{row.key}/seed']:.2f}, "
                f"(b)/(a′) = {ratios[f'{row.key}/raw_spin']:.2f}  (images/s); "
                f"p50 (b) − (a) = {row.percentile(50) - raw.percentile(50):+.1f} ms"
            )
    for key, ratio in ratios.items():
        if key.startswith("rerank_"):
            print(f"{key.split('/')[0]}: images/s against the global service at c1 = {ratio:.2f}")
    pairs = ", ".join(f"{row.key} {agreement([raw, row]):.0%}" for row in rows[1:])
    print(
        f"same top-1 as (a): {pairs}; in all rows on {agreement(rows):.0%} of {queries} "
        f"queries (top-1 correct: {correct:.0%})"
    )


if __name__ == "__main__":
    main()
