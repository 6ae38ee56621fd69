"""The budget a request's files are read within (file_parsing.py, pdf_worker.py; issue 24):
a PDF bomb is refused with a 400 at its deadline, its process killed, the event loop free
meanwhile; caps on files per request; the text of a PDF already read is not read again."""

import asyncio
import json
import time

import pytest
from media import b64, data_url, pdf_bomb, pdf_bytes

from vllm_responses.request import file_parsing
from vllm_responses.common.errors import APIError
from vllm_responses.request.file_parsing import FileLimits, inline_files
from vllm_responses.request.protocol import parse_request
from vllm_responses.settings import Settings

BOMB = pdf_bomb()  # ~100 KB; pypdf alone takes about 1 s a page to read it, 500 pages


def items(*parts, messages=1):
    body = {"model": "demo", "input": [{"role": "user", "content": list(parts)} for _ in range(messages)]}
    return parse_request(json.dumps(body).encode()).input


def file(name, data):
    return {"type": "input_file", "filename": name, "file_data": data}


def refusal(limits, *parts, messages=1) -> APIError:
    with pytest.raises(APIError) as exc:
        asyncio.run(inline_files(items(*parts, messages=messages), limits))
    assert exc.value.status == 400
    return exc.value


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch):
    monkeypatch.setattr(file_parsing, "CACHE", file_parsing._TextCache(file_parsing.CACHE_BYTES))


@pytest.fixture
def spawned(monkeypatch):
    """The PDF reader processes started, as they are started."""
    processes = []
    real = asyncio.create_subprocess_exec

    async def spawn(*args, **kwargs):
        processes.append(await real(*args, **kwargs))
        return processes[-1]

    monkeypatch.setattr(asyncio, "create_subprocess_exec", spawn)
    return processes


def test_a_pdf_bomb_is_refused_at_its_deadline_and_its_process_killed(spawned):
    assert len(BOMB) < 200_000
    start = time.monotonic()
    e = refusal(FileLimits(parse_s=2), {"type": "input_text", "text": "hi"}, file("bomb.pdf", data_url("application/pdf", BOMB)))
    took = time.monotonic() - start
    print(f"bomb refused in {took:.2f} s")
    assert (e.code, e.param) == ("file_too_complex", "input[0].content[1]")
    assert "2 s" in e.message
    assert took < 15  # 2 s budget, the process started and killed; unbounded it takes minutes
    assert len(spawned) == 1 and spawned[0].returncode is not None  # killed and reaped
    # Sent again, it is refused at once, without a second reader.
    start = time.monotonic()
    assert refusal(FileLimits(parse_s=2), file("bomb.pdf", b64(BOMB))).code == "file_too_complex"
    assert time.monotonic() - start < 1 and len(spawned) == 1


def test_the_event_loop_runs_while_a_pdf_is_read():
    gaps = []

    async def main():
        async def tick():
            last = time.monotonic()
            while True:
                await asyncio.sleep(0.01)
                gaps.append(time.monotonic() - last)
                last = time.monotonic()

        ticker = asyncio.create_task(tick())
        try:
            with pytest.raises(APIError):
                await inline_files(items(file("bomb.pdf", b64(BOMB))), FileLimits(parse_s=2))
        finally:
            ticker.cancel()

    asyncio.run(main())
    print(f"{len(gaps)} ticks, longest gap {max(gaps) * 1000:.0f} ms")
    assert len(gaps) > 50 and max(gaps) < 1.0


def test_a_client_that_leaves_kills_the_read(spawned):
    async def main():
        task = asyncio.create_task(inline_files(items(file("bomb.pdf", b64(BOMB))), FileLimits(parse_s=60)))
        while not spawned:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert spawned[0].returncode is not None


def test_the_memory_of_a_read_is_capped():
    e = refusal(FileLimits(parse_memory_bytes=32 * 1024 * 1024), file("r.pdf", b64(pdf_bytes(["fine"]))))
    assert (e.code, e.param) == ("file_too_complex", "input[0].content[0]")


def test_a_pdf_already_read_is_not_read_again(spawned):
    pdf = b64(pdf_bytes(["Quarterly report"]))
    for _ in range(3):  # a continuation resends the stored file
        out = asyncio.run(inline_files(items(file("r.pdf", pdf)), FileLimits()))
        assert out[0].content[0].text == '<file name="r.pdf">\nQuarterly report\n</file>'
    assert len(spawned) == 1


def test_files_per_request_are_capped():
    note = file("n.txt", b64("x" * 2000))
    e = refusal(FileLimits(max_files=3), note, note, messages=2)
    assert (e.code, e.param) == ("too_many_files", "input[1].content[1]")
    e = refusal(FileLimits(max_bytes=5000), note, note, note)
    assert (e.code, e.param) == ("file_too_large", "input[0].content[2]")
    asyncio.run(inline_files(items(note, note), FileLimits(max_files=2, max_bytes=4000)))  # at the caps: read


def test_file_limits_are_settings():
    assert Settings.from_env({}).files == FileLimits()
    env = {
        "VLLM_RESPONSES_FILES_MAX_COUNT": "4",
        "VLLM_RESPONSES_FILES_MAX_BYTES": "2048",
        "VLLM_RESPONSES_FILE_PARSE_SECONDS": "2.5",
        "VLLM_RESPONSES_FILE_PARSE_MB": "256",
    }
    assert Settings.from_env(env).files == FileLimits(4, 2048, 2.5, 256 * 1024 * 1024)
    with pytest.raises(ValueError, match="VLLM_RESPONSES_FILE_PARSE_SECONDS"):
        Settings.from_env({"VLLM_RESPONSES_FILE_PARSE_SECONDS": "0"})
