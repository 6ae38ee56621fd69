"""The two tiers and the one shared server.

- ``tests/unit/``: no server. Run first, before any server starts.
- ``tests/e2e/``: the fast tier's end-to-end tests, all on the session's server (the `server`
  fixture: the users' command, started once, lazily, by the first test that asks for it).
- ``tests/slow/``: modules that start servers of their own (their own flags, faults, kills,
  other models, a clean venv). ``make test`` runs the first two, ``make test-all`` all three.

A module outside tests/slow/ that starts a server fails (``server.may_start``); the seconds
each module's servers took to answer /health are printed after the run.
"""

import os
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

# Test helpers (fakes, e2e harness) import as top-level modules.
sys.path.insert(0, str(Path(__file__).parent))

import server as harness  # noqa: E402
from server import ExternalServer, Server, running  # noqa: E402

from vllm_responses.events.conformance import check_events, parse_sse  # noqa: E402

TESTS = Path(__file__).parent
TIERS = ("unit", "e2e", "slow")  # the order they run in


def tier_of(path: Path) -> str:
    parts = path.resolve().relative_to(TESTS).parts
    return parts[0] if len(parts) > 1 and parts[0] in TIERS else "unit"


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real server for the session, started with the users' command and our plugin."""
    if os.environ.get("E2E_SERVER_URL"):  # developer loop: reuse a running `make demo`
        capture = os.environ.get("E2E_CAPTURE_DIR")
        log = Path(os.environ.get("E2E_SERVER_LOG", ExternalServer.NO_LOG))
        yield ExternalServer(os.environ["E2E_SERVER_URL"], log, Path(capture) if capture else None)
        return
    base = tmp_path_factory.mktemp("vllm")
    captured = base / "streams"
    # MCP servers the tests start on loopback may be named by a request's server_url (tests/e2e/test_mcp_tools.py).
    # A listing gets 20 s, not 10: this VM can freeze every process for 10-40 s while servers run.
    mcp = {"VLLM_RESPONSES_MCP_ALLOWED_URLS": "127.0.0.1", "VLLM_RESPONSES_MCP_LIST_TIMEOUT_SECONDS": "20"}
    with running(plugin=True, log_path=base / "server.log", capture_dir=captured, shared=True, env=mcp) as srv:
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
    """Unit tests first, then the shared server's, then the slow tier (stable within each)."""
    items.sort(key=lambda item: TIERS.index(tier_of(item.path)))
    for item in items:
        tier = tier_of(item.path)
        if tier != "unit":
            item.add_marker(pytest.mark.e2e)
        if tier == "slow":
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> object:
    harness.current_module = str(item.path.relative_to(TESTS.parent))
    harness.may_start = tier_of(item.path) == "slow"
    return (yield)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not harness.STARTS:
        return
    by_owner: dict[str, list[float]] = defaultdict(list)
    for owner, seconds in harness.STARTS:
        by_owner[owner].append(seconds)
    write = terminalreporter.write_line
    terminalreporter.section("server starts (seconds until /health)")
    for owner, seconds in sorted(by_owner.items(), key=lambda kv: -sum(kv[1])):
        write(f"{sum(seconds):7.1f} s  {len(seconds)} x  {owner}")
    write(f"{sum(s for _, s in harness.STARTS):7.1f} s  {len(harness.STARTS)} servers in all")
