"""Does a long request stall the event loop that streams everyone else's responses?

32 streams run without pause on one server (the users' command; each stream the demo's
never-ending scenario cut at ``--tokens``, restarted as it ends). Their inter-event gaps
(p50, p99, max) are measured three ways, ``--seconds`` each:

- ``alone``: only the streams;
- ``warm``: a Codex-shaped ≈47k-token request (tests/long_history.py, 45 tool-loop steps,
  the same body every time, ``max_output_tokens`` 1) arrives every second — a session's next turn with warm
  caches: the engine's prefix cache covers it, so the engine's extra work is tiny;
- ``warm-chat`` and ``warm-floor``: the same long prompt every second through
  ``/v1/chat/completions`` (vLLM's own rendering and tokenizing) and as token ids through
  ``/v1/completions`` (no rendering, no tokenizing: only the engine and HTTP), so that a reader
  sees how much of the stall is the engine's (a step that takes the long prompt) and how much
  the API process's;
- ``cold``: a new ≈55k-token history (56 steps) arrives every second (a fresh seed each
  time: nothing cached), longer than the server's context (``--max-model-len 49152``), so
  that the server parses, validates, renders and tokenizes all of it and then answers 400
  ``context_length_exceeded`` — the engine does no extra work at all, and what the streams
  feel is the API process's;
- ``cold-chat``: the same fresh histories through ``/v1/chat/completions`` (vLLM's own route
  renders and tokenizes them, and refuses them for length too): the same work done by
  upstream's code, for comparison.

The issue's target is gap p99 within 1.5x of ``alone`` while long requests arrive. Gaps are
measured per socket read (events in the same read count as gap 0), as bench_e2e does.

    python benchmarks/bench_stall.py --seconds 30 --json benchmarks/results/bench_stall.json

The benchmark prints figures; it asserts nothing about them.
"""

import argparse
import asyncio
import itertools
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_long_history import bodies, chat_body
from long_history import codex_body
from server import Server  # the test suite's launcher: the users' command

MAX_MODEL_LEN = 49_152
MODES = ["alone", "warm", "warm-chat", "warm-floor", "cold", "cold-chat"]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


async def stream_forever(session: aiohttp.ClientSession, url: str, tokens: int, until: float, gaps: list[float], counts: list[int]) -> None:
    body = {"model": "demo", "input": "Count forever.", "max_output_tokens": tokens, "stream": True}
    while time.perf_counter() < until:
        last = None
        async with session.post(url, json=body) as r:
            r.raise_for_status()
            async for chunk in r.content.iter_any():
                now = time.perf_counter()
                n = chunk.count(b"data: ")
                if n == 0:
                    continue
                if last is not None and now < until:
                    gaps.append(now - last)
                    gaps.extend([0.0] * (n - 1))
                last = now
                counts[0] += n


async def arrivals(session: aiohttp.ClientSession, base_url: str, payloads: list[tuple[str, bytes]], until: float, statuses: list[int]) -> None:
    """One long request per second (not waiting for the previous one), until ``until``."""
    pending: set[asyncio.Task] = set()

    async def one(path: str, payload: bytes) -> None:
        async with session.post(base_url + path, data=payload, headers={"content-type": "application/json"}) as r:
            await r.read()
            statuses.append(r.status)

    for i in itertools.count():
        if time.perf_counter() >= until:
            break
        task = asyncio.ensure_future(one(*payloads[i % len(payloads)]))
        pending.add(task)
        task.add_done_callback(pending.discard)
        await asyncio.sleep(1.0)
    await asyncio.gather(*pending)


def long_payloads(base_url: str, mode: str, seconds: float, turns: tuple[int, int], seed: int) -> list[tuple[str, bytes]]:
    """Made before the clock starts (building a history costs the load generator CPU)."""
    if mode in ("cold", "cold-chat"):
        histories = [codex_body(turns[1], seed=seed + i, max_output_tokens=1, stream=False) for i in range(int(seconds) + 1)]
        if mode == "cold-chat":
            return [("/v1/chat/completions", json.dumps(chat_body(h, 1, stream=False)).encode()) for h in histories]
        return [("/v1/responses", json.dumps(h).encode()) for h in histories]
    path, body = bodies(turns[0], 1, base_url)[{"warm": "ours", "warm-chat": "chat", "warm-floor": "floor"}[mode]]
    return [(path, json.dumps({**body, "stream": False} if path == "/v1/responses" else body).encode())]


