"""The openai SDK as the e2e tests use it: strict validation, no retries."""

import time
from typing import Any

from openai import OpenAI
from openai.types.responses import Response


def sdk(base_url: str) -> OpenAI:
    return OpenAI(base_url=f"{base_url}/v1", api_key="unused", _strict_response_validation=True, max_retries=0)


def wire(event: Any) -> dict[str, Any]:
    """An event the SDK parsed, as a dict with the integer timestamps the server sent.

    openai's ``Response`` declares ``created_at``/``completed_at`` as float, so the SDK
    hands back ``1764107796.0``; the wire itself is checked from captured streams.
    """
    data = event.to_dict()
    response = data.get("response")
    if isinstance(response, dict):
        for key in ("created_at", "completed_at"):
            if isinstance(response.get(key), float) and response[key].is_integer():
                response[key] = int(response[key])
    return data


def wait_status(client: OpenAI, response_id: str, statuses: tuple[str, ...], timeout: float = 60) -> Response:
    """Poll a stored response until its status is one of ``statuses``."""
    deadline = time.monotonic() + timeout
    while True:
        r = client.responses.retrieve(response_id)
        if r.status in statuses:
            return r
        if time.monotonic() > deadline:
            raise AssertionError(f"{response_id} is still {r.status} after {timeout}s (error: {r.error})")
        time.sleep(0.1)
