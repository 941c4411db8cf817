"""Two processes on one gallery: a registration in one is found by a search in the other
(through its background follower) within 2 s — on PostgreSQL by LISTEN/NOTIFY, on SQLite by
polling."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from fixtures.gallery import photo_bytes, unit_vectors

from gallery.gallery import Gallery, NewImage

REPO = Path(__file__).resolve().parents[1]
DIM, FP = 16, "d" * 64

# The other replica: follows the store and searches until the newcomer shows up.
CHILD = """
import sys, time
sys.path.insert(0, "tests")
from fixtures.gallery import unit_vectors
from gallery.gallery import Gallery

url, dim, fp = sys.argv[1], int(sys.argv[2]), sys.argv[3]
query = unit_vectors(1, dim, seed=77)
g = Gallery.open(url, fingerprint=fp, dim=dim)
g.follow(interval=0.5)
print("ready", g.size, flush=True)
deadline = time.monotonic() + 15
while time.monotonic() < deadline:
    (row,) = g.search(query, threshold=0.9)
    if row[0].individual_id == "newcomer":
        print("found", g.size, flush=True)
        break
    time.sleep(0.01)
else:
    print("timeout", g.size, flush=True)
g.close()
"""


def test_a_registration_is_seen_by_another_process(store_url: str) -> None:
    with Gallery.open(store_url, fingerprint=FP, dim=DIM) as g:
        others = unit_vectors(20, DIM, seed=5)
        g.register(
            individual_id="resident",
            species=None,
            images=[NewImage(photo_bytes(f"r{i}"), f"r{i}.jpg", v) for i, v in enumerate(others)],
        )
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, store_url, str(DIM), FP],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline().split() == ["ready", "20"]
            time.sleep(0.3)  # let its follower settle into waiting
            started = time.monotonic()
            g.register(
                individual_id="newcomer",
                species=None,
                images=[NewImage(photo_bytes("n"), "n.jpg", unit_vectors(1, DIM, seed=77)[0])],
            )
            answer = child.stdout.readline().split()
            elapsed = time.monotonic() - started
        finally:
            child.kill()
            child.wait()
        assert answer == ["found", "21"]
        assert elapsed < 2.0
