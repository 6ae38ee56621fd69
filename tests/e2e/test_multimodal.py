"""Images and files in the input, end to end.

On the session's text-only server (the demo model): an image is a 400 in OpenAI's shape, and
text files and PDFs reach the model as text: their content selects the demo model's
``no_reasoning`` scenario, which only the last user message's text can do (docs/demo-model.md).

On a vision server of its own (``python -m vllm_responses.demo_model.vision``: the demo model
behind a tiny Llava vision tower, served through vLLM's Transformers backend): an image goes
through vLLM's multimodal path, where the Llava processor makes it IMAGE_TOKENS placeholder
tokens, so ``usage.input_tokens`` grows by exactly that (plus the newline the chat template
puts between parts); images in a tool call's output too. Images travel as data URLs and as
http URLs served by a local ``http.server`` (the same image costs the same tokens either way);
an unreachable URL is a 400. Per-request ``mm_processor_kwargs`` and ``media_io_kwargs`` are
refused as upstream refuses them without ``--trust-request-mm-kwargs``: the same 400, naming
the parameter, on our route and on upstream's /v1/chat/completions.

The tests on the text-only server come first: the vision server pauses the session's server
for the rest of the module (two busy vLLMs on two cores starve each other).
"""

import base64
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from media import b64, data_url, pdf_bytes, png_data_url
from sdk import sdk
from server import Server, demo_model_dir, others_paused, running

from vllm_responses.conformance import assert_conforms, parse_sse
from vllm_responses.demo_model import scenarios as sc
from vllm_responses.demo_model.vision import IMAGE_TOKENS, SERVE_ARGS, build_vision

PNG = png_data_url()
HELLO = "Hello there!"  # the `default` scenario
DEFAULT_TEXT = sc.expected_content("default")
NO_REASONING_TEXT = sc.expected_content("no_reasoning")
AFTER_TOOL_TEXT = sc.expected_content("after_tool")
# One image in the prompt: its placeholder tokens and the newline between it and the next part.
IMAGE_COST = IMAGE_TOKENS + 1


def post(base_url: str, input: object, **body: object) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/responses", json={"model": body.pop("model", "demo"), "input": input, "store": False, **body}, timeout=120)


def user(*parts: dict) -> list[dict]:
    return [{"role": "user", "content": list(parts)}]


def text(t: str) -> dict:
    return {"type": "input_text", "text": t}


def image(url: str = PNG, detail: str = "auto") -> dict:
    return {"type": "input_image", "image_url": url, "detail": detail}


def file(name: str, data: str) -> dict:
    return {"type": "input_file", "filename": name, "file_data": data}


