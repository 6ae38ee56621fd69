"""Without ``VLLM_PLUGINS=responses``, upstream's own ``/v1/responses`` answers (a server of its
own, the users' command without our plugin); with it, ours does: tests/e2e/test_plugin.py."""

from collections.abc import Iterator

import httpx
import pytest
from server import Server, running

from vllm_responses.api.routes import VERSION_HEADER

BODY = {"model": "demo", "input": "Hello there!"}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running(plugin=False, log_path=tmp_path_factory.mktemp("upstream") / "server.log") as srv:
        yield srv


def test_without_plugin_upstream_answers(upstream: Server) -> None:
    r = httpx.post(f"{upstream.base_url}/v1/responses", json=BODY, timeout=120)
    assert VERSION_HEADER not in r.headers
    assert r.status_code == 200, r.text
    # Upstream's own route is there and answers in its own way.
    assert r.json()["object"] == "response"
