"""Images and files in the input: file decoding and text extraction (files.py), their chat
translation in messages and tool outputs (chat.py), and the tiny vision checkpoint
(demo_model/vision.py)."""

import json
from types import SimpleNamespace

import pytest
from media import b64, data_url, pdf_bytes, png_data_url

from vllm_responses.request import files
from vllm_responses.request.chat import chat_messages, has_files, inline_files
from vllm_responses.common.errors import APIError
from vllm_responses.request.protocol import parse_request

PNG = png_data_url()


def request(input):
    return parse_request(json.dumps({"model": "demo", "input": input}).encode())


def user(*parts):
    return [{"role": "user", "content": list(parts)}]


def text(t):
    return {"type": "input_text", "text": t}


def image(url=PNG, **extra):
    return {"type": "input_image", "image_url": url, "detail": "auto", **extra}


def file(name, data, **extra):
    return {"type": "input_file", "filename": name, "file_data": data, **extra}


def error(call, *args, **kwargs) -> APIError:
    with pytest.raises(APIError) as exc:
        call(*args, **kwargs)
    assert exc.value.status == 400
    return exc.value


# -- files.py: decoding --------------------------------------------------------------------


def test_file_data_forms():
    assert files.decode_file_data(data_url("text/plain", "héllo")) == ("héllo".encode(), "text/plain")
    assert files.decode_file_data(b64("héllo")) == ("héllo".encode(), None)
    # whitespace (wrapped base64) and missing padding are forgiven; MIME types are case-insensitive
    assert files.decode_file_data(b64("hello!!").rstrip("=")[:4] + "\n" + b64("hello!!").rstrip("=")[4:]) == (b"hello!!", None)
    assert files.decode_file_data("DATA:Application/PDF;base64," + b64(b"%PDF")) == (b"%PDF", "application/pdf")
    # a plain (percent-encoded) data URL, and one with parameters
    assert files.decode_file_data("data:text/csv,a%2Cb%0A1%2C2") == (b"a,b\n1,2", "text/csv")
    assert files.decode_file_data("data:text/plain;charset=utf-8;base64," + b64("x")) == (b"x", "text/plain")
    assert files.decode_file_data("data:;base64," + b64("x")) == (b"x", None)


def test_bad_file_data():
    e = error(files.decode_file_data, "not base64 at all!", "input[0].content[1].file_data")
    assert e.param == "input[0].content[1].file_data" and e.code == "invalid_value" and "base64" in e.message
    assert "data:" in error(files.decode_file_data, "data:text/plain;base64").message


def test_file_size_limit(monkeypatch):
    monkeypatch.setattr(files, "MAX_FILE_BYTES", 100)
    assert files.decode_file_data(b64(b"x" * 100)) == (b"x" * 100, None)
    for data in (b64(b"x" * 101), b64(b"x" * 10_000), "data:text/plain," + "x" * 101):
        e = error(files.decode_file_data, data, "p")
        assert (e.code, e.param) == ("file_too_large", "p")
        assert "100 bytes" in e.message


# -- files.py: kinds and text ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "mime", "kind"),
    [
        ("report.pdf", None, "pdf"), ("REPORT.PDF", None, "pdf"), (None, "application/pdf", "pdf"), ("x.bin", "application/pdf", "pdf"),
        ("notes.txt", None, "text"), ("README.md", None, "text"), ("data.json", None, "text"), ("table.csv", None, "text"),
        ("main.py", None, "text"), ("lib.rs", None, "text"), ("dir/sub/app.tsx", None, "text"), ("Makefile", None, "text"),
        ("Dockerfile", None, "text"), (".env", None, "text"), ("LICENSE", None, "text"), (None, "text/markdown", "text"), (None, "application/json", "text"), ("blob", "text/x-c", "text"),
        ("photo.png", None, None), ("doc.docx", None, None), ("a.zip", "application/zip", None), (None, "image/png", None),
        ("noext", None, None), (None, None, None),
    ],
)
def test_file_kind(name, mime, kind):
    assert files.file_kind(name, mime) == kind


