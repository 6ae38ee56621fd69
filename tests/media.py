"""Small media for multimodal tests (PNG data URLs, text PDFs, base64 file data), the request
parts that carry them, and their answers read back."""

import base64
import io

import httpx

from PIL import Image
from pypdf import PdfWriter
from pypdf.generic import DictionaryObject, NameObject, StreamObject

from vllm_responses.demo_model import scenarios as sc
from vllm_responses.demo_model.vision import IMAGE_TOKENS


def png_data_url(width: int = 64, height: int = 48, color: tuple[int, int, int] = (200, 30, 30)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def pdf_bytes(*pages: list[str], password: str | None = None) -> bytes:
    """A PDF with one page per argument, each showing its lines in Helvetica (a text layer
    pypdf extracts again); no lines at all gives a page without text."""
    writer = PdfWriter()
    for lines in pages:
        page = writer.add_blank_page(612, 792)
        font = DictionaryObject({
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
        })
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): writer._add_object(font)})}
        )
        escaped = [line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") for line in lines]
        ops = "BT /F1 12 Tf 72 720 Td 14 TL " + " ".join(f"({line}) Tj T*" for line in escaped) + " ET"
        stream = StreamObject()
        stream.set_data(ops.encode("latin-1"))
        page[NameObject("/Contents")] = writer._add_object(stream)
    if password is not None:
        writer.encrypt(password)
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def data_url(mime: str, data: bytes | str) -> str:
    return f"data:{mime};base64,{b64(data)}"


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


def pdf_bomb(pages: int = 500, stream_bytes: int = 1024 * 1024) -> bytes:
    """A hostile PDF, small on the wire and costly to read: one large Flate-compressed content
    stream of text operators, shared by every page, so a reader that extracts page by page
    decompresses and interprets it once per page (pypdf: 1-2 s a page here, so 10-20 minutes)."""
    writer = PdfWriter()
    font = DictionaryObject({
        NameObject("/Type"): NameObject("/Font"),
        NameObject("/Subtype"): NameObject("/Type1"),
        NameObject("/BaseFont"): NameObject("/Helvetica"),
    })
    resources = DictionaryObject({NameObject("/Font"): DictionaryObject({NameObject("/F1"): writer._add_object(font)})})
    op = b"BT /F1 1 Tf 0 0 Td () Tj ET\n"  # shows nothing: no text cap ends the read early
    stream = StreamObject()
    stream.set_data(b"BT /F1 12 Tf 0 0 Td (Bomb) Tj ET\n" + op * (stream_bytes // len(op)))
    contents = writer._add_object(stream.flate_encode())
    for _ in range(pages):
        page = writer.add_blank_page(10, 10)
        page[NameObject("/Resources")] = resources
        page[NameObject("/Contents")] = contents
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()
