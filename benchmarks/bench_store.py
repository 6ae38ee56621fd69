"""What the SQLite store costs the API process per response: ``--responses`` create + finish
pairs (a 128-token answer's record, one input item) through ``SQLiteStore``, ``--concurrency``
at a time, on a fresh file; the process's CPU time (event loop and store threads) per
response. Run it at 1 and at 64/256 to see what group commit saves under load.

    python benchmarks/bench_store.py --responses 3000 --concurrency 1 64 256

Prints figures; asserts nothing.
"""

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from vllm_responses.store.base import StoredResponse  # noqa: E402 - after the path
from vllm_responses.store.sqlite import SQLiteStore  # noqa: E402

TEXT = " ".join(str(k) for k in range(128))


def response(n: int, status: str = "in_progress") -> dict:
    output = [] if status == "in_progress" else [{
        "type": "message", "id": f"msg_{n}", "status": "completed", "role": "assistant",
        "content": [{"type": "output_text", "text": TEXT, "annotations": [], "logprobs": []}],
    }]
    return {"id": f"resp_{n:08d}", "object": "response", "created_at": 1_764_107_796, "status": status, "model": "demo",
            "output": output, "tools": [], "metadata": {}, "usage": None, "temperature": 1.0, "top_p": 1.0}


async def one(store: SQLiteStore, n: int) -> None:
    item = {"type": "message", "id": f"msg_in_{n}", "role": "user", "content": [{"type": "input_text", "text": "Count forever."}]}
    await store.create_response(StoredResponse(response(n), [item], owner="bench"))
    await asyncio.sleep(0)
    await store.finish_response(response(n, "completed"))


async def measure(responses: int, concurrency: int) -> tuple[float, float]:
    """CPU and wall µs per response."""
    store = SQLiteStore(Path(tempfile.mkdtemp(prefix="bench-store-")) / "responses.db")
    try:
        await one(store, 10**7)  # opens the file
        gate = asyncio.Semaphore(concurrency)

        async def limited(n: int) -> None:
            async with gate:
                await one(store, n)

        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(limited(n) for n in range(responses)))
        return (time.process_time() - cpu) / responses * 1e6, (time.perf_counter() - wall) / responses * 1e6
    finally:
        await store.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--responses", type=int, default=3000)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 64, 256])
    args = p.parse_args()
    for concurrency in args.concurrency:
        cpu, wall = asyncio.run(measure(args.responses, concurrency))
        print(f"{concurrency:>4} at a time: {cpu:6.0f} µs CPU per response (create + finish), {wall:6.0f} µs wall")


if __name__ == "__main__":
    main()
