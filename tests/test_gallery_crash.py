"""Durability: SIGKILL a bulk import mid-way; every acknowledged image survives, the index
catches up from the store (and from a snapshot taken before the kill), and a rerun resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures.gallery import photo_bytes

from gallery.gallery import Gallery
from gallery.photos import content_hash

REPO = Path(__file__).resolve().parents[1]
N, DIM, BATCH, FP = 1500, 16, 50, "c" * 64

# The importer: prints the number of acknowledged (committed) images after each batch, saves a
# snapshot after the first few, and would go on to N; the test kills it first.
CHILD = """
import sys
sys.path.insert(0, "tests")
from fixtures.gallery import photo_bytes, unit_vectors
from gallery.gallery import Gallery, ImportItem, NewImage

url, snap, n, dim, batch, fp = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6]), sys.argv[6]
vectors = unit_vectors(n, dim, seed=1)
items = (
    ImportItem(f"ind-{i % 97}", "orca", NewImage(photo_bytes(f"p{i}"), f"p{i}.jpg", vectors[i]))
    for i in range(n)
)
g = Gallery.open(url, fingerprint=fp, dim=dim)
acked = 0
def ack(count):
    global acked
    acked += count
    if acked == 4 * batch:
        g.save_snapshot(snap)
    print(acked, flush=True)
g.import_images(items, batch_size=batch, progress=ack)
print("done", flush=True)
"""


def run_import(url: str, snap: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, url, str(snap), str(N), str(DIM), str(BATCH), FP],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_sigkill_mid_import_loses_nothing_acknowledged(store_url: str, tmp_path: Path) -> None:
    snap = tmp_path / "index.snap"
    child = run_import(store_url, snap)
    acked = 0
    deadline = time.monotonic() + 120
    assert child.stdout is not None
    for line in child.stdout:
        assert line.strip() != "done", "the import finished before it could be killed"
        acked = int(line)
        if acked >= 12 * BATCH:
            os.kill(child.pid, signal.SIGKILL)
            break
        assert time.monotonic() < deadline
    child.wait(30)
    assert child.returncode == -signal.SIGKILL
    assert snap.is_file()

    # Reopen from the snapshot taken at 200 images: the index catches up from the store's log.
    with Gallery.open(store_url, fingerprint=FP, dim=DIM, snapshot=snap) as g:
        assert g.loaded_from == "snapshot"
        stored = g.store.count_images()
        assert stored >= acked  # the kill may land after a commit, before its print
        assert g.size == stored == g.store.count_embeddings(fingerprint=FP)
        hashes = [content_hash(photo_bytes(f"p{i}")) for i in range(acked)]
        assert len(g.known(hashes)) == acked
    # And from the store alone.
    with Gallery.open(store_url, fingerprint=FP, dim=DIM) as g:
        assert g.loaded_from == "store" and g.size == stored

    # Running the import again resumes it: every photo once.
    child = run_import(store_url, tmp_path / "again.snap")
    out, _ = child.communicate(timeout=300)
    assert child.returncode == 0 and out.rstrip().endswith("done")
    with Gallery.open(store_url, fingerprint=FP, dim=DIM) as g:
        assert g.size == g.store.count_images() == N


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
