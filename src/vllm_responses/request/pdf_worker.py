"""The process one PDF is read in (``python -m vllm_responses.request.pdf_worker MEMORY_BYTES CPU_SECONDS``).

A PDF's cost is not bounded by its size (one compressed content stream shared by every page
is interpreted once per page), and pypdf cannot be interrupted: reading it in a process of
its own lets :mod:`.file_parsing` kill it at its deadline, caps its memory (``RLIMIT_AS``)
and its CPU (``RLIMIT_CPU``, should the parent die), keeps the API process's GIL and thread
pool free, and runs at a low priority. Reads the PDF's bytes from stdin, writes one JSON
object to stdout: ``{"text": ...}`` or ``{"message": ..., "code": ...}`` (a 400 to give).
"""

import os
import resource
import sys

import orjson


def main() -> None:
    memory, cpu = int(sys.argv[1]), int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    os.nice(10)
    data = sys.stdin.buffer.read()
    from ..common.errors import APIError
    from .files import pdf_text

    try:
        out = {"text": pdf_text(data)}
    except APIError as exc:
        out = {"message": exc.message, "code": exc.code}
    except MemoryError:
        out = {"message": "", "code": "memory"}
    sys.stdout.buffer.write(orjson.dumps(out))


if __name__ == "__main__":
    main()