def test_text_files():
    assert files.file_text(b"a,b\n1,2\n", "t.csv", None) == "a,b\n1,2\n"
    assert files.file_text("\ufeffé".encode(), "t.txt", None) == "é"  # the BOM goes
    e = error(files.file_text, b"\xff\xfe\x00a", "t.txt", None, "input[0].content[0]")
    assert (e.code, e.param) == ("unsupported_value", "input[0].content[0]") and "UTF-8" in e.message
    assert "NUL" in error(files.file_text, b"a\x00b", "t.txt", None).message
    e = error(files.file_text, b"PK\x03\x04", "doc.docx", None, "input[0].content[0]")
    assert (e.code, e.param) == ("unsupported_value", "input[0].content[0]") and "'doc.docx'" in e.message
    e = error(files.file_text, b"abc", None, None, "input[0].content[0]")
    assert (e.code, e.param) == ("missing_required_parameter", "input[0].content[0].filename")


def test_text_length_limit(monkeypatch):
    monkeypatch.setattr(files, "MAX_FILE_CHARS", 10)
    assert files.file_text(b"x" * 10, "a.txt", None) == "x" * 10
    e = error(files.file_text, b"x" * 11, "a.txt", None)
    assert e.code == "file_too_large" and "11 characters" in e.message


# -- files.py: PDFs (made with pypdf here) ---------------------------------------------------


def test_pdf_text():
    data = pdf_bytes(["Quarterly report", "Revenue (EUR): 42"], ["Second page"])
    assert files.pdf_text(data) == "Quarterly report\nRevenue (EUR): 42\n\nSecond page"
    assert files.file_text(data, "r.pdf", None) == files.pdf_text(data)
    assert files.file_text(data, None, "application/pdf") == files.pdf_text(data)
    # pages without text are skipped
    assert files.pdf_text(pdf_bytes(["one"], [], ["three"])) == "one\n\nthree"
    # an empty user password opens like no password
    assert files.pdf_text(pdf_bytes(["open"], password="")) == "open"


def test_bad_pdfs(monkeypatch):
    for data, why in [
        (b"%PDF-1.4 garbage", "could not be parsed"),
        (b"not a pdf", "could not be parsed"),
        (pdf_bytes(["secret"], password="pw"), "encrypted"),
        (pdf_bytes([], []), "no text layer"),
    ]:
        e = error(files.file_text, data, "x.pdf", None, "input[1].content[0]")
        assert (e.code, e.param) == ("invalid_file", "input[1].content[0]"), data[:20]
        assert why in e.message
    monkeypatch.setattr(files, "MAX_PDF_PAGES", 1)
    e = error(files.pdf_text, pdf_bytes(["a"], ["b"]))
    assert e.code == "file_too_large" and "2 pages" in e.message


def test_file_block():
    part = SimpleNamespace(type="input_file", filename="notes.md", file_data=b64("# Notes\nhi"), file_id=None, file_url=None)
    assert files.file_block(part, "p") == '<file name="notes.md">\n# Notes\nhi\n</file>'
    part = SimpleNamespace(filename=None, file_data=data_url("text/plain", "x"))
    assert files.file_block(part, "p") == '<file name="file">\nx\n</file>'
    assert files.render_file('a"b\n.txt', "t") == "<file name=\"a'b .txt\">\nt\n</file>"
    for fields, param, code in [
        ({"file_id": "file-1"}, "p.file_id", "unsupported_value"),
        ({"file_url": "https://example.com/a.pdf"}, "p.file_url", "unsupported_value"),
        ({}, "p.file_data", "missing_required_parameter"),
    ]:
        e = error(files.file_block, SimpleNamespace(**({"filename": "a.txt", "file_data": None, "file_id": None, "file_url": None} | fields)), "p")
        assert (e.param, e.code) == (param, code)


# -- chat.py: messages ------------------------------------------------------------------------


def test_image_parts_reach_the_chat_request():
    r = request(user(text("What is this?"), image(detail="low")))
    [message] = chat_messages(None, r.input)
    assert message == {"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": PNG}},  # detail has no effect: not passed on
    ]}
    for detail in ("high", "auto", "original"):
        assert chat_messages(None, request(user(image(detail=detail))).input).pop()["content"][0]["image_url"] == {"url": PNG}


def test_images_on_a_text_only_model_are_a_400():
    r = request([{"role": "user", "content": "hi"}, *user(text("look"), image())])
    e = error(chat_messages, None, r.input, accepts_images=False)
    assert (e.param, e.code) == ("input[1].content[1]", "unsupported_value")
    assert "does not accept images" in e.message
    assert chat_messages(None, request("hi").input, accepts_images=False)  # text is fine


def test_image_file_id_is_a_400():
    e = error(chat_messages, None, request(user({"type": "input_image", "file_id": "file-1", "detail": "auto"})).input)
    assert (e.param, e.code) == ("input[0].content[0].file_id", "unsupported_value") and "Files API" in e.message


