"""Tenancy by API key (issue 24 point 5) over a scripted engine, a real SQLite store, our key
gate and vLLM's own authentication middleware, ordered as vLLM's ``build_app`` orders them.

With two keys, Bob (the second key) meets every route of ours on Alice's objects and gets,
byte for byte, the answer an id that nobody made gets; Alice's state is unchanged afterwards.
The same server in ``shared`` mode, with one key, and over records made before tenancy shows
the state shared. The real server with two keys: tests/slow/test_auth.py."""

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient
from vllm.entrypoints.serve.middleware.authenticate import AuthenticationMiddleware

from fakes import ScriptedEngine, usage
from vllm_responses.events.deltas import Finish, TextDelta
from vllm_responses.environment import TENANCY
from vllm_responses.plugin import ResponsesPlugin
from vllm_responses.core.service import ResponsesService
from vllm_responses.settings import Settings, tenancy_from_env
from vllm_responses.store.sqlite import SQLiteStore
from vllm_responses.api.tenancy import tenant_id, tenants

ALICE, BOB = "sk-alice-0123456789", "sk-bob-0123456789"
SCRIPT = [TextDelta("Hello"), Finish("stop", usage())]
MESSAGE = {"type": "message", "role": "user", "content": "Remember 7."}
# Ids of the right shapes that nobody made: what Bob's answers must equal.
NOBODY = {"resp": "resp_" + "0" * 48, "bg": "resp_" + "1" * 48, "conv": "conv_" + "0" * 48, "item": "msg_" + "0" * 48}


def app_with(db: Path, keys: list[str]) -> FastAPI:
    app = FastAPI()
    ResponsesPlugin().attach_router(app)
    if keys:
        app.add_middleware(AuthenticationMiddleware, tokens=keys)  # vLLM's, added after the plugin's routes
    app.state.vllm_responses = ResponsesService(ScriptedEngine(SCRIPT), SQLiteStore(db))
    return app


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """``serve(keys)``: a server on one store file (the same for every call of a test)."""
    clients: list[TestClient] = []

    def start(keys: list[str]) -> TestClient:
        client = TestClient(app_with(tmp_path / "r.db", keys))
        client.__enter__()  # one event loop for the whole test: background runs live on
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)


class As:
    """Requests with one API key."""

    def __init__(self, client: TestClient, key: str | None) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    def call(self, method: str, path: str, body: Any = None) -> Any:
        return self.client.request(method, path, json=body, headers=self.headers)

    def ok(self, method: str, path: str, body: Any = None) -> dict:
        r = self.call(method, path, body)
        assert r.status_code == 200, (method, path, r.text)
        return r.json()

    def finished(self, rid: str) -> dict:
        deadline = time.monotonic() + 30
        while (got := self.ok("GET", f"/v1/responses/{rid}"))["status"] in ("queued", "in_progress"):
            assert time.monotonic() < deadline, f"{rid} still {got['status']}"
            time.sleep(0.01)
        return got


def alices_state(alice: As) -> dict[str, str]:
    stored = alice.ok("POST", "/v1/responses", {"model": "demo", "input": "hi"})
    background = alice.ok("POST", "/v1/responses", {"model": "demo", "input": "hi", "background": True})
    assert alice.finished(background["id"])["status"] == "completed"
    conv = alice.ok("POST", "/v1/conversations", {"items": [MESSAGE]})
    item = alice.ok("GET", f"/v1/conversations/{conv['id']}/items")["data"][0]
    return {"resp": stored["id"], "out": stored["output"][0]["id"], "bg": background["id"], "conv": conv["id"], "item": item["id"]}


def attempts(ids: dict[str, str]) -> list[tuple[str, str, Any]]:
    """Every route of ours that reaches stored state, on ``ids``."""
    resp, bg, conv, item = ids["resp"], ids["bg"], ids["conv"], ids["item"]
    reference = [{"type": "item_reference", "id": ids.get("out", NOBODY["item"])}]
    return [
        ("GET", f"/v1/responses/{resp}", None),
        ("GET", f"/v1/responses/{resp}/input_items", None),
        ("GET", f"/v1/responses/{bg}?stream=true", None),
        ("POST", f"/v1/responses/{bg}/cancel", None),
        ("POST", "/v1/responses", {"model": "demo", "input": "more", "previous_response_id": resp}),
        ("POST", "/v1/responses", {"model": "demo", "input": "more", "previous_response_id": bg, "background": True}),
        ("POST", "/v1/responses", {"model": "demo", "input": "more", "conversation": conv}),
        ("POST", "/v1/responses", {"model": "demo", "input": reference}),
        ("POST", "/v1/responses/input_tokens", {"model": "demo", "input": "more", "previous_response_id": resp}),
        ("POST", "/v1/responses/input_tokens", {"model": "demo", "input": "more", "conversation": conv}),
        ("POST", "/v1/responses/compact", {"model": "demo", "input": "more", "previous_response_id": resp}),
        ("POST", "/v1/conversations", {"items": reference}),
        ("GET", f"/v1/conversations/{conv}", None),
        ("POST", f"/v1/conversations/{conv}", {"metadata": {"k": "v"}}),
        ("GET", f"/v1/conversations/{conv}/items", None),
        ("POST", f"/v1/conversations/{conv}/items", {"items": [MESSAGE]}),
        ("GET", f"/v1/conversations/{conv}/items/{item}", None),
        ("DELETE", f"/v1/conversations/{conv}/items/{item}", None),
        ("DELETE", f"/v1/conversations/{conv}", None),
        ("DELETE", f"/v1/responses/{resp}", None),
    ]


