"""Schemathesis hooks for our fuzzing (tests/e2e/test_fuzz.py imports them; `make fuzz` loads
them with ``SCHEMATHESIS_HOOKS``): a create request names the served model, so that the
cases the schema allows reach the engine instead of ending in 404 ``model_not_found``."""

import os
from typing import Any

import schemathesis

MODEL = os.environ.get("FUZZ_MODEL", "demo")
CREATE_BODIES = ("/v1/responses", "/v1/responses/compact", "/v1/responses/input_tokens")  # paths whose body is a create body


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    if context.operation.path in CREATE_BODIES and isinstance(body, dict) and isinstance(body.get("model"), str):
        return {**body, "model": MODEL}
    return body
