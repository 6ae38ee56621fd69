"""One real server per test session, started with the users' command and our plugin."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from server import ExternalServer, Server, running


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if os.environ.get("E2E_SERVER_URL"):  # developer loop: reuse a running `make demo`
        yield ExternalServer(os.environ["E2E_SERVER_URL"], Path(os.environ.get("E2E_SERVER_LOG", "/dev/null")))
        return
    with running(plugin=True, log_path=tmp_path_factory.mktemp("vllm") / "server.log") as srv:
        yield srv


@pytest.fixture(scope="session")
def base_url(server: Server) -> str:
    return server.base_url


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)
