"""schemathesis against a live server's own OpenAPI document, with a write key: every operation
is called with generated requests (valid and invalid), and no answer is a 5xx or disagrees with
the schema (status documented, JSON where it says JSON, body of the documented shape).

The server is this module's own (a small gallery registered over HTTP), not the session's: the
fuzzer deletes and patches whatever ids it guesses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from fixtures.service import Server, catalogue_photos, catalogue_species, start_server
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2700)]

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Per operation; about a minute for all of them on a loaded 2-core host.
EXAMPLES = 25


@pytest.fixture(scope="module")
def fuzzed_server(
    service_bundle: Path, catalogue: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    server = start_server(service_bundle, tmp_path_factory.mktemp("fuzzed"))
    try:
        photos, species = catalogue_photos(catalogue), catalogue_species(catalogue)
        with server.client(server.write_key) as client:
            for individual_id in list(photos)[:3]:
                files = [
                    ("image", (p.name, p.read_bytes(), "image/jpeg"))
                    for p in photos[individual_id][:2]
                ]
                data = {"individual_id": individual_id, "species": species[individual_id]}
                assert client.post("/gallery", files=files, data=data).status_code == 201
        yield server
    finally:
        server.stop()


def fuzz(server: Server, operation: Any, mode: schemathesis.GenerationMode) -> None:
    """EXAMPLES generated requests of one operation, each answer checked."""

    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,  # the same requests every run: a failure here is reproducible
        suppress_health_check=list(hypothesis.HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    )
    def run(case: Any) -> None:
        case.call_and_validate(
            base_url=server.url,
            headers={"X-API-Key": server.write_key},
            checks=CHECKS,
            timeout=60,
        )

    run()


def test_no_5xx_and_no_schema_violation(fuzzed_server: Server) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzzed_server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {"POST /identify", "POST /gallery"} <= {
        f"{o.method.upper()} {o.path}" for o in operations
    }
    failures = []  # every operation is fuzzed, and every failure reported
    for operation in operations:
        for mode in schemathesis.GenerationMode:
            try:
                fuzz(fuzzed_server, operation, mode)
            except hypothesis.errors.Unsatisfiable:
                # No parameters, no body: nothing can be invalid about such a request.
                assert mode == schemathesis.GenerationMode.NEGATIVE, operation.path
            except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup
                failures.append(f"{operation.method.upper()} {operation.path} ({mode}): {exc}")
    assert failures == [], "\n\n".join(failures)
    assert fuzzed_server.alive()
