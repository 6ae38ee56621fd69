"""``--api-key`` (issue 9.5), on a server of its own: every route of ours (WebSocket mode
included) answers a missing or wrong key with OpenAI's 401 and the right key with its normal
answer; vLLM's own routes stay guarded as vLLM guards them. The server has two keys, so each
is a tenant (issue 24): the second key finds nothing the first one stored (the whole route
table over a scripted engine: tests/unit/test_tenancy.py)."""

import asyncio
import json
from collections.abc import Iterator

import httpx
import openai
import pytest
from openai import OpenAI
from server import Server, running
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from vllm_responses.api import conversations, routes, websocket
from vllm_responses.environment import KEEPALIVE, PROMPT_CACHE_MB

KEY = "sk-test-key"
OTHER_KEY = "sk-other-tenant"  # a second client of the same server
MISSING = {
    "message": "You didn't provide an API key. Send it in an Authorization header using Bearer auth (Authorization: Bearer YOUR_KEY).",
    "type": "invalid_request_error",
    "param": None,
    "code": "invalid_api_key",
}
WRONG = {**MISSING, "message": "Incorrect API key provided."}
RIGHT = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("auth")
    # --fail-on-environ-validation: vLLM refuses to start on a VLLM_ variable it does not know;
    # ours are declared to it by our general plugin (environment.py).
    with running(plugin=True, log_path=base / "server.log", args=["--api-key", KEY, OTHER_KEY, "--fail-on-environ-validation"],
                                  env={KEEPALIVE: "10", PROMPT_CACHE_MB: "64"}) as srv:
        yield srv


def test_vllm_knows_our_settings(server: Server) -> None:
    """Started under ``--fail-on-environ-validation`` with our variables set, and not one of
    them reported as unknown (a warning, before the general plugin declared them)."""
    assert "Unknown vLLM environment variable" not in server.log_path.read_text(errors="replace")


def client(server: Server, key: str = KEY) -> OpenAI:
    return OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0, _strict_response_validation=True)


def cases(server: Server) -> list[tuple[str, str, str, dict]]:
    """(method, route template, path, request kwargs): every route of ours on real objects, in
    an order where each right-key request finds what it needs (cancel before the resumed
    stream, deletes last)."""
    sdk = client(server)
    stored = sdk.responses.create(model="demo", input="Hello there!")
    doomed = sdk.responses.create(model="demo", input="Hello there!")
    running_bg = sdk.responses.create(model="demo", input="Count forever.", max_output_tokens=30000, background=True)  # still running when its cancel comes, however slow the machine
    conv = sdk.conversations.create(items=[{"type": "message", "role": "user", "content": "Remember 7."}])
    item = sdk.conversations.items.list(conv.id).data[0]
    doomed_conv = sdk.conversations.create()
    rid, cid = "/v1/responses/{response_id}", "/v1/conversations/{conversation_id}"
    return [
        ("POST", "/v1/responses", "/v1/responses", {"json": {"model": "demo", "input": "Hello there!"}}),
        ("GET", "/v1/responses", "/v1/responses", {}),  # WebSocket mode's URL without an upgrade: 426
        ("GET", rid, f"/v1/responses/{stored.id}", {}),
        ("GET", rid + "/input_items", f"/v1/responses/{stored.id}/input_items", {}),
        ("POST", rid + "/cancel", f"/v1/responses/{running_bg.id}/cancel", {}),
        ("GET", rid + "?stream=true", f"/v1/responses/{running_bg.id}", {"params": {"stream": "true"}}),
        ("DELETE", rid, f"/v1/responses/{doomed.id}", {}),
        ("POST", "/v1/conversations", "/v1/conversations", {"json": {}}),
        ("GET", cid, f"/v1/conversations/{conv.id}", {}),
        ("POST", cid, f"/v1/conversations/{conv.id}", {"json": {"metadata": {"k": "v"}}}),
        ("GET", cid + "/items", f"/v1/conversations/{conv.id}/items", {}),
        ("POST", cid + "/items", f"/v1/conversations/{conv.id}/items", {"json": {"items": [{"type": "message", "role": "user", "content": "More."}]}}),
        ("GET", cid + "/items/{item_id}", f"/v1/conversations/{conv.id}/items/{item.id}", {}),
        ("DELETE", cid + "/items/{item_id}", f"/v1/conversations/{conv.id}/items/{item.id}", {}),
        ("DELETE", cid, f"/v1/conversations/{doomed_conv.id}", {}),
    ]


def test_every_route_of_ours_requires_the_key(server: Server) -> None:
    table = cases(server)
    ours = {(m, r.path) for router in (routes.router, websocket.router, conversations.router) for r in router.routes for m in getattr(r, "methods", ())}
    assert {(m, t.split("?")[0]) for m, t, _, _ in table} == ours, "a route of ours is missing from this table"
    http = httpx.Client(base_url=server.base_url, timeout=60)
    for method, template, path, kw in table:
        for headers, body in (({}, MISSING), ({"Authorization": "Bearer sk-wrong"}, WRONG), ({"Authorization": KEY}, MISSING)):
            r = http.request(method, path, headers=headers, **kw)
            assert (r.status_code, r.json()) == (401, {"error": body}), (method, template, headers)
            assert r.headers["www-authenticate"] == "Bearer"
    for method, template, path, kw in table:
        r = http.request(method, path, headers=RIGHT, **kw)
        assert r.status_code == (426 if (method, path) == ("GET", "/v1/responses") else 200), (method, template, r.text)
        if template.endswith("?stream=true"):
            assert r.headers["content-type"].startswith("text/event-stream") and b"event: response.incomplete" in r.content
        else:
            assert r.json().get("error") is None or r.status_code == 426, (method, template, r.text)  # a response's "error": null


