"""The openai SDK as the e2e tests use it: strict validation, no retries."""

import time

from openai import OpenAI
from openai.types.responses import Response


def sdk(base_url: str) -> OpenAI:
    return OpenAI(base_url=f"{base_url}/v1", api_key="unused", _strict_response_validation=True, max_retries=0)


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
