"""Which implementation answers with ``VLLM_PLUGINS=responses``: ours on ``/v1/responses``,
upstream's everywhere else. Upstream's ``/v1/responses`` without the plugin:
tests/slow/test_upstream.py."""

import httpx
import pytest
from server import ExternalServer, Server

from vllm_responses import __version__
from vllm_responses.api.routes import VERSION_HEADER

BODY = {"model": "demo", "input": "Hello there!"}


def test_plugin_serves_our_route(server: Server) -> None:
    r = httpx.post(f"{server.base_url}/v1/responses", json=BODY, timeout=120)
    assert r.status_code == 200
    assert r.headers[VERSION_HEADER] == __version__


def test_server_log_names_the_plugin(server: Server) -> None:
    if isinstance(server, ExternalServer):  # E2E_SERVER_URL: someone else's server, whose log may not be given
        if server.log_path == ExternalServer.NO_LOG:
            pytest.skip("E2E_SERVER_LOG not set: the external server's log is unknown")
    assert "Loaded endpoint plugin responses" in server.log_path.read_text(errors="replace")


def test_other_routes_stay_upstream(server: Server) -> None:
    r = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": "demo", "messages": [{"role": "user", "content": "Hello there!"}]},
        timeout=120,
    )
    assert r.status_code == 200
    assert VERSION_HEADER not in r.headers