def test_the_sdk_with_a_wrong_key_raises_authentication_error(server: Server) -> None:
    wrong = client(server, "sk-wrong")
    for call in (
        lambda: wrong.responses.create(model="demo", input="Hello there!"),
        lambda: wrong.responses.retrieve("resp_123"),
        lambda: wrong.conversations.create(),
    ):
        with pytest.raises(openai.AuthenticationError) as raised:
            call()
        assert raised.value.status_code == 401
        assert "Incorrect API key provided." in str(raised.value)
        assert raised.value.code == "invalid_api_key" and raised.value.body == WRONG
    assert client(server).responses.create(model="demo", input="Hello there!").status == "completed"


def test_vllms_own_routes_stay_guarded_as_vllm_guards_them(server: Server) -> None:
    r = httpx.get(f"{server.base_url}/v1/models", timeout=30)
    assert (r.status_code, r.json()) == (401, {"error": "Unauthorized"})
    assert httpx.get(f"{server.base_url}/v1/models", headers=RIGHT, timeout=30).status_code == 200
    r = httpx.post(f"{server.base_url}/v1/chat/completions", json={"model": "demo", "messages": []}, headers={"Authorization": "Bearer sk-wrong"})
    assert r.status_code == 401
    assert httpx.get(f"{server.base_url}/health", timeout=30).status_code == 200  # unguarded, as in vLLM


def test_websocket_mode_requires_the_key(server: Server) -> None:
    url = server.base_url.replace("http://", "ws://") + "/v1/responses"

    async def turn(headers: dict[str, str]) -> list[str]:
        async with connect(url, additional_headers=headers) as ws:
            await ws.send(json.dumps({"type": "response.create", "model": "demo", "input": "Hello there!"}))
            types: list[str] = []
            while not types or types[-1] not in ("response.completed", "response.failed", "error"):
                types.append(json.loads(await ws.recv())["type"])
            return types

    for headers, body in (({}, MISSING), ({"Authorization": "Bearer sk-wrong"}, WRONG)):
        with pytest.raises(InvalidStatus) as raised:
            asyncio.run(asyncio.wait_for(turn(headers), 120))
        response = raised.value.response
        assert (response.status_code, json.loads(response.body)) == (401, {"error": body})
    assert asyncio.run(asyncio.wait_for(turn(RIGHT), 120))[-1] == "response.completed"  # a turn that never ends fails here


def test_a_second_key_finds_nothing_the_first_stored(server: Server) -> None:
    """The openai SDK as two clients: everything Alice stored is 404 (or, for a continuation,
    400 ``previous_response_not_found``) for Bob, as an id nobody made; a WebSocket turn and a
    follower of her background response too. Alice still has it all afterwards."""
    alice, bob = client(server), client(server, OTHER_KEY)
    stored = alice.responses.create(model="demo", input="Hello there!")
    background = alice.responses.create(model="demo", input="Hello there!", background=True)
    conv = alice.conversations.create(items=[{"type": "message", "role": "user", "content": "Remember 7."}])
    for call in (
        lambda: bob.responses.retrieve(stored.id),
        lambda: bob.responses.input_items.list(stored.id),
        lambda: bob.responses.delete(stored.id),
        lambda: bob.responses.cancel(background.id),
        lambda: bob.responses.retrieve(background.id, stream=True),
        lambda: bob.conversations.retrieve(conv.id),
        lambda: bob.conversations.items.list(conv.id),
        lambda: bob.conversations.delete(conv.id),
        lambda: bob.responses.create(model="demo", input="More.", conversation=conv.id),
    ):
        with pytest.raises(openai.NotFoundError) as raised:
            call()
        assert raised.value.code in ("response_not_found", "conversation_not_found")
    with pytest.raises(openai.BadRequestError) as refused:
        bob.responses.create(model="demo", input="More.", previous_response_id=stored.id)
    assert refused.value.code == "previous_response_not_found"

    url = server.base_url.replace("http://", "ws://") + "/v1/responses"

    async def continue_over_websocket() -> dict:
        async with connect(url, additional_headers={"Authorization": f"Bearer {OTHER_KEY}"}) as ws:
            await ws.send(json.dumps({"type": "response.create", "model": "demo", "input": "More.", "previous_response_id": stored.id}))
            return json.loads(await ws.recv())

    event = asyncio.run(asyncio.wait_for(continue_over_websocket(), 120))
    assert (event["type"], event["error"]["code"]) == ("error", "previous_response_not_found")

    assert alice.responses.retrieve(stored.id).status == "completed"
    assert alice.conversations.items.list(conv.id).data[0].type == "message"
    assert alice.responses.create(model="demo", input="More.", previous_response_id=stored.id).status == "completed"
