"""Shared fixtures. Each area keeps its session fixtures in tests/fixtures/<area>.py, loaded here
as plugins, so expensive artefacts (catalogues, trained runs, bundles) are made once per run."""

from __future__ import annotations

from pathlib import Path

pytest_plugins = sorted(
    f"fixtures.{p.stem}"
    for p in (Path(__file__).parent / "fixtures").glob("*.py")
    if not p.name.startswith("_")
)
