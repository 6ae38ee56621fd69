"""A Codex-shaped session over HTTP and over WebSocket: time to first token and server CPU per turn.

Codex over HTTP resends its whole history every turn (``store: false``, reasoning sealed in
``encrypted_content``); over WebSocket mode it sends only the new items with
``previous_response_id``, which the server continues from the connection's last response.
This runs the same ``--turns``-turn session both ways on one server (the users' command),
alternating, ``--rounds`` times each, with a fresh seed per session so no session reuses
another's prefix cache. Every turn is a real model call: the model's output items go back
into the history as Codex replays them, each ``exec_command`` call gets a tool output of
real source text (tests/long_history.py), and a user message asks for the next step.

Per turn it records the time from sending the request to the first ``*.delta`` event
(time to first token), to the terminal event, the prompt size, and the CPU seconds the API
process and the engine process used meanwhile. Printed: per-turn medians for turns 1, 10,
20, 30 and the mean over all turns, both ways and their ratio.

    python benchmarks/bench_websocket.py --turns 30 --rounds 3 --json benchmarks/results/bench_websocket.json

The benchmark prints figures; it asserts nothing about them.
"""

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
from websockets.asyncio.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from long_history import TOOLS, codex_items, instructions_text, source_files, tool_output
from server import Server  # the test suite's launcher: the users' command

TERMINAL = {"response.completed", "response.incomplete", "response.failed", "error"}
NEXT = "Please list files in the next directory and go on."


class Cpu:
    """CPU seconds of the API process and of the engine (its child processes) since the last read."""

    def __init__(self, pid: int) -> None:
        self.api = psutil.Process(pid)
        self.last = self.read()

    def read(self) -> tuple[float, float]:
        engine = 0.0
        for child in self.api.children(recursive=True):
            try:
                engine += sum(child.cpu_times()[:2])
            except psutil.NoSuchProcess:
                pass
        return sum(self.api.cpu_times()[:2]), engine

    def since(self) -> tuple[float, float]:
        now = self.read()
        api, engine = now[0] - self.last[0], now[1] - self.last[1]
        self.last = now
        return api, engine


