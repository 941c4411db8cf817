"""Soak: many clients, minutes of mixed traffic against a real `whaleid serve`; errors, latency and
the server's memory over time.

For each store (a SQLite file; a fresh schema of a PostgreSQL database when `--store` names one)
it starts `whaleid serve` (bench/server.py), registers a seed gallery over HTTP from the
catalogue, then runs `--clients` threads for `--minutes`, each in a closed loop of
  identify 60%  (POST /identify, a held-out photo of a seed individual),
  register 15%  (POST /gallery, a new individual of 1-2 photos, made unique by a JPEG comment),
  list 15%      (GET /gallery/individuals, a page at a random offset),
  delete 10%    (DELETE /gallery/individuals/{id}, the oldest the client registered itself).
It samples the server's resident memory (VmRSS) every second and reports, per store: requests,
requests/s, answers by status (anything but the expected 200/201/204 is an error), p50/p99
latency per operation, and RSS at the start of the load, its middle and its end. "Flat" is the
second half: its growth from middle to end, and the least-squares slope of its samples in MB
per minute. The first half absorbs arenas (onnxruntime's grows to the largest batch seen),
caches and the index's first growth; a leak keeps growing through the second.

    nice python -m bench.soak --bundle B --catalogue C                       # 16 clients, 5 min
    nice python -m bench.soak --bundle B --catalogue C --minutes 2 \\
        --store sqlite --store postgresql://postgres@127.0.0.1:5432/test
    python -m bench.soak --quick --bundle B --catalogue C                    # the suite's smoke run
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    # Run as a script, this folder comes first on sys.path and bench/gallery.py would shadow
    # the `gallery` package: look in the repository root instead.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import httpx
import numpy as np

from bench.server import ServeProcess, serve_env

__all__ = ["EXPECTED", "main"]

OPS = {"identify": 0.60, "register": 0.15, "list": 0.15, "delete": 0.10}
EXPECTED = {"identify": 200, "register": 201, "list": 200, "delete": 204}
SEED_INDIVIDUALS = 24
SEED_PHOTOS = 2
QUICK = {"clients": 4, "seconds": 12.0, "seed_individuals": 6}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Catalogue:
    """Seed photos (registered before the load) and queries, both as JPEG bytes."""

    seed: dict[str, list[bytes]]
    species: dict[str, str]
    queries: list[bytes]

    @classmethod
    def read(cls, folder: Path, individuals: int) -> Catalogue:
        photos: dict[str, list[Path]] = defaultdict(list)
        species: dict[str, str] = {}
        with (folder / "train.csv").open() as fh:
            for row in csv.DictReader(fh):
                photos[row["individual_id"]].append(folder / "images" / row["image"])
                species[row["individual_id"]] = row["species"]
        chosen = [i for i, p in photos.items() if len(p) > SEED_PHOTOS][:individuals]
        if not chosen:
            raise SystemExit(f"{folder}: no individual with more than {SEED_PHOTOS} photos")
        return cls(
            seed={i: [p.read_bytes() for p in photos[i][:SEED_PHOTOS]] for i in chosen},
            species={i: species[i] for i in chosen},
            queries=[p.read_bytes() for i in chosen for p in photos[i][SEED_PHOTOS:]],
        )


def unique_jpeg(content: bytes, tag: str) -> bytes:
    """The same JPEG with a comment segment (COM) after its SOI marker: the same pixels, other
    bytes, so the gallery takes it as a new photo rather than one already registered."""
    text = tag.encode()
    return content[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + content[2:]


@dataclass
class Record:
    op: str
    status: int
    ms: float


@dataclass
class Client:
    """One closed-loop client: its own connection, random stream and registered individuals."""

    number: int
    server_url: str
    key: str
    catalogue: Catalogue
    records: list[Record] = field(default_factory=list)
    mine: list[str] = field(default_factory=list)

    def run(self, until: float) -> None:
        rng = random.Random(self.number)
        ops, weights = list(OPS), list(OPS.values())
        headers = {"X-API-Key": self.key}
        with httpx.Client(base_url=self.server_url, headers=headers, timeout=120) as http:
            count = 0
            while time.monotonic() < until:
                op = rng.choices(ops, weights)[0]
                if op == "delete" and not self.mine:
                    op = "identify"
                count += 1
                start = time.perf_counter()
                try:
                    status = self.request(http, op, rng, count)
                except httpx.TransportError:
                    status = 0  # no answer at all: the server went away or hung up
                self.records.append(Record(op, status, (time.perf_counter() - start) * 1000))

    def request(self, http: httpx.Client, op: str, rng: random.Random, count: int) -> int:
        if op == "identify":
            photo = rng.choice(self.catalogue.queries)
            return http.post(
                "/identify", files={"image": ("q.jpg", photo, "image/jpeg")}
            ).status_code
        if op == "register":
            individual_id = f"soak-{self.number}-{count}"
            photos = rng.sample(self.catalogue.queries, rng.randint(1, 2))
            files = [
                (
                    "image",
                    (
                        f"{individual_id}-{i}.jpg",
                        unique_jpeg(p, f"{individual_id}/{i}"),
                        "image/jpeg",
                    ),
                )
                for i, p in enumerate(photos)
            ]
            response = http.post("/gallery", files=files, data={"individual_id": individual_id})
            if response.status_code == 201:
                self.mine.append(individual_id)
            return response.status_code
        if op == "list":
            offset = rng.randrange(0, 50)
            return http.get(
                "/gallery/individuals", params={"limit": 50, "offset": offset}
            ).status_code
        individual_id = self.mine.pop(0)
        return http.delete(f"/gallery/individuals/{individual_id}").status_code


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class RssSampler(threading.Thread):
    """(seconds since start, MB) every `interval` seconds until stopped."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, float]] = []
        self._done = threading.Event()
        self._t0 = time.monotonic()

    def run(self) -> None:
        while not self._done.is_set():
            self.samples.append((time.monotonic() - self._t0, rss_mb(self.pid)))
            self._done.wait(self.interval)

    def stop(self) -> None:
        self._done.set()
        self.join()
        self.samples.append((time.monotonic() - self._t0, rss_mb(self.pid)))

    def at(self, seconds: float) -> float:
        return min(self.samples, key=lambda s: abs(s[0] - seconds))[1]

    def slope(self, since: float) -> float:
        """MB per minute, least squares over the samples from `since` seconds on."""
        points = np.array([s for s in self.samples if s[0] >= since])
        if len(points) < 2:
            return 0.0
        return float(np.polyfit(points[:, 0] / 60, points[:, 1], 1)[0])


