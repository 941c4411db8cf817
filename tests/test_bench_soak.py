"""bench/soak.py in quick mode against a real server, on SQLite and on PostgreSQL: every kind of
request is made, none fails, and the server's memory is sampled (no timing or size asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures.gallery import PG_URL

from bench.soak import EXPECTED, main

# The first test to ask for the session bundle pays for training it.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2700)]


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_soak_quick(
    store: str,
    service_bundle: Path,
    catalogue: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--quick", "--bundle", str(service_bundle), "--catalogue", str(catalogue)]
    argv += ["--work", str(tmp_path)]
    if store == "postgres":
        request.getfixturevalue("pg_url")  # skips, saying why, where the server is not reachable
        argv += ["--store", PG_URL]
    result = main(argv)

    (name,) = result["stores"]
    run = result["stores"][name]
    assert name == ("sqlite" if store == "sqlite" else "postgresql")
    assert run["server_alive"]
    assert run["errors"] == 0 and run["server_errors"] == 0, run["statuses"]
    assert set(run["statuses"]) <= set(EXPECTED.values())
    assert sum(run["statuses"].values()) == run["requests"] > 0
    for op, figures in run["ops"].items():
        assert figures["requests"] > 0, op
        assert 0 < figures["p50_ms"] <= figures["p99_ms"]
    rss = run["rss_mb"]
    assert min(rss["start"], rss["middle"]) > 0 and 0 < rss["end"] <= rss["max"]
    out = capsys.readouterr().out
    assert f"| {name} | {run['requests']} |" in out and "| growth, 2nd half |" in out
