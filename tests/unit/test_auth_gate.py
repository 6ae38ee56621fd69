"""The API-key gate (auth.py) in front of vLLM's own authentication middleware, as vLLM's
``build_app`` orders them: routes (and our plugin's ``attach_router``) first, middleware after."""

import pytest
from fastapi import FastAPI, WebSocket
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketDenialResponse
from vllm.entrypoints.serve.middleware.authenticate import AuthenticationMiddleware

from vllm_responses import __version__
from vllm_responses.api import auth

KEYS = ["sk-first", "sk-second"]
MISSING = {
    "message": "You didn't provide an API key. Send it in an Authorization header using Bearer auth (Authorization: Bearer YOUR_KEY).",
    "type": "invalid_request_error",
    "param": None,
    "code": "invalid_api_key",
}
WRONG = {**MISSING, "message": "Incorrect API key provided."}


def app_with(keys: list[str] | None, root_path: str = "") -> TestClient:
    app = FastAPI(root_path=root_path)
    for path in ("/v1/responses", "/v1/responses/{rid}", "/v1/conversations/{cid}/items", "/v1/models", "/v1/responsesque", "/health"):
        app.add_api_route(path, lambda: JSONResponse({"ok": True}), methods=["GET", "POST"])

    @app.websocket("/v1/responses")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_json({"ok": True})
        await websocket.close()
    auth.guard(app, ["/v1/responses", "/v1/conversations"])  # attach_router
    if keys:
        app.add_middleware(AuthenticationMiddleware, tokens=keys)  # vLLM's init_entrypoints_middleware
    return TestClient(app, root_path=root_path)


@pytest.mark.parametrize("path", ["/v1/responses", "/v1/responses/resp_1", "/v1/conversations/conv_1/items"])
def test_our_paths_answer_openai_401(path: str) -> None:
    client = app_with(KEYS)
    for headers, body in (
        ({}, MISSING),
        ({"Authorization": "Bearer"}, MISSING),
        ({"Authorization": "Basic sk-first"}, MISSING),
        ({"Authorization": "Bearer sk-wrong"}, WRONG),
        ({"Authorization": "Bearer sk-first "}, WRONG),  # exact, as vLLM compares
    ):
        r = client.post(path, headers=headers)
        assert (r.status_code, r.json()) == (401, {"error": body}), headers
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.headers["x-vllm-responses"] == __version__
    for key in KEYS:
        r = client.post(path, headers={"Authorization": f"Bearer {key}"})
        assert (r.status_code, r.json()) == (200, {"ok": True})
    assert client.post(path, headers={"Authorization": "bearer sk-second"}).status_code == 200  # scheme case-insensitive


def test_vllm_keeps_guarding_its_own_paths() -> None:
    client = app_with(KEYS)
    for path in ("/v1/models", "/v1/responsesque"):  # not ours (a prefix match is not enough)
        r = client.get(path)
        assert (r.status_code, r.json()) == (401, {"error": "Unauthorized"})
        assert client.get(path, headers={"Authorization": "Bearer sk-first"}).status_code == 200
    assert client.get("/health").status_code == 200  # unguarded by vLLM, and not ours


def test_options_and_root_path_as_vllm_treats_them() -> None:
    client = app_with(KEYS, root_path="/api")
    assert client.options("/v1/responses").status_code != 401  # CORS preflights carry no key
    r = client.get("/api/v1/responses/resp_1")
    assert (r.status_code, r.json()) == (401, {"error": MISSING})


@pytest.mark.parametrize("root_path", ["/", "/v", "/api"])
def test_a_root_path_never_opens_our_paths(root_path: str) -> None:
    """Our paths with and without the root path in front, as the router routes both: each
    needs a key (before the fix, ``--root-path /`` or ``/v`` let ``/v1/responses/x`` by)."""
    client = app_with(KEYS, root_path=root_path)
    for path in ("/v1/responses/resp_1", root_path.rstrip("/") + "/v1/responses/resp_1", "/v1/conversations/conv_1/items"):
        r = client.get(path)
        assert (r.status_code, r.json()) == (401, {"error": MISSING}), (root_path, path)
        assert client.get(path, headers={"Authorization": "Bearer sk-first"}).status_code == 200, (root_path, path)


def test_no_key_no_gate() -> None:
    client = app_with(None)
    assert client.post("/v1/responses").status_code == 200
    assert not any(m.cls is auth.ApiKeyGate for m in client.app.user_middleware)


def test_gate_sits_right_outside_vllms_and_only_once() -> None:
    app = app_with(KEYS).app
    app.build_middleware_stack()
    app.build_middleware_stack()
    classes = [m.cls for m in app.user_middleware]
    assert classes == [auth.ApiKeyGate, AuthenticationMiddleware]


def test_websocket_handshake_answers_openai_401() -> None:
    client = app_with(KEYS)
    for headers, body in (({}, MISSING), ({"Authorization": "Bearer sk-wrong"}, WRONG)):
        with pytest.raises(WebSocketDenialResponse) as raised, client.websocket_connect("/v1/responses", headers=headers):
            pass
        assert (raised.value.status_code, raised.value.json()) == (401, {"error": body})
    with client.websocket_connect("/v1/responses", headers={"Authorization": "Bearer sk-first"}) as ws:
        assert ws.receive_json() == {"ok": True}