@contextmanager
def postgres_schema(url: str) -> Iterator[str]:
    """A fresh schema of the database at `url`, as a URL whose search_path is that schema;
    dropped afterwards."""
    import psycopg

    schema = f"whaleid_soak_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            sep = "&" if "?" in url else "?"
            yield f"{url}{sep}options=-csearch_path%3D{schema}"
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


def seed_gallery(url: str, key: str, catalogue: Catalogue) -> None:
    with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=120) as http:
        for individual_id, photos in catalogue.seed.items():
            files = [
                ("image", (f"{individual_id}-{i}.jpg", p, "image/jpeg"))
                for i, p in enumerate(photos)
            ]
            data = {"individual_id": individual_id, "species": catalogue.species[individual_id]}
            response = http.post("/gallery", files=files, data=data)
            if response.status_code != 201:
                raise SystemExit(f"seeding {individual_id}: {response.status_code} {response.text}")


def soak(
    bundle: Path, store: str, catalogue: Catalogue, clients: int, seconds: float, work: Path
) -> dict[str, Any]:
    """One store's run: serve, seed, load, measure."""
    from app.keys import add_key

    work.mkdir(parents=True, exist_ok=True)
    key, _ = add_key(work / "keys.json", scope="write", name="bench/soak.py")
    gallery = work / "gallery.db" if store == "sqlite" else store
    server = ServeProcess(work, serve_env(bundle, gallery, work / "keys.json"))
    server.start()
    try:
        seed_gallery(server.url, key, catalogue)
        assert server.pid is not None
        sampler = RssSampler(server.pid)
        workers = [Client(n, server.url, key, catalogue) for n in range(clients)]
        threads = [
            threading.Thread(target=c.run, args=(time.monotonic() + seconds,)) for c in workers
        ]
        sampler.start()
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.monotonic() - started
        sampler.stop()
        alive = server.alive()
    finally:
        server.stop()
    records = [r for c in workers for r in c.records]
    return summarise(records, wall, sampler, alive)


