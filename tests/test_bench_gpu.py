"""bench/gpu.sh: its syntax, and its CPU fallback end to end on the session's bundle (the GPU
rows need a CUDA machine; the same steps run there)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu.sh"


def test_gpu_script_parses() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_gpu_script_refuses_an_unknown_option() -> None:
    done = subprocess.run(["bash", str(SCRIPT), "--gpus", "2"], capture_output=True, text=True)
    assert done.returncode == 2 and "unknown option --gpus" in done.stderr


@pytest.mark.slow
@pytest.mark.timeout(2700)
def test_gpu_script_cpu_fallback(
    bundle: Path,
    tiny_run: Path,
    tiny_run_b: Path,
    detector_run: Path,
    catalogue: Path,
    tmp_path: Path,
) -> None:
    out = tmp_path / "gpu"
    argv = [
        "bash",
        str(SCRIPT),
        "--cpu-only",
        "--quick",
        "--out",
        str(out),
        "--bundle",
        str(bundle),
    ]
    argv += ["--run", str(tiny_run), "--run", str(tiny_run_b)]
    argv += ["--detector-run", str(detector_run), "--catalogue", str(catalogue)]
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    table = (out / "gpu.md").read_text()
    assert "device: no GPU" in table and "providers used: cpu" in table
    # Every model at each quick batch, fp32 and fp16 (a row either measured or saying why).
    rows = [line for line in (out / "models.md").read_text().splitlines() if "| cpu |" in line]
    models = {line.split("|")[1].strip() for line in rows}
    assert "detector" in models and sum(m.startswith("embedder-") for m in models) == 2
    assert len(rows) == len(models) * 2 * 2
    # The embedders' fp16 agrees with their fp32 (the detector's raw boxes on noise may not).
    fp16 = [line for line in rows if "| fp16 |" in line and "| embedder-" in line]
    assert fp16 and all(float(line.split("|")[7]) > 0.99 for line in fp16)
    for concurrency in (1, 8, 32):
        assert f"concurrency {concurrency}" in table
    # One and two embedding workers side by side, and concurrency 1 in turns with the raw models.
    for workers in ("1 embedding worker", "2 embedding workers"):
        assert f"concurrency 32, {workers}" in table
        assert f"concurrency 1, {workers}, in turns with (a)" in table
