"""One real server per test session, started with the users' command and our plugin."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from server import ExternalServer, Server, running
from vllm_responses.conformance import check_events, parse_sse


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if os.environ.get("E2E_SERVER_URL"):  # developer loop: reuse a running `make demo`
        capture = os.environ.get("E2E_CAPTURE_DIR")
        yield ExternalServer(os.environ["E2E_SERVER_URL"], Path(os.environ.get("E2E_SERVER_LOG", "/dev/null")), Path(capture) if capture else None)
        return
    base = tmp_path_factory.mktemp("vllm")
    captured = base / "streams"
    with running(plugin=True, log_path=base / "server.log", capture_dir=captured) as srv:
        yield srv
    # Every stream the server sent in this session — the SDKs', the Agents SDK's, Codex's,
    # the non-streaming ones — goes through the conformance checker.
    files = sorted(captured.glob("*.sse"))
    problems = [f"{f.name}: {p}" for f in files for p in check_events(parse_sse(f.read_bytes()))]
    assert files, "the server captured no stream"
    assert not problems, "\n".join(problems[:50])


@pytest.fixture(scope="session")
def base_url(server: Server) -> str:
    return server.base_url


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)