async def phase(base_url: str, mode: str, streams: int, tokens: int, seconds: float, turns: tuple[int, int], seed: int = 0) -> dict:
    url = base_url + "/v1/responses"
    gaps: list[float] = []
    counts = [0]
    statuses: list[int] = []
    payloads = long_payloads(base_url, mode, seconds, turns, seed) if mode != "alone" else []
    connector = aiohttp.TCPConnector(limit=streams + 64, force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=900)) as session:
        if mode.startswith("warm"):  # the first of the warm requests fills the caches before the clock starts
            await arrivals(session, base_url, payloads, time.perf_counter() + 0.5, [])
        until = time.perf_counter() + seconds
        jobs = [stream_forever(session, url, tokens, until, gaps, counts) for _ in range(streams)]
        if payloads:
            jobs.append(arrivals(session, base_url, payloads, until, statuses))
        await asyncio.gather(*jobs)
    return {
        "mode": mode, "events": counts[0], "gap_p50_ms": pct(gaps, 0.5) * 1e3, "gap_p99_ms": pct(gaps, 0.99) * 1e3,
        "gap_max_ms": max(gaps, default=float("nan")) * 1e3, "long_requests": len(statuses),
        "long_statuses": sorted(set(statuses)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--warm-turns", type=int, default=45, help="tool-loop steps of the warm request (45: ≈ 47k tokens, within the context)")
    parser.add_argument("--cold-turns", type=int, default=56, help="tool-loop steps of the cold request (56: ≈ 55k tokens, beyond the context)")
    parser.add_argument("--rounds", type=int, default=2, help="each mode this often, in rotating order")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server (e.g. VLLM_RESPONSES_PROMPT_CACHE_MB=0)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=MODES, help="a subset of the modes (alone is always measured)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    log = Path(tempfile.mkdtemp(prefix="bench-stall-")) / "server.log"
    env = dict(kv.split("=", 1) for kv in args.env)
    server = Server(plugin=True, log_path=log, env=env, args=["--max-model-len", str(MAX_MODEL_LEN)])
    try:
        server.wait_ready()
        asyncio.run(phase(server.base_url, "alone", args.streams, args.tokens, 5, (args.warm_turns, args.cold_turns)))  # warm-up
        results = []
        modes = ["alone", *(m for m in args.modes if m != "alone")]
        for r in range(args.rounds):
            for mode in modes[r % len(modes):] + modes[: r % len(modes)]:
                result = phase(server.base_url, mode, args.streams, args.tokens, args.seconds, (args.warm_turns, args.cold_turns), seed=1_000 * (r + 1))
                out = asyncio.run(result) | {"round": r, "load_average": os.getloadavg()[0]}
                results.append(out)
                print(
                    f"round {r} {mode:<10} events {out['events']:>7}  gap p50 {out['gap_p50_ms']:6.2f} ms  p99 {out['gap_p99_ms']:7.2f} ms  "
                    f"max {out['gap_max_ms']:7.1f} ms  long requests {out['long_requests']} {out['long_statuses']}",
                    flush=True,
                )
        print(f"\n{args.streams} streams, {args.seconds:.0f} s per phase, medians over {args.rounds} rounds (server log {log})")
        summary = {}
        for mode in modes:
            # A phase that measured no gap (the machine froze through it) has no figures to count.
            runs = [x for x in results if x["mode"] == mode]
            runs = [x for x in runs if not math.isnan(x["gap_p99_ms"])] or runs
            summary[mode] = {k: statistics.median(x[k] for x in runs) for k in ("gap_p50_ms", "gap_p99_ms", "gap_max_ms", "events")}
        for mode in modes:
            s = summary[mode]
            ratio = s["gap_p99_ms"] / summary["alone"]["gap_p99_ms"]
            print(f"{mode:<10} gap p50 {s['gap_p50_ms']:6.2f} ms  p99 {s['gap_p99_ms']:7.2f} ms ({ratio:.2f}x alone)  max {s['gap_max_ms']:7.1f} ms  events {s['events']}")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"streams": args.streams, "tokens": args.tokens, "seconds": args.seconds, "warm_turns": args.warm_turns, "cold_turns": args.cold_turns,
                                             "summary": summary, "runs": results}, indent=1))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
