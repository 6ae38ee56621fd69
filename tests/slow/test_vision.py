"""Images on a vision server of its own (``python -m vllm_responses.demo_model.vision``: the
demo model behind a tiny Llava vision tower, served through vLLM's Transformers backend): an
image goes through vLLM's multimodal path, where the Llava processor makes it IMAGE_TOKENS
placeholder tokens, so ``usage.input_tokens`` grows by exactly that (plus the newline the chat
template puts between parts); images in a tool call's output too. Images travel as data URLs
and as http URLs served by a local ``http.server`` (the same image costs the same tokens either
way); an unreachable URL is a 400. Per-request ``mm_processor_kwargs`` and ``media_io_kwargs``
are refused as upstream refuses them without ``--trust-request-mm-kwargs``: the same 400, naming
the parameter, on our route and on upstream's /v1/chat/completions. Files and images on the
text-only demo model: tests/e2e/test_multimodal.py.
"""

import base64
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from media import AFTER_TOOL_TEXT, DEFAULT_TEXT, HELLO, IMAGE_COST, PNG, answer, assert_error, b64, file, image, png_data_url, post, text, tool_turn, user
from sdk import sdk
from server import Server, demo_model_dir, running

from vllm_responses.events.conformance import assert_conforms, parse_sse
from vllm_responses.demo_model.vision import SERVE_ARGS, build_vision

@pytest.fixture(scope="module")
def vision(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("vision")
    model = build_vision(base / "model", demo_model_dir()).outdir
    # --enable-log-requests: vLLM's request log shows what reaches the engine
    args = ["--model", str(model), "--served-model-name", "vision", *SERVE_ARGS, "--enable-log-requests"]
    with running(plugin=True, log_path=base / "server.log", args=args) as srv:
        yield srv


def test_image_reaches_the_vision_model(vision: Server) -> None:
    url = vision.base_url
    out, items, bare = answer(post(url, user(text(HELLO)), model="vision"))
    assert (out, items) == (DEFAULT_TEXT, ["reasoning", "message"])  # the demo model's script
    for detail in ("auto", "low", "high"):  # accepted, without effect: the processor decides the size
        out, _, tokens = answer(post(url, user(image(detail=detail), text(HELLO)), model="vision"))
        assert (out, tokens) == (DEFAULT_TEXT, bare + IMAGE_COST)
    # another size, after the text; two images
    _, _, tokens = answer(post(url, user(text(HELLO), image(png_data_url(300, 200, (0, 90, 200)))), model="vision"))
    assert tokens == bare + IMAGE_COST
    _, _, tokens = answer(post(url, user(image(), image(png_data_url(20, 20)), text(HELLO)), model="vision"))
    assert tokens == bare + 2 * IMAGE_COST
    # the openai SDK (strict validation), streamed, through the conformance checker
    client = sdk(url)
    with client.responses.stream(model="vision", input=user(image(), text(HELLO)), store=False) as stream:  # type: ignore[arg-type]
        final = stream.get_final_response()
    assert final.output_text == DEFAULT_TEXT and final.usage is not None and final.usage.input_tokens == bare + IMAGE_COST
    with httpx.stream("POST", f"{url}/v1/responses", timeout=120,
                      json={"model": "vision", "input": user(image(), text(HELLO)), "stream": True}) as r:
        assert r.status_code == 200
        events = parse_sse(r.read())
    assert_conforms(events)
    assert events[-1]["response"]["usage"]["input_tokens"] == bare + IMAGE_COST


def test_images_in_tool_outputs_reach_the_vision_model(vision: Server) -> None:
    url = vision.base_url
    _, _, bare = answer(post(url, tool_turn(text("Here is the screen.")), model="vision"))
    out, _, tokens = answer(post(url, tool_turn(text("Here is the screen."), image()), model="vision"))
    assert out == AFTER_TOOL_TEXT
    assert tokens == bare + IMAGE_COST
    # a custom tool's output, and an image with a file
    items = [
        *user(text("Take a screenshot.")),
        {"type": "custom_tool_call", "call_id": "call_2", "name": "shot", "input": "all"},
        {"type": "custom_tool_call_output", "call_id": "call_2", "output": [image(), file("a.txt", b64("caption"))]},
    ]
    out, _, _ = answer(post(url, items, model="vision"))
    assert out == AFTER_TOOL_TEXT


def test_images_that_cannot_be_loaded_are_400s(vision: Server) -> None:
    url = vision.base_url
    for bad in ("http://127.0.0.1:9/cat.png", "https://images.invalid/cat.png"):  # refused; no such host
        started = time.monotonic()
        message = assert_error(post(url, user(image(bad), text(HELLO)), model="vision"), "input", "invalid_image_url")
        assert "could not be loaded" in message
        assert time.monotonic() - started < 30  # vLLM's fetch timeout, not a hang
    for bad in ("data:image/png;base64,AAAA", "data:image/png;base64,!!!", "ftp://example.com/cat.png"):
        message = assert_error(post(url, user(image(bad), text(HELLO)), model="vision"), "input", "invalid_image")
        assert "could not be loaded" in message
    # the server is fine afterwards
    assert answer(post(url, user(image(), text(HELLO)), model="vision"))[0] == DEFAULT_TEXT


@pytest.fixture(scope="module")
def image_host() -> Iterator[str]:
    """The test image at http://127.0.0.1:PORT/cat.png, from a local ``http.server`` thread."""
    png = base64.b64decode(PNG.split(",", 1)[1])

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/cat.png" else 404)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(png)))
            self.end_headers()
            self.wfile.write(png)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/cat.png"
    httpd.shutdown()
    httpd.server_close()


def test_http_image_url_reaches_the_vision_model(vision: Server, image_host: str) -> None:
    url = vision.base_url
    _, _, bare = answer(post(url, user(text(HELLO)), model="vision"))
    out, items, by_data = answer(post(url, user(image(PNG), text(HELLO)), model="vision"))
    assert (out, items, by_data) == (DEFAULT_TEXT, ["reasoning", "message"], bare + IMAGE_COST)
    for stream in (False, True):
        r = post(url, user(image(image_host), text(HELLO)), model="vision", stream=stream)
        assert r.status_code == 200, r.text
        if stream:
            events = parse_sse(r.content)
            assert_conforms(events)
            assert events[-1]["response"]["usage"]["input_tokens"] == by_data
        else:
            assert answer(r) == (DEFAULT_TEXT, ["reasoning", "message"], by_data)
    # in a tool call's output too
    assert answer(post(url, tool_turn(text("Here is the screen."), image(image_host)), model="vision"))[0] == AFTER_TOOL_TEXT


def test_mm_kwargs_are_refused_as_upstream_refuses_them(vision: Server) -> None:
    """vLLM takes per-request multimodal kwargs only from trusted clients
    (``--trust-request-mm-kwargs``); without it, a non-empty value is a 400 naming the
    parameter, on upstream's chat route and on ours alike; an empty one asks for nothing."""
    url = vision.base_url
    cases = {
        "mm_processor_kwargs": {"size": {"shortest_edge": 64}},
        "media_io_kwargs": {"image": {"image_mode": "L"}},
    }
    for name, value in cases.items():
        chat = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
            "model": "vision", "max_tokens": 8, name: value,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": PNG}}, {"type": "text", "text": HELLO}]}],
        })
        assert chat.status_code == 400, chat.text
        upstream = chat.json()["error"]["message"]
        assert "--trust-request-mm-kwargs" in upstream and name in upstream, upstream
        for stream in (False, True):
            message = assert_error(post(url, user(image(), text(HELLO)), model="vision", stream=stream, **{name: value}), name, "invalid_value")
            assert upstream == f"{message} (parameter={name})"  # upstream appends what we put in `param`
        out = answer(post(url, user(image(), text(HELLO)), model="vision", **{name: {}}))[0]
        assert out == DEFAULT_TEXT


