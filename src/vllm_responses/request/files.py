"""``input_file`` parts as the text a model reads: decoding, checks and text extraction.

Pure (no engine, no I/O beyond the bytes given): :mod:`.chat` calls :func:`file_block` for
every ``input_file`` part, in a message or in a tool call's output; the server reads a
request's files through :mod:`.file_parsing`, which reads PDFs in a process of its own.

- Only ``file_data`` is read: a base64 ``data:`` URL (``data:application/pdf;base64,…``),
  a plain ``data:`` URL, or raw base64, as OpenAI accepts. ``file_id`` (there is no Files
  API here) and ``file_url`` (this server downloads no files) are refused.
- The kind is decided by the file name's extension and the data URL's MIME type:
  PDFs (``.pdf`` / ``application/pdf``) become their extracted text (``pypdf``), pages
  separated by a blank line; text-like files (plain text, Markdown, JSON, CSV, YAML, XML,
  HTML, source code, …: :data:`TEXT_EXTENSIONS`, ``text/*`` and :data:`TEXT_MIME_TYPES`)
  must be UTF-8 (a BOM is dropped) without NUL bytes and are given as they are. Anything
  else is refused.
- The model sees :func:`render_file`: the text between ``<file name="…">`` and ``</file>``
  lines.
- Limits (:data:`MAX_FILE_BYTES`, :data:`MAX_FILE_CHARS`, :data:`MAX_PDF_PAGES`) are
  checked before the work they bound; each breach is a 400 naming the part.
"""

import base64
import binascii
import io
import re
import urllib.parse
from pathlib import PurePosixPath

from ..common.errors import APIError, invalid_request

MAX_FILE_BYTES = 10 * 1024 * 1024  # one decoded file
MAX_FILE_CHARS = 1_000_000  # the text one file gives the model (~250k tokens of English)
MAX_PDF_PAGES = 500

TEXT_EXTENSIONS = frozenset(
    {
        "txt",
        "text",
        "md",
        "markdown",
        "rst",
        "adoc",
        "org",
        "tex",
        "log",
        "csv",
        "tsv",
        "json",
        "jsonl",
        "ndjson",
        "yaml",
        "yml",
        "toml",
        "ini",
        "cfg",
        "conf",
        "env",
        "properties",
        "xml",
        "html",
        "htm",
        "xhtml",
        "css",
        "scss",
        "sass",
        "less",
        "svg",
        "py",
        "pyi",
        "ipynb",
        "js",
        "mjs",
        "cjs",
        "jsx",
        "ts",
        "tsx",
        "java",
        "kt",
        "kts",
        "scala",
        "groovy",
        "gradle",
        "c",
        "h",
        "cc",
        "cpp",
        "cxx",
        "hpp",
        "hh",
        "hxx",
        "m",
        "mm",
        "cs",
        "fs",
        "go",
        "rs",
        "rb",
        "php",
        "pl",
        "pm",
        "lua",
        "r",
        "jl",
        "swift",
        "dart",
        "ex",
        "exs",
        "erl",
        "hrl",
        "hs",
        "ml",
        "mli",
        "clj",
        "cljs",
        "elm",
        "vue",
        "svelte",
        "sh",
        "bash",
        "zsh",
        "fish",
        "ps1",
        "bat",
        "cmd",
        "sql",
        "graphql",
        "gql",
        "proto",
        "thrift",
        "diff",
        "patch",
        "dockerfile",
        "makefile",
        "cmake",
        "mk",
        "tf",
        "hcl",
        "nix",
        "bzl",
        "vim",
    }
)
# Files whose names alone say they are text.
TEXT_NAMES = frozenset({"dockerfile", "makefile", "readme", "license", "changelog", "gemfile", "procfile", "notice"})
TEXT_MIME_TYPES = frozenset(
    {
        "application/json",
        "application/ld+json",
        "application/x-ndjson",
        "application/xml",
        "application/yaml",
        "application/x-yaml",
        "application/toml",
        "application/javascript",
        "application/x-javascript",
        "application/typescript",
        "application/x-python",
        "application/x-python-code",
        "application/x-sh",
        "application/x-shellscript",
        "application/sql",
        "application/csv",
        "application/x-tex",
        "application/xhtml+xml",
        "image/svg+xml",
        "application/x-ipynb+json",
        "application/graphql",
    }
)
PDF_MIME_TYPE = "application/pdf"

