"""Schemathesis against the real server's ``/openapi.json``, our routes only (issue 9.8).

A bounded run (fixed seed, a few examples per operation and mode; ``make fuzz`` runs the
CLI with every phase, for longer): no answer is a 5xx, every status is documented and every
JSON answer holds to the schema the server publishes. The server gets ``--max-model-len`` so that whatever
``max_output_tokens`` (or ``ignore_eos``) the fuzzer sends, a generation stays short.
"""

from collections.abc import Iterator

import fuzz_hooks  # noqa: F401 - registers the hooks
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)
from server import running

OUR_PATHS = r"^/v1/(responses|conversations)"
SEED = 9008
EXAMPLES = 8  # per operation and mode (positive, negative): 15 operations
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[schemathesis.BaseSchema]:
    base = tmp_path_factory.mktemp("fuzz")
    with running(plugin=True, log_path=base / "server.log", args=["--max-model-len", "512"]) as srv:
        yield schemathesis.openapi.from_url(f"{srv.base_url}/openapi.json").include(path_regex=OUR_PATHS)
        log = srv.log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[max(0, log.index("Traceback") - 2000) :][:6000]


def test_our_routes_hold_to_their_schema(api_schema: schemathesis.BaseSchema) -> None:
    """Every operation, positive and negative cases: no 5xx, only documented statuses, every
    answer in its schema. Hypothesis does not shrink (each step is a real request)."""
    failures: list[str] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) == 15
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @seed(SEED)
            @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: schemathesis.Case) -> None:
                case.call_and_validate(checks=CHECKS, timeout=120)

            try:
                run()
            except Unsatisfiable:  # a path of plain strings has no negative case
                assert mode == GenerationMode.NEGATIVE and not operation.query and not list(operation.body)
            except Exception as exc:  # noqa: BLE001 - each failure is reported below, with its reproduction
                failures.append(f"{operation.label} ({mode}):\n{exc}")
    assert not failures, "\n\n".join(failures)


def test_openapi_describes_our_routes(api_schema: schemathesis.BaseSchema) -> None:
    """The real server's document carries our descriptions (not FastAPI's empty ones)."""
    document = api_schema.raw_schema
    create = document["paths"]["/v1/responses"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/responses.ResponseCreateParams"}
    body = document["components"]["schemas"]["responses.ResponseCreateParams"]
    assert body["required"] == ["model", "input"] and {"input", "stream", "seed", "top_k"} <= set(body["properties"])
    assert set(create["responses"]) == {"200", "400", "404", "413", "500", "503"}
    listing = document["paths"]["/v1/conversations/{conversation_id}/items"]["get"]
    assert [p["name"] for p in listing["parameters"]] == ["conversation_id", "include", "limit", "order", "after"]