def logged_params(srv: Server, request_id: str) -> str:
    """The SamplingParams vLLM logged for a request (``--enable-log-requests``)."""
    lines = [line for line in srv.log_path.read_text(errors="replace").splitlines() if re.search(rf"Received request (chatcmpl-)?{request_id}:", line)]
    assert len(lines) == 1, lines
    found = re.search(r"params: (SamplingParams\(.*\)), lora_request", lines[0])
    assert found, lines[0]
    return found.group(1)


def test_transfer_params_and_watermarking_reach_the_engine_as_upstream_passes_them(vision: Server) -> None:
    url = vision.base_url
    ext = {"kv_transfer_params": {"do_remote_prefill": False, "marker": 1}, "ec_transfer_params": {"ec_marker": 2}, "watermarking": True}
    stamp = time.time_ns()
    ours = post(url, user(image(), text(HELLO)), model="vision", request_id=f"ext-ours-{stamp}", max_output_tokens=8, **ext)
    assert ours.status_code == 200, ours.text
    theirs = httpx.post(f"{url}/v1/chat/completions", timeout=120, headers={"X-Request-Id": f"ext-chat-{stamp}"}, json={
        "model": "vision", "max_tokens": 8, "request_id": f"ext-chat-{stamp}", **ext,
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": PNG}}, {"type": "text", "text": HELLO}]}],
    })
    assert theirs.status_code == 200, theirs.text
    mine, upstream = logged_params(vision, f"ext-ours-{stamp}"), logged_params(vision, f"ext-chat-{stamp}")
    wanted = "extra_args={'kv_transfer_params': {'do_remote_prefill': False, 'marker': 1}, 'ec_transfer_params': {'ec_marker': 2}}"
    for params in (mine, upstream):
        assert wanted in params and "watermarking=True" in params, params
    assert mine == upstream  # the same sampling parameters, field for field