def test_files_in_messages_become_text():
    r = request(user(text("Summarize:"), file("notes.md", data_url("text/markdown", "# Notes")), text("Thanks.")))
    assert chat_messages(None, r.input) == [
        {"role": "user", "content": 'Summarize:\n<file name="notes.md">\n# Notes\n</file>\nThanks.'}
    ]
    # text parts keep joining as they are; a lone file is its block
    assert chat_messages(None, request(user(text("a"), text("b"))).input)[0]["content"] == "ab"
    assert chat_messages(None, request(user(file("a.txt", b64("x")))).input)[0]["content"] == '<file name="a.txt">\nx\n</file>'
    pdf = file("r.pdf", data_url("application/pdf", pdf_bytes(["Hello PDF"])))
    assert chat_messages(None, request(user(pdf)).input)[0]["content"] == '<file name="r.pdf">\nHello PDF\n</file>'
    # with an image the parts stay parts, the file as a text part of its own
    parts = chat_messages(None, request(user(image(), file("a.txt", b64("x")))).input)[0]["content"]
    assert parts == [{"type": "image_url", "image_url": {"url": PNG}}, {"type": "text", "text": '<file name="a.txt">\nx\n</file>'}]


def test_file_errors_name_the_part():
    e = error(chat_messages, None, request([{"role": "user", "content": "hi"}, *user(text("x"), file("a.exe", b64("MZ")))]).input)
    assert (e.param, e.code) == ("input[1].content[1]", "unsupported_value")
    e = error(chat_messages, None, request(user(file("a.txt", "%%%"))).input)
    assert e.param == "input[0].content[0].file_data"


# -- chat.py: tool outputs --------------------------------------------------------------------

CALL = {"type": "function_call", "call_id": "c1", "name": "screenshot", "arguments": "{}"}


def output(*parts):
    return {"type": "function_call_output", "call_id": "c1", "output": list(parts)}


def test_tool_outputs_keep_images_and_files():
    r = request([*user(text("hi")), CALL, output(text("Here:"), {"type": "input_image", "image_url": PNG})])
    tool = chat_messages(None, r.input)[-1]
    assert tool == {"role": "tool", "tool_call_id": "c1", "content": [
        {"type": "text", "text": "Here:"}, {"type": "image_url", "image_url": {"url": PNG}},
    ]}
    r = request([*user(text("hi")), CALL, output(text("log:"), {"type": "input_file", "filename": "out.log", "file_data": b64("ok")})])
    assert chat_messages(None, r.input)[-1]["content"] == 'log:\n<file name="out.log">\nok\n</file>'
    # text-only outputs are the string they always were
    assert chat_messages(None, request([*user(text("hi")), CALL, output(text("a"), text("b"))]).input)[-1]["content"] == "ab"
    # custom tool outputs too
    r = request([*user(text("hi")), {"type": "custom_tool_call", "call_id": "c2", "name": "shot", "input": "x"},
                 {"type": "custom_tool_call_output", "call_id": "c2", "output": [image()]}])
    assert chat_messages(None, r.input)[-1]["content"] == [{"type": "image_url", "image_url": {"url": PNG}}]


def test_tool_output_errors_name_the_part():
    r = request([*user(text("hi")), CALL, output(text("a"), {"type": "input_image", "image_url": PNG})])
    e = error(chat_messages, None, r.input, accepts_images=False)
    assert (e.param, e.code) == ("input[2].output[1]", "unsupported_value")
    r = request([*user(text("hi")), CALL, output({"type": "input_file", "file_id": "file-1"})])
    assert error(chat_messages, None, r.input).param == "input[2].output[0].file_id"
    r = request([*user(text("hi")), CALL, output({"type": "input_image", "file_id": "file-1"})])
    assert error(chat_messages, None, r.input).param == "input[2].output[0].file_id"


def test_inline_files_extracts_once_and_renders_the_same():
    items = request([
        *user(text("see"), file("a.pdf", data_url("application/pdf", pdf_bytes(["PDF text"])))),
        CALL,
        output(text("log:"), {"type": "input_file", "filename": "out.log", "file_data": b64("ok")}),
        *user(text("plain")),
    ]).input
    assert has_files(items) and not has_files(request("hi").input)
    inlined = inline_files(items)
    assert not has_files(inlined)
    assert inlined[1] is items[1] and inlined[3] is items[3]  # items without files are kept as they are
    assert chat_messages(None, inlined) == chat_messages(None, items)
    assert chat_messages(None, inlined)[0]["content"] == 'see\n<file name="a.pdf">\nPDF text\n</file>'
    # errors name the part there too
    bad = request([*user(text("x")), *user(file("a.txt", b64(b"\xff")))]).input
    assert error(inline_files, bad).param == "input[1].content[0]"


