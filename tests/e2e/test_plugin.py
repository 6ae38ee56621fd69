"""Which implementation answers: ours with ``VLLM_PLUGINS=responses``, upstream's without."""

from collections.abc import Iterator

import httpx
import pytest

from server import Server, running
from vllm_responses import __version__
from vllm_responses.routes import VERSION_HEADER


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory, server: Server) -> Iterator[Server]:
    with running(plugin=False, log_path=tmp_path_factory.mktemp("upstream") / "server.log") as srv:
        yield srv


BODY = {"model": "demo", "input": "Hello there!"}


def test_plugin_serves_our_route(server: Server) -> None:
    r = httpx.post(f"{server.base_url}/v1/responses", json=BODY, timeout=120)
    assert r.status_code == 200
    assert r.headers[VERSION_HEADER] == __version__
    if server.log_path.exists() and server.log_path.stat().st_size:
        assert "Loaded endpoint plugin responses" in server.log_path.read_text(errors="replace")


def test_without_plugin_upstream_answers(upstream: Server) -> None:
    r = httpx.post(f"{upstream.base_url}/v1/responses", json=BODY, timeout=120)
    assert VERSION_HEADER not in r.headers
    assert r.status_code == 200, r.text
    # Upstream's own route is there and answers in its own way.
    assert r.json()["object"] == "response"


def test_other_routes_stay_upstream(server: Server) -> None:
    r = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": "demo", "messages": [{"role": "user", "content": "Hello there!"}]},
        timeout=120,
    )
    assert r.status_code == 200
    assert VERSION_HEADER not in r.headers