def answer(r: Any, ids: dict[str, str]) -> tuple[int, str]:
    """Status and body, with the ids of the objects tried put back to the unmade ones."""
    text = r.text
    for kind in ("resp", "bg", "conv", "item"):
        text = text.replace(ids[kind], NOBODY[kind])
    text = text.replace(ids["out"], NOBODY["item"])
    return r.status_code, text


def test_another_key_meets_every_route_as_if_nothing_existed(serve: Any) -> None:
    client = serve([ALICE, BOB])
    alice, bob = As(client, ALICE), As(client, BOB)
    ids = alices_state(alice)
    before = {path: alice.ok("GET", path) for path in (f"/v1/responses/{ids['resp']}", f"/v1/conversations/{ids['conv']}",
                                                        f"/v1/conversations/{ids['conv']}/items", f"/v1/responses/{ids['bg']}")}
    unmade = {**NOBODY, "out": NOBODY["item"]}
    for (method, path, body), (_, nobodys_path, nobodys_body) in zip(attempts(ids), attempts(unmade)):
        got, missing = answer(bob.call(method, path, body), ids), (lambda r: (r.status_code, r.text))(bob.call(method, nobodys_path, nobodys_body))
        assert got[0] in (400, 404), (method, path, got)
        assert got == missing, (method, path)
    # Nothing of Alice's was read, changed, cancelled or deleted meanwhile.
    assert {path: alice.ok("GET", path) for path in before} == before


def test_the_owner_meets_every_route_normally(serve: Any) -> None:
    client = serve([ALICE, BOB])
    alice = As(client, ALICE)
    ids = alices_state(alice)
    for method, path, body in attempts(ids):
        r = alice.call(method, path, body)
        if path.endswith("/cancel"):  # finished: not cancellable, but found
            assert (r.status_code, r.json()["error"]["code"]) == (400, "not_cancellable")
        else:
            assert r.status_code == 200, (method, path, r.text)


def test_websocket_turns_obey_the_same_rule(serve: Any) -> None:
    client = serve([ALICE, BOB])
    ids = alices_state(As(client, ALICE))

    def turn(key: str, body: dict) -> dict:
        with client.websocket_connect("/v1/responses", headers={"Authorization": f"Bearer {key}"}) as ws:
            ws.send_text(json.dumps({"type": "response.create", "model": "demo", "input": "more", **body}))
            while True:
                event = json.loads(ws.receive_text())
                if event["type"] in ("error", "response.completed", "response.failed"):
                    return event

    refused = turn(BOB, {"previous_response_id": ids["resp"]})
    assert (refused["type"], refused["status"], refused["error"]["code"]) == ("error", 400, "previous_response_not_found")
    assert turn(BOB, {"conversation": ids["conv"]})["error"]["code"] == "conversation_not_found"
    assert turn(ALICE, {"previous_response_id": ids["resp"]})["type"] == "response.completed"


def test_shared_mode_one_key_and_older_records_share_state(serve: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    before_tenancy = As(serve([ALICE]), ALICE)  # one key: nothing to tell apart
    old = alices_state(before_tenancy)
    two = serve([ALICE, BOB])  # the operator adds a key: what was made before stays shared
    assert As(two, BOB).ok("GET", f"/v1/responses/{old['resp']}")["id"] == old["resp"]
    assert As(two, BOB).ok("GET", f"/v1/conversations/{old['conv']}/items")["data"][0]["id"] == old["item"]
    assert As(two, BOB).ok("POST", "/v1/responses", {"model": "demo", "input": [{"type": "item_reference", "id": old["out"]}]})

    monkeypatch.setenv(TENANCY, "shared")
    shared = serve([ALICE, BOB])
    ids = alices_state(As(shared, ALICE))
    bob = As(shared, BOB)
    assert bob.ok("GET", f"/v1/responses/{ids['resp']}")["id"] == ids["resp"]
    assert bob.ok("POST", "/v1/responses", {"model": "demo", "input": "more", "conversation": ids["conv"]})["status"] == "completed"


def test_the_store_holds_tenants_never_keys(serve: Any, tmp_path: Path) -> None:
    client = serve([ALICE, BOB])
    ids = alices_state(As(client, ALICE))
    bobs = As(client, BOB).ok("POST", "/v1/conversations", {})
    client.__exit__(None, None, None)  # the store closed: its file holds everything
    data = b"".join(p.read_bytes() for p in tmp_path.glob("r.db*"))
    assert ALICE.encode() not in data and BOB.encode() not in data
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(tmp_path / "r.db")) as conn:
        assert conn.execute("SELECT tenant FROM responses WHERE id = ?", (ids["resp"],)).fetchone() == (tenant_id(ALICE),)
        assert conn.execute("SELECT tenant FROM conversations WHERE id = ?", (bobs["id"],)).fetchone() == (tenant_id(BOB),)


def test_tenants_and_the_setting() -> None:
    assert tenants([ALICE], "per-key") == {} and tenants([ALICE, ALICE], "per-key") == {}  # one key: shared
    assert tenants([ALICE, BOB], "shared") == {}
    both = tenants([ALICE, BOB], "per-key")
    assert sorted(both.values()) == sorted([tenant_id(ALICE), tenant_id(BOB)]) and tenant_id(ALICE) != tenant_id(BOB)
    assert tenant_id(ALICE) == tenant_id(ALICE) and ALICE not in tenant_id(ALICE)  # stable across processes, not the key
    assert tenancy_from_env({}) == "per-key" and tenancy_from_env({TENANCY: "shared"}) == "shared"
    assert Settings.from_env({TENANCY: "Shared"}).tenancy == "shared"
    with pytest.raises(ValueError, match=TENANCY):
        tenancy_from_env({TENANCY: "per-user"})