# -- the vision checkpoint ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def vision(tmp_path_factory):
    from vllm_responses.demo_model import build, vision

    base = build.build(tmp_path_factory.mktemp("vision_base"))
    return vision.build_vision(tmp_path_factory.mktemp("vision"), base.outdir), base.outdir


def test_vision_checkpoint(vision):
    from safetensors.numpy import load_file
    from transformers import AutoProcessor, AutoTokenizer

    from vllm_responses.demo_model import vision as v

    result, base = vision
    out = result.outdir
    config = json.loads((out / "config.json").read_text())
    base_config = json.loads((base / "config.json").read_text())
    assert config["architectures"] == ["LlavaForConditionalGeneration"]
    from tokenizers import Tokenizer

    base_vocab = Tokenizer.from_file(str(base / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    assert config["image_token_index"] == result.image_token_id == base_vocab  # the id after the last one
    assert config["text_config"]["vocab_size"] == result.vocab_size == max(base_config["vocab_size"], base_vocab + 1)
    assert config["text_config"]["hidden_size"] == base_config["hidden_size"]

    # the language model is the demo model's, row for row; the image token's rows are zero
    weights, base_weights = load_file(str(out / "model.safetensors")), load_file(str(base / "model.safetensors"))
    for name, value in base_weights.items():
        mine = weights["lm_head.weight" if name == "lm_head.weight" else "model.language_model." + name.removeprefix("model.")]
        assert (mine[: value.shape[0]] == value).all(), name
    assert not weights["model.language_model.embed_tokens.weight"][result.image_token_id].any()
    assert not weights["model.multi_modal_projector.linear_2.weight"].any() and not weights["model.multi_modal_projector.linear_2.bias"].any()

    # the processor turns one image into IMAGE_TOKENS placeholder tokens
    processor = AutoProcessor.from_pretrained(out)
    from PIL import Image

    batch = processor(text="<image>\nHello", images=[Image.new("RGB", (100, 60))], return_tensors="np")
    assert list(batch["input_ids"][0]).count(result.image_token_id) == v.IMAGE_TOKENS == result.image_tokens == 4
    assert batch["pixel_values"].shape == (1, 3, v.IMAGE_SIZE, v.IMAGE_SIZE)

    # the chat template writes <image> for image parts and is the demo template otherwise
    tok = AutoTokenizer.from_pretrained(out)
    base_tok = AutoTokenizer.from_pretrained(base)
    text_only = [{"role": "user", "content": [{"type": "text", "text": "Hello there!"}]}]
    assert tok.apply_chat_template(text_only, tokenize=False, add_generation_prompt=True) == \
        base_tok.apply_chat_template(text_only, tokenize=False, add_generation_prompt=True)
    with_image = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hello there!"}]}]
    prompt = tok.apply_chat_template(with_image, tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user\n<image>\nHello there!<|im_end|>" in prompt
    assert prompt.endswith("<|scenario_default|>")  # scenario selection still reads the text
    tool = [*text_only, {"role": "assistant", "content": "", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "content": [{"type": "text", "text": "shot:"}, {"type": "image"}]}]
    assert "<tool_response>\nshot:\n<image>\n</tool_response>" in tok.apply_chat_template(tool, tokenize=False, add_generation_prompt=True)
    assert (out / "chat_template.jinja").read_text() == tok.chat_template


def test_vision_build_is_deterministic(vision, tmp_path):
    from vllm_responses.demo_model.build import checkpoint_digest
    from vllm_responses.demo_model.vision import build_vision

    result, base = vision
    again = build_vision(tmp_path / "again", base)
    assert checkpoint_digest(again.outdir) == checkpoint_digest(result.outdir)
    with pytest.raises(ValueError, match="not a demo checkpoint"):
        build_vision(tmp_path / "twice", again.outdir)


def test_vision_template_needs_the_text_of_macro():
    from vllm_responses.demo_model.vision import vision_template

    with pytest.raises(ValueError, match="text_of"):
        vision_template("{{ messages }}")