_DATA_URL = re.compile(r"data:(?P<mime>[^;,]*)(?P<params>(?:;[^;,]*)*),(?P<data>.*)", re.DOTALL | re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")


def file_block(part: object, param: str) -> str:
    """The text the model reads for one ``input_file`` part (``param`` names the part in
    errors, e.g. ``input[0].content[1]``)."""
    filename, data, mime = file_input(part, param)
    return render_file(filename or "file", file_text(data, filename, mime, param))


def file_input(part: object, param: str) -> tuple[str | None, bytes, str | None]:
    """An ``input_file`` part's file name, bytes and ``data:`` URL MIME type, checked."""
    if getattr(part, "file_id", None):
        raise invalid_request(
            "Files by `file_id` are not supported: this server has no Files API. Send the file's content "
            "in `file_data` (base64, or a base64 `data:` URL) with its `filename`.",
            param=f"{param}.file_id",
            code="unsupported_value",
        )
    if getattr(part, "file_url", None):
        raise invalid_request(
            "Files by `file_url` are not supported: this server downloads no files. Send the file's content "
            "in `file_data` (base64, or a base64 `data:` URL) with its `filename`.",
            param=f"{param}.file_url",
            code="unsupported_value",
        )
    file_data = getattr(part, "file_data", None)
    if not file_data:
        raise invalid_request(
            "An `input_file` part needs `file_data`: the file's content in base64 (or a base64 `data:` URL).",
            param=f"{param}.file_data",
            code="missing_required_parameter",
        )
    data, mime = decode_file_data(file_data, f"{param}.file_data")
    return getattr(part, "filename", None) or None, data, mime


def decode_file_data(file_data: str, param: str = "file_data") -> tuple[bytes, str | None]:
    """The bytes of ``file_data`` and the MIME type its ``data:`` URL names (None for raw
    base64 or a data URL without one)."""
    mime: str | None = None
    payload = file_data
    is_base64 = True
    if file_data[:5].lower() == "data:":
        match = _DATA_URL.fullmatch(file_data)
        if match is None:
            raise invalid_request("`file_data` is not a valid `data:` URL (no `,` before the data).", param=param)
        mime = match["mime"].strip().lower() or None
        params = [p.strip().lower() for p in match["params"].split(";") if p.strip()]
        is_base64 = "base64" in params
        payload = match["data"]
    if is_base64:
        payload = _WHITESPACE.sub("", payload)
        if len(payload) // 4 * 3 > MAX_FILE_BYTES + 3:  # checked before decoding
            raise _too_large(len(payload) // 4 * 3, param)
        try:
            data = base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise invalid_request(
                "`file_data` is not valid base64 (send the file base64-encoded, or as a base64 `data:` URL).",
                param=param,
            ) from None
    else:
        if len(payload) > 3 * MAX_FILE_BYTES:  # percent-encoding at most triples the size
            raise _too_large(len(payload), param)
        data = urllib.parse.unquote_to_bytes(payload)
    if len(data) > MAX_FILE_BYTES:
        raise _too_large(len(data), param)
    return data, mime


def file_kind(filename: str | None, mime: str | None) -> str | None:
    """``"pdf"``, ``"text"`` or None (not supported), from the name and the MIME type."""
    name = PurePosixPath((filename or "").replace("\\", "/")).name.lower()
    ext = name.rsplit(".", 1)[1] if "." in name else ""  # ".env" → "env"
    if ext == "pdf" or mime == PDF_MIME_TYPE:
        return "pdf"
    if ext in TEXT_EXTENSIONS or name in TEXT_NAMES:
        return "text"
    if mime is not None and (mime.startswith("text/") or mime in TEXT_MIME_TYPES):
        return "text"
    return None


def file_text(data: bytes, filename: str | None, mime: str | None, param: str = "input_file") -> str:
    """The text of a file (see the module docstring for what is accepted)."""
    kind = file_kind(filename, mime)
    if kind is None:
        if filename is None and mime is None:
            raise invalid_request(
                "An `input_file` needs a `filename` (or a `data:` URL with a MIME type) to tell what kind of file "
                "it is.",
                param=f"{param}.filename",
                code="missing_required_parameter",
            )
        what = f"'{filename}'" if filename else f"of type '{mime}'"
        raise invalid_request(
            f"The file {what} is not supported: this server reads PDFs and text files (plain text, Markdown, JSON, "
            "CSV, source code, …), given by their file name's extension or MIME type.",
            param=param,
            code="unsupported_value",
        )
    return checked_text(pdf_text(data, param) if kind == "pdf" else _utf8(data, filename, param), filename, param)


def checked_text(text: str, filename: str | None, param: str) -> str:
    """``text`` if a model may be given that much of one file."""
    if len(text) > MAX_FILE_CHARS:
        raise invalid_request(
            f"The file '{filename or 'file'}' has {len(text):,} characters of text, more than the {MAX_FILE_CHARS:,} "
            "this server gives a model for one file.",
            param=param,
            code="file_too_large",
        )
    return text


def pdf_text(data: bytes, param: str = "input_file") -> str:
    """The text of a PDF's pages, separated by blank lines."""
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise _pdf_error("it is encrypted with a password", param)
        if len(reader.pages) > MAX_PDF_PAGES:
            raise invalid_request(
                f"The PDF has {len(reader.pages)} pages, more than the {MAX_PDF_PAGES} this server reads from one "
                "file.",
                param=param,
                code="file_too_large",
            )
        pages: list[str] = []
        chars = 0
        for page in reader.pages:
            text = (page.extract_text() or "").strip()
            pages.append(text)
            chars += len(text)
            if chars > MAX_FILE_CHARS:
                break  # file_text reports it; no need to read the rest
    except APIError:
        raise
    except (PyPdfError, ValueError, TypeError, KeyError, AttributeError, IndexError, RecursionError) as exc:
        raise _pdf_error(f"it could not be parsed ({type(exc).__name__}: {exc})", param) from None
    text = "\n\n".join(p for p in pages if p)
    if not text:
        raise _pdf_error(
            "it has no text layer (a scanned PDF?); send its pages as `input_image` parts to a vision model instead",
            param,
        )
    return text


def render_file(filename: str, text: str) -> str:
    """What the model reads for a file: its text between ``<file name="…">`` and ``</file>``."""
    name = filename.replace('"', "'").replace("\n", " ")
    return f'<file name="{name}">\n{text}\n</file>'


def _utf8(data: bytes, filename: str | None, param: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid_request(
            f"The file '{filename or 'file'}' is not valid UTF-8 text (byte {exc.start}); text files must be UTF-8.",
            param=param,
            code="unsupported_value",
        ) from None
    if "\x00" in text:
        raise invalid_request(
            f"The file '{filename or 'file'}' holds NUL bytes: it is binary, not text.",
            param=param,
            code="unsupported_value",
        )
    return text.removeprefix("\ufeff")


def _pdf_error(why: str, param: str) -> APIError:
    return invalid_request(f"The PDF could not be read: {why}.", param=param, code="invalid_file")


def _too_large(size: int, param: str) -> APIError:
    return invalid_request(
        f"The file is too large ({size:,} bytes): this server reads files of at most {MAX_FILE_BYTES:,} bytes "
        f"({MAX_FILE_BYTES // (1024 * 1024)} MiB).",
        param=param,
        code="file_too_large",
    )
