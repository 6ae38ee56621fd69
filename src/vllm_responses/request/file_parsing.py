"""The ``input_file`` parts of a request, read within its budget (issue 24: a 3 KB PDF could
cost a CPU-hour).

- Caps per request: how many files the prompt holds (its input and the history it continues)
  and their decoded bytes together (:class:`FileLimits`, from ``VLLM_RESPONSES_FILES_*``).
- A PDF is read in a process of its own (:mod:`.pdf_worker`), at most a few at a time, never
  on the event loop or its thread pool. All PDFs of one request share one budget of seconds;
  past it the process is killed (not waited on) and the request answers 400
  ``file_too_complex`` naming the part. Its memory is capped the same way. A client that
  leaves kills its parse too (the await is cancelled).
- A PDF's text (or its verdict) is kept in a small cache keyed by the SHA-256 of its bytes:
  a continuation resends the stored file and does not read it again, and a hostile PDF sent
  again is refused at once. The store keeps items as the client sent them (they are echoed
  by ``input_items``), so the text lives beside it, in memory, rather than in it.
"""

import asyncio
import hashlib
import math
import sys
import time
from collections import OrderedDict
from typing import Any

import orjson

from ..common.errors import invalid_request
from ..settings import FileLimits
from . import chat, files

PARSE_PROCESSES = 2  # PDFs read at once per API process; more wait their turn
CACHE_BYTES = 32 * 1024 * 1024  # text kept for PDFs already read (characters ~ bytes)


class _TextCache:
    """Least recently used PDF texts and refusals by content hash, bounded in characters."""

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self.size = 0
        self.entries: OrderedDict[bytes, tuple[str, str | None]] = OrderedDict()  # text or (message, code)

    def get(self, key: bytes) -> tuple[str, str | None] | None:
        entry = self.entries.get(key)
        if entry is not None:
            self.entries.move_to_end(key)
        return entry

    def put(self, key: bytes, entry: tuple[str, str | None]) -> None:
        if len(entry[0]) > self.max_chars or key in self.entries:
            return
        self.entries[key] = entry
        self.size += len(entry[0])
        while self.size > self.max_chars:
            _, (old, _) = self.entries.popitem(last=False)
            self.size -= len(old)


CACHE = _TextCache(CACHE_BYTES)
_SLOTS = asyncio.Semaphore(PARSE_PROCESSES)


async def inline_files(items: list[Any], limits: FileLimits) -> list[Any]:
    """``items`` with the text of every ``input_file`` part (see :func:`chat.inline_files`),
    within ``limits``."""
    found = chat.file_parts(items)
    if len(found) > limits.max_files:
        i, j, param, _ = found[limits.max_files]
        raise invalid_request(
            f"The input holds {len(found)} files, more than the {limits.max_files} this server reads for one request.",
            param=param,
            code="too_many_files",
        )
    budget = [limits.parse_s]  # seconds left to read this request's PDFs
    total = 0
    texts: dict[tuple[int, int], str] = {}
    for i, j, param, part in found:
        filename, data, mime = await asyncio.to_thread(files.file_input, part, param)  # base64 of up to 10 MiB
        total += len(data)
        if total > limits.max_bytes:
            raise invalid_request(
                f"The input's files hold {total:,} bytes or more, more than the {limits.max_bytes:,} this server reads "
                "for one request.",
                param=param,
                code="file_too_large",
            )
        if files.file_kind(filename, mime) == "pdf":
            text = files.checked_text(await _pdf_text(data, param, budget, limits), filename, param)
        else:  # UTF-8 checks of up to 10 MiB
            text = await asyncio.to_thread(files.file_text, data, filename, mime, param)
        texts[i, j] = files.render_file(filename or "file", text)
    return chat.with_file_texts(items, texts)


async def _pdf_text(data: bytes, param: str, budget: list[float], limits: FileLimits) -> str:
    key = await asyncio.to_thread(lambda: hashlib.sha256(data).digest())
    entry = CACHE.get(key)
    if entry is None:
        async with _SLOTS:  # the wait for a slot is not counted
            full = budget[0] >= limits.parse_s
            started = time.monotonic()
            entry = await _parse(data, budget[0], limits)
            budget[0] -= time.monotonic() - started
        if entry[1] != "file_too_complex" or full:  # a verdict on this PDF, not on the budget earlier files left
            CACHE.put(key, entry)
    text, code = entry
    if code is not None:
        raise invalid_request(text, param=param, code=code)
    return text


def _too_complex(limits: FileLimits, why: str) -> tuple[str, str]:
    return (
        f"The PDF is too complex to read: {why} (this server gives the files of one request "
        f"{limits.parse_s:g} s and {limits.parse_memory_bytes // (1024 * 1024)} MiB to be read).",
        "file_too_complex",
    )


async def _parse(data: bytes, left: float, limits: FileLimits) -> tuple[str, str | None]:
    """A PDF's text read in :mod:`.pdf_worker` within ``left`` seconds, or the 400 to give
    (message, code)."""
    if left <= 0:
        return _too_complex(limits, "the request's files used up the time to read them")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "vllm_responses.request.pdf_worker",
        str(limits.parse_memory_bytes),
        str(math.ceil(left) + 1),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(data), left)
    except TimeoutError:
        return _too_complex(limits, f"it took more than {limits.parse_s:g} s")
    finally:
        if process.returncode is None:  # timed out, or the client left: killed, not waited on
            process.kill()
            await asyncio.shield(process.wait())
    try:
        result = orjson.loads(out)
    except orjson.JSONDecodeError:  # killed by its CPU or memory limit
        return _too_complex(limits, "reading it ran out of time or memory")
    if result.get("code") == "memory":
        return _too_complex(limits, "it needs more memory")
    if "text" in result:
        return result["text"], None
    return result["message"], result["code"]
