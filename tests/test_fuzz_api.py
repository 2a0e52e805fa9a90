"""A schema-driven fuzz of the whole REST API: schemathesis reads `/openapi.json` of a real running
server and sends what it generates from it, valid and invalid, to every operation.

Every answer must be no server error, with a status, content type and body the document declares
for that operation (schemathesis's `not_a_server_error`, `status_code_conformance`,
`content_type_conformance`, `response_schema_conformance`). Bounded in examples and time, so it runs
in `make test`. Event streams are read up to their first event (they may never end).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.server import ThreadServer, served_in_thread

TOKEN = "fuzz-token-0123456789"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
CONFIG = schemathesis.Config.from_dict({
    # Enough of a stream to check its status, type and first event; the rest may never come.
    "max-stream-events": 1,
    "request-timeout": 10,
})
EXAMPLES = 50  # per operation and mode (valid, invalid)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    folder: Path = tmp_path_factory.mktemp("fuzz")
    with served_in_thread(journal=f"sqlite:///{folder}/journal.db", token=TOKEN, heartbeat=0.5) as server:
        yield server


def test_every_answer_is_declared_and_none_is_a_server_error(served: ThreadServer) -> None:
    auth = {"authorization": f"Bearer {TOKEN}"}
    api = schemathesis.openapi.from_url(f"{served.url}/openapi.json", config=CONFIG, headers=auth)
    failures: list[str] = []
    calls = 0
    for result in api.get_all_operations():
        assert not isinstance(result, Err), f"an operation schemathesis cannot read: {result.err()!r}"
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                calls += _fuzz(operation, mode, auth, failures)
            except Unsatisfiable:
                # Nothing about this operation can be made invalid (no body, no typed parameter).
                assert mode == GenerationMode.NEGATIVE, operation.label
    assert calls >= 1000, calls  # (an operation with nothing to vary is done sooner)
    assert failures == [], "\n\n".join(failures)


def _fuzz(operation: Any, mode: GenerationMode, auth: dict[str, str], failures: list[str]) -> int:
    """Send EXAMPLES generated requests to one operation; every failing answer is listed in `failures`
    (none stops the run, nothing is shrunk: the list is the report). Returns how many were sent."""
    sent = 0

    @given(case=operation.as_strategy(mode))
    @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    def fuzz(case: schemathesis.Case[Any]) -> None:
        nonlocal sent
        sent += 1
        try:
            case.call_and_validate(headers=auth, checks=CHECKS)
        except (Exception, BaseExceptionGroup) as failure:  # schemathesis groups what one answer broke
            failures.append(f"{operation.label} ({mode}): {failure}"[:1500])

    fuzz()
    return sent