def summarise(
    records: list[Record], wall: float, sampler: RssSampler, alive: bool
) -> dict[str, Any]:
    by_op: dict[str, dict[str, Any]] = {}
    for op in OPS:
        mine = [r for r in records if r.op == op]
        ms = np.array([r.ms for r in mine]) if mine else np.zeros(1)
        by_op[op] = {
            "requests": len(mine),
            "errors": sum(r.status != EXPECTED[op] for r in mine),
            "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)),
        }
    ms = np.array([r.ms for r in records]) if records else np.zeros(1)
    statuses = Counter(r.status for r in records)
    start, middle, end = sampler.at(0), sampler.at(wall / 2), sampler.at(wall)
    return {
        "requests": len(records),
        "wall_s": wall,
        "requests_per_s": len(records) / wall,
        "statuses": dict(sorted(statuses.items())),
        "errors": sum(r.status != EXPECTED[r.op] for r in records),
        "server_errors": sum(r.status >= 500 or r.status == 0 for r in records),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "ops": by_op,
        "rss_mb": {
            "start": start,
            "middle": middle,
            "end": end,
            "max": max(s[1] for s in sampler.samples),
        },
        "rss_growth_second_half": (end - middle) / middle,
        "rss_slope_mb_per_min_second_half": sampler.slope(wall / 2),
        "server_alive": alive,
    }


def report(results: dict[str, dict[str, Any]], clients: int, seconds: float) -> str:
    lines = [
        f"{clients} clients × {seconds:.0f} s, mixed identify/register/list/delete",
        "",
        "| store | requests | req/s | by status | errors | p50 ms | p99 ms "
        "| RSS MB start / middle / end | growth, 2nd half | MB/min, 2nd half |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for store, r in results.items():
        statuses = ", ".join(f"{s}: {n}" for s, n in r["statuses"].items())
        rss = r["rss_mb"]
        lines.append(
            f"| {store} | {r['requests']} | {r['requests_per_s']:.1f} | {statuses} | {r['errors']} "
            f"| {r['p50_ms']:.0f} | {r['p99_ms']:.0f} "
            f"| {rss['start']:.0f} / {rss['middle']:.0f} / {rss['end']:.0f} "
            f"| {100 * r['rss_growth_second_half']:+.1f}% "
            f"| {r['rss_slope_mb_per_min_second_half']:+.1f} |"
        )
    lines += [
        "",
        "| store | operation | requests | errors | p50 ms | p99 ms |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for store, r in results.items():
        for op, o in r["ops"].items():
            lines.append(
                f"| {store} | {op} | {o['requests']} | {o['errors']} "
                f"| {o['p50_ms']:.0f} | {o['p99_ms']:.0f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle folder")
    parser.add_argument(
        "--catalogue", type=Path, required=True, help="catalogue folder (train.csv, images/)"
    )
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--minutes", type=float, default=5.0, help="load duration (default 5)")
    parser.add_argument(
        "--store",
        action="append",
        help="'sqlite' (a new file) or a postgresql:// URL (a fresh schema in it); repeat for "
        "several (default: sqlite)",
    )
    parser.add_argument(
        "--work", type=Path, help="folder for the servers' files (default: temporary)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK['clients']} clients × {QUICK['seconds']:.0f} s, "
        f"{QUICK['seed_individuals']} seed individuals",
    )
    args = parser.parse_args(argv)
    clients = QUICK["clients"] if args.quick else args.clients
    seconds = QUICK["seconds"] if args.quick else args.minutes * 60
    individuals = QUICK["seed_individuals"] if args.quick else SEED_INDIVIDUALS
    if clients < 1 or seconds <= 0:
        parser.error("--clients must be at least 1 and --minutes more than 0")
    catalogue = Catalogue.read(args.catalogue, int(individuals))
    stores = args.store or ["sqlite"]
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="whaleid-soak-") as tmp:
        work = args.work or Path(tmp)
        for n, store in enumerate(stores):
            name = "sqlite" if store == "sqlite" else "postgresql"
            log(f"{name}: {clients} clients for {seconds:.0f} s")
            if store == "sqlite":
                results[name] = soak(
                    args.bundle, store, catalogue, int(clients), seconds, work / f"{n}-sqlite"
                )
            else:
                with postgres_schema(store) as url:
                    results[name] = soak(
                        args.bundle, url, catalogue, int(clients), seconds, work / f"{n}-pg"
                    )
    print(report(results, int(clients), seconds))
    return {"clients": clients, "seconds": seconds, "stores": results}


if __name__ == "__main__":
    main()
