"""Images and files in the input, on the session's text-only server (the demo model): an image
is a 400 in OpenAI's shape, and text files and PDFs reach the model as text: their content
selects the demo model's ``no_reasoning`` scenario, which only the last user message's text can
do (docs/demo-model.md). Images on a vision model: tests/slow/test_vision.py."""

import httpx
from media import AFTER_TOOL_TEXT, DEFAULT_TEXT, NO_REASONING_TEXT, answer, assert_error, b64, data_url, file, image, pdf_bytes, post, text, tool_turn, user
from sdk import sdk

from vllm_responses.events.conformance import assert_conforms, parse_sse


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