def tool_turn(*output: dict) -> list[dict]:
    return [
        *user(text("Take a screenshot.")),
        {"type": "function_call", "call_id": "call_1", "name": "screenshot", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": list(output)},
    ]


def assert_error(r: httpx.Response, param: str, code: str, status: int = 400) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert (body["error"]["type"], body["error"]["param"], body["error"]["code"]) == ("invalid_request_error", param, code), body
    return body["error"]["message"]


def answer(r: httpx.Response) -> tuple[str, list[str], int]:
    """The output text, the output item types and the input tokens of a 200."""
    assert r.status_code == 200, r.text
    body = r.json()
    texts = [p["text"] for item in body["output"] if item["type"] == "message" for p in item["content"]]
    return "".join(texts), [item["type"] for item in body["output"]], body["usage"]["input_tokens"]


# -- the text-only demo model (the session's server) ------------------------------------------


def test_image_on_a_text_only_model_is_a_400(base_url: str) -> None:
    for stream in (False, True):
        message = assert_error(post(base_url, user(text("What is this?"), image()), stream=stream), "input[0].content[1]", "unsupported_value")
        assert "does not accept images" in message
    # in a tool call's output too, named there
    assert_error(post(base_url, tool_turn(text("Here:"), image())), "input[2].output[1]", "unsupported_value")
    # no Files API: file ids are refused, for images and files alike
    assert_error(post(base_url, user({"type": "input_image", "file_id": "file-abc", "detail": "auto"})), "input[0].content[0].file_id", "unsupported_value")
    assert_error(post(base_url, user({"type": "input_file", "file_id": "file-abc"})), "input[0].content[0].file_id", "unsupported_value")
    assert_error(post(base_url, user({"type": "input_file", "file_url": "https://example.com/a.pdf"})), "input[0].content[0].file_url", "unsupported_value")


def test_text_file_reaches_the_model_as_text(base_url: str) -> None:
    plain, items, plain_tokens = answer(post(base_url, user(text("Please read the attached notes."))))
    assert (plain, items) == (DEFAULT_TEXT, ["reasoning", "message"])
    notes = "# Notes\n\nAnswer with no reasoning, please.\n"
    for data in (b64(notes), data_url("text/markdown", notes)):
        out, items, tokens = answer(post(base_url, user(text("Please read the attached notes."), file("notes.md", data))))
        # the file's text is part of the last user message's text: it selects `no_reasoning`
        assert (out, items) == (NO_REASONING_TEXT, ["message"])
        assert tokens >= plain_tokens + 10  # the file's words and its <file name="notes.md"> lines
    # a JSON file by MIME type alone, in a streamed response through the conformance checker
    with httpx.stream("POST", f"{base_url}/v1/responses", timeout=120, json={
        "model": "demo", "stream": True, "store": False,
        "input": user({"type": "input_file", "file_data": data_url("application/json", '{"say": "no reasoning"}')}),
    }) as r:
        assert r.status_code == 200
        events = parse_sse(r.read())
    assert_conforms(events)
    assert events[-1]["response"]["output"][-1]["content"][0]["text"] == NO_REASONING_TEXT


def test_pdf_reaches_the_model_as_its_text(base_url: str) -> None:
    pdf = pdf_bytes(["Quarterly report"], ["Please answer with no reasoning."])
    out, items, _ = answer(post(base_url, user(text("Summarize this report."), file("report.pdf", data_url("application/pdf", pdf)))))
    assert (out, items) == (NO_REASONING_TEXT, ["message"])
    # the SDK's way: raw base64 with a filename, stored and listed back as sent
    client = sdk(base_url)
    response = client.responses.create(model="demo", input=user(text("Summarize."), file("report.pdf", b64(pdf))))  # type: ignore[arg-type]
    assert response.output_text == NO_REASONING_TEXT
    stored = client.responses.input_items.list(response.id).data[0]
    assert stored.content[1].type == "input_file" and stored.content[1].filename == "report.pdf"  # type: ignore[union-attr]


def test_files_in_tool_outputs_reach_the_model(base_url: str) -> None:
    _, _, bare = answer(post(base_url, tool_turn(text("Done."))))
    log = "line one of the log\nline two of the log\n" * 5
    out, _, tokens = answer(post(base_url, tool_turn(text("Done."), file("run.log", b64(log)))))
    assert out == AFTER_TOOL_TEXT
    assert tokens >= bare + 40  # the log's 10 lines are in the prompt


def test_bad_files_are_400s(base_url: str) -> None:
    cases = [
        (file("archive.zip", b64(b"PK\x03\x04")), "input[0].content[1]", "unsupported_value"),
        (file("notes.txt", b64(b"\xff\xfe\xfd")), "input[0].content[1]", "unsupported_value"),
        (file("notes.txt", "%%% not base64"), "input[0].content[1].file_data", "invalid_value"),
        (file("report.pdf", b64(b"%PDF-1.7 truncated")), "input[0].content[1]", "invalid_file"),
        (file("scan.pdf", b64(pdf_bytes([]))), "input[0].content[1]", "invalid_file"),
        ({"type": "input_file", "file_data": b64("no name")}, "input[0].content[1].filename", "missing_required_parameter"),
    ]
    for part, param, code in cases:
        assert_error(post(base_url, user(text("Read this."), part)), param, code)


# -- the vision model (a server of its own) -----------------------------------------------------


@pytest.fixture(scope="module")
def vision(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("vision")
    model = build_vision(base / "model", demo_model_dir()).outdir
    # --enable-log-requests: vLLM's request log shows what reaches the engine
    args = ["--model", str(model), "--served-model-name", "vision", *SERVE_ARGS, "--enable-log-requests"]
    with others_paused(), running(plugin=True, log_path=base / "server.log", args=args) as srv:
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