class Session:
    """One Codex-shaped session: what the client holds and what each turn adds."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.sources = source_files()
        self.instructions = instructions_text(random.Random(seed + 1_000_003), 60_000)
        self.history: list[dict[str, Any]] = []
        self.new: list[dict[str, Any]] = codex_items(0, seed)
        self.previous_id: str | None = None

    def body(self, incremental: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": "demo", "instructions": self.instructions, "tools": TOOLS, "tool_choice": "auto",
            "parallel_tool_calls": False, "reasoning": {"effort": "medium", "summary": "auto"}, "store": False,
            "include": ["reasoning.encrypted_content"], "max_output_tokens": 200,
        }
        if incremental and self.previous_id is not None:
            return {**body, "input": self.new, "previous_response_id": self.previous_id}
        return {**body, "input": [*self.history, *self.new]}

    def answered(self, response: dict[str, Any]) -> None:
        """The model's output goes into the history; the next turn's new items follow from it."""
        self.history += [*self.new, *response["output"]]
        self.previous_id = response["id"]
        self.new = [
            {"type": "function_call_output", "call_id": item["call_id"], "output": tool_output(self.rng, self.sources, self.rng.randint(1_250, 3_750))}
            for item in response["output"] if item["type"] == "function_call"
        ]
        self.new.append({"type": "message", "role": "user", "content": [{"type": "input_text", "text": NEXT}]})


def _turn_record(t0: float, first: float | None, response: dict[str, Any], cpu: Cpu, request_bytes: int) -> dict[str, Any]:
    end = time.perf_counter()
    api, engine = cpu.since()
    usage = response.get("usage") or {}
    return {
        "ttft_ms": ((first or end) - t0) * 1e3, "total_ms": (end - t0) * 1e3, "api_cpu_ms": api * 1e3, "engine_cpu_ms": engine * 1e3,
        "input_tokens": usage.get("input_tokens"), "cached_tokens": (usage.get("input_tokens_details") or {}).get("cached_tokens"),
        "request_bytes": request_bytes, "status": response.get("status"),
    }


def http_session(base_url: str, seed: int, turns: int, cpu: Cpu) -> list[dict[str, Any]]:
    session, records = Session(seed), []
    with httpx.Client(base_url=base_url, timeout=600) as client:
        for _ in range(turns):
            payload = json.dumps({**session.body(incremental=False), "stream": True}).encode()
            cpu.since()
            t0, first, response = time.perf_counter(), None, None
            with client.stream("POST", "/v1/responses", content=payload, headers={"content-type": "application/json"}) as r:
                r.raise_for_status()
                for line in r.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    event = json.loads(line[5:])
                    if first is None and event["type"].endswith(".delta"):
                        first = time.perf_counter()
                    if event["type"] in TERMINAL:
                        response = event.get("response")
            assert response is not None and response["status"] == "completed", response
            records.append(_turn_record(t0, first, response, cpu, len(payload)))
            session.answered(response)
    return records


async def ws_session(base_url: str, seed: int, turns: int, cpu: Cpu) -> list[dict[str, Any]]:
    session, records = Session(seed), []
    ws: ClientConnection
    async with connect(base_url.replace("http://", "ws://") + "/v1/responses", max_size=None) as ws:
        for _ in range(turns):
            payload = json.dumps({"type": "response.create", **session.body(incremental=True)})
            cpu.since()
            t0, first = time.perf_counter(), None
            await ws.send(payload)
            while True:
                event = json.loads(await ws.recv())
                if first is None and event["type"].endswith(".delta"):
                    first = time.perf_counter()
                if event["type"] in TERMINAL:
                    break
            response = event.get("response")
            assert response is not None and response["status"] == "completed", event
            records.append(_turn_record(t0, first, response, cpu, len(payload.encode())))
            session.answered(response)
    return records


def summarise(runs: list[list[dict[str, Any]]], turns: int) -> dict[str, Any]:
    per_turn = [
        {key: statistics.median(run[i][key] for run in runs) for key in ("ttft_ms", "total_ms", "api_cpu_ms", "engine_cpu_ms", "request_bytes")}
        | {"input_tokens": runs[-1][i]["input_tokens"], "cached_tokens": runs[-1][i]["cached_tokens"]}
        for i in range(turns)
    ]
    mean = {key: statistics.fmean(t[key] for t in per_turn) for key in ("ttft_ms", "total_ms", "api_cpu_ms", "engine_cpu_ms", "request_bytes")}
    return {"per_turn": per_turn, "mean": mean}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3, help="sessions each way (alternating)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    log = Path(tempfile.mkdtemp(prefix="bench-ws-")) / "server.log"
    server = Server(plugin=True, log_path=log)
    try:
        server.wait_ready()
        cpu = Cpu(server.proc.pid)
        http_session(server.base_url, 999, 2, cpu)  # warm-up: validators, templates, the engine's first steps
        asyncio.run(ws_session(server.base_url, 998, 2, cpu))
        runs: dict[str, list[list[dict[str, Any]]]] = {"http": [], "websocket": []}
        for r in range(args.rounds):
            for mode in (("http", "websocket") if r % 2 == 0 else ("websocket", "http")):
                seed = 10 * r + (0 if mode == "http" else 1)
                records = http_session(server.base_url, seed, args.turns, cpu) if mode == "http" else asyncio.run(ws_session(server.base_url, seed, args.turns, cpu))
                runs[mode].append(records)
                print(f"round {r + 1} {mode}: mean TTFT {statistics.fmean(x['ttft_ms'] for x in records):.1f} ms", flush=True)
        summary = {mode: summarise(mode_runs, args.turns) for mode, mode_runs in runs.items()}
        print(f"\n{args.turns}-turn Codex-shaped session, medians of {args.rounds} sessions each way (server log {log})")
        print(f"{'turn':>5} {'input tok':>9} {'cached':>7} | {'HTTP TTFT':>9} {'WS TTFT':>8} {'WS/HTTP':>7} | {'HTTP API CPU':>12} {'WS API CPU':>10} | {'HTTP req KB':>11} {'WS req KB':>9}")
        for i in sorted({0, 9, 19, args.turns - 1} & set(range(args.turns))):
            h, w = summary["http"]["per_turn"][i], summary["websocket"]["per_turn"][i]
            print(
                f"{i + 1:>5} {h['input_tokens'] or 0:>9,} {w['cached_tokens'] or 0:>7,} | {h['ttft_ms']:>9.1f} {w['ttft_ms']:>8.1f} {w['ttft_ms'] / h['ttft_ms']:>7.2f} | "
                f"{h['api_cpu_ms']:>12.1f} {w['api_cpu_ms']:>10.1f} | {h['request_bytes'] / 1024:>11.1f} {w['request_bytes'] / 1024:>9.1f}"
            )
        h, w = summary["http"]["mean"], summary["websocket"]["mean"]
        print(
            f"{'mean':>5} {'':>9} {'':>7} | {h['ttft_ms']:>9.1f} {w['ttft_ms']:>8.1f} {w['ttft_ms'] / h['ttft_ms']:>7.2f} | "
            f"{h['api_cpu_ms']:>12.1f} {w['api_cpu_ms']:>10.1f} | {h['request_bytes'] / 1024:>11.1f} {w['request_bytes'] / 1024:>9.1f}"
        )
        print(f"engine CPU per turn (mean): HTTP {h['engine_cpu_ms']:.1f} ms, WebSocket {w['engine_cpu_ms']:.1f} ms")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"turns": args.turns, "rounds": args.rounds, "summary": summary, "runs": runs}, indent=1))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
