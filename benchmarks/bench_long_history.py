"""Long-history time to first event: a Codex-shaped turn of ≈50k tokens, warm caches.

Codex resends its whole history every turn. This measures one such turn (instructions,
tools, a tool loop of ``--turns`` steps; tests/long_history.py) on one server started with
the users' command, three ways, round after round in rotating order:

- ours: ``POST /v1/responses`` with the Responses body, as Codex sends it;
- chat: ``POST /v1/chat/completions`` with the chat messages our adapter makes of it
  (``vllm_responses.request.chat``), so the template renders the same prompt;
- floor: ``POST /v1/completions`` with that prompt as token ids (vLLM's ``/tokenize`` of the
  same messages): no rendering, no tokenizing, only the engine and HTTP.

Every request asks for ``--tokens`` output tokens and streams. The first requests warm the
engine's prefix cache (and our prompt cache); then each round measures all three. Printed:
medians over rounds of time to first event (first SSE data line), time to the end of the
stream, and the API process's CPU time per request; each target's time above the floor,
and ours/chat of those. ``--profile`` then records the API process with py-spy during
``--profile-requests`` requests of ours and of chat and prints where its time went
(inclusive share of samples per function, idle threads excluded).

    python benchmarks/bench_long_history.py --turns 50 --rounds 15

The benchmark prints figures; it asserts nothing about them.
"""

import argparse
import collections
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from long_history import codex_body
from server import Server

from vllm_responses.request import chat, protocol


def chat_body(ours: dict, tokens: int, stream: bool = True) -> dict:
    """The ``/v1/chat/completions`` body whose prompt is the one our route renders of ``ours``."""
    request = protocol.parse_request(json.dumps(ours).encode())
    body = {
        "model": "demo", "messages": chat.chat_messages(request.get("instructions"), request.input),
        "tools": chat.chat_tools(request.tools).tools, "tool_choice": "auto", "parallel_tool_calls": False,
        "reasoning_effort": "medium", "max_completion_tokens": tokens, "stream": stream,
    }
    return body | {"stream_options": {"include_usage": True}} if stream else body


def bodies(turns: int, tokens: int, base_url: str) -> dict[str, tuple[str, dict]]:
    """The three requests of one turn, carrying the same prompt."""
    ours = codex_body(turns, max_output_tokens=tokens)
    chat_completion = chat_body(ours, tokens)
    r = httpx.post(f"{base_url}/tokenize", json={"model": "demo", "messages": chat_completion["messages"], "tools": chat_completion["tools"],
                                                 "add_generation_prompt": True}, timeout=120)
    r.raise_for_status()
    ids = r.json()["tokens"]
    floor = {"model": "demo", "prompt": ids, "max_tokens": tokens, "stream": True, "stream_options": {"include_usage": True}}
    return {"ours": ("/v1/responses", ours), "chat": ("/v1/chat/completions", chat_completion), "floor": ("/v1/completions", floor)}


def one(client: httpx.Client, path: str, body: bytes, api: psutil.Process) -> dict:
    """Time to the first SSE data line, to the end, and the API process's CPU meanwhile."""
    cpu0 = sum(api.cpu_times()[:2])
    t0 = time.perf_counter()
    first = None
    prompt_tokens = None
    with client.stream("POST", path, content=body, headers={"content-type": "application/json"}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data:"):
                continue
            if first is None:
                first = time.perf_counter() - t0
            data = line[5:].strip()
            if data == "[DONE]":
                continue
            event = json.loads(data)
            usage = event.get("usage") or (event.get("response") or {}).get("usage")
            if usage:
                prompt_tokens = usage.get("prompt_tokens", usage.get("input_tokens"))
    total = time.perf_counter() - t0
    return {"ttfe_ms": first * 1e3, "total_ms": total * 1e3, "api_cpu_ms": (sum(api.cpu_times()[:2]) - cpu0) * 1e3, "prompt_tokens": prompt_tokens}


# Where a sample's time goes: the first of these found walking its stack from the leaf up.
CATEGORIES = [
    ("tokenize (vLLM: the rendered prompt)", ("_tokenize_prompt (", "_encode_plus (")),
    ("prompt cache (ours)", ("(prompt_cache.py",)),
    ("render (chat template)", ("apply_chat_template (", "render_jinja_template (")),
    ("chat messages (vLLM's parse)", ("parse_chat_messages", "_parse_chat_message")),
    ("detokenize outputs", ("process_outputs (", "decode_next (")),
    ("engine client (submit)", ("add_request (", "EngineCoreClient", "encode (serial_utils")),
    ("request validation (ours)", ("(protocol.py", "(validation.py", "(parameters.py")),
    ("chat request validation (vLLM)", ("model_validate (", "ChatCompletionRequest", "(protocol.py")),
    ("history, chat messages (ours)", ("(history.py", "(chat.py", "(items.py")),
    ("store", ("(sqlite.py", "(redis.py", "(store")),
    ("events, SSE (ours)", ("(stream.py", "(sse.py", "(service.py")),
    ("JSON", ("loads (", "dumps (", "json")),
    ("HTTP (uvicorn, starlette)", ("(httptools_impl.py", "(h11_impl.py", "(routing.py", "(responses.py", "(requests.py")),
]
# Leaves of threads that wait (in C, so py-spy shows the Python frame that called it): the
# event loop in its selector, pool workers on their queues, locks, sockets.
IDLE = ("select (", "wait (", "epoll", "poll (", "sleep (", "_recv (", "recv_multipart", "get (queue.py", "acquire (", "_worker (", "Runner.run (")


def profile(client: httpx.Client, api: psutil.Process, path: str, body: bytes, requests: int, raw: Path) -> tuple[dict[str, float], float]:
    """py-spy's samples of the API process during ``requests`` requests (kept in ``raw``, py-spy's
    collapsed stacks): the share of each category among non-idle samples, and those samples as
    ms per request (threads waiting for the GIL or a CPU count as busy: on a loaded machine
    this exceeds the process's CPU time; the shares are what to read)."""
    rate = 250
    spy = subprocess.Popen(
        [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(api.pid), "--rate", str(rate), "--format", "raw",
         "--threads", "--output", str(raw), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    time.sleep(2)
    for _ in range(requests):
        one(client, path, body, api)
    spy.send_signal(2)
    spy.wait(60)
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")[1:]  # [0]: the thread
        if not frames or any(idle in frames[-1] for idle in IDLE):
            continue
        category = next((name for f in reversed(frames) for name, marks in CATEGORIES if any(m in f for m in marks)), "other")
        counts[category] += int(n)
    total = sum(counts.values())
    return {name: n / total for name, n in counts.most_common()}, total / rate * 1e3 / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=50, help="tool-loop steps in the history (50: ≈ 50k tokens)")
    parser.add_argument("--tokens", type=int, default=2, help="output tokens per request")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="then py-spy the API process during ours and chat")
    parser.add_argument("--profile-requests", type=int, default=10)
    parser.add_argument("--profile-dir", type=Path, default=Path(tempfile.gettempdir()), help="where py-spy's raw stacks are kept")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server (e.g. VLLM_RESPONSES_PROMPT_CACHE_MB=0)")
    parser.add_argument("--url", help="measure this server instead of starting one (its first process must be local for CPU figures)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    log = Path(tempfile.mkdtemp(prefix="bench-long-")) / "server.log"
    env = dict(kv.split("=", 1) for kv in args.env)
    server = Server(plugin=True, log_path=log, env=env) if not args.url else None
    try:
        if server is not None:
            server.wait_ready()
        base_url = args.url or server.base_url  # type: ignore[union-attr]
        api = psutil.Process(server.proc.pid) if server is not None else psutil.Process()
        targets = {name: (path, json.dumps(body).encode()) for name, (path, body) in bodies(args.turns, args.tokens, base_url).items()}
        print(f"history: {args.turns} steps, Responses body {len(targets['ours'][1]):,} bytes; server log {log}", flush=True)
        results: dict[str, list[dict]] = {name: [] for name in targets}
        with httpx.Client(base_url=base_url, timeout=600) as client:
            for _ in range(args.warmup):
                for name, (path, body) in targets.items():
                    one(client, path, body, api)
            names = list(targets)
            for r in range(args.rounds):
                order = names[r % 3:] + names[: r % 3]
                for name in order:
                    results[name].append(one(client, *targets[name], api))
            summary = {
                name: {key: statistics.median(m[key] for m in runs) for key in ("ttfe_ms", "total_ms", "api_cpu_ms")} | {"prompt_tokens": runs[-1]["prompt_tokens"]}
                for name, runs in results.items()
            }
            floor = summary["floor"]
            print(f"\n{'target':<8} {'prompt tokens':>13} {'TTFE p50 ms':>12} {'above floor':>12} {'total p50 ms':>13} {'above floor':>12} {'API CPU ms':>11}")
            for name, s in summary.items():
                print(
                    f"{name:<8} {s['prompt_tokens'] or 0:>13,} {s['ttfe_ms']:>12.1f} {s['ttfe_ms'] - floor['ttfe_ms']:>12.1f} "
                    f"{s['total_ms']:>13.1f} {s['total_ms'] - floor['total_ms']:>12.1f} {s['api_cpu_ms']:>11.1f}"
                )
            for key in ("ttfe_ms", "total_ms"):
                above_chat = summary["chat"][key] - floor[key]
                above_ours = summary["ours"][key] - floor[key]
                ratio = above_ours / above_chat if above_chat > 0 else float("nan")
                print(f"ours above floor / chat above floor ({key[:-3]}): {ratio:.2f}x ({above_ours:.1f} / {above_chat:.1f} ms)")
            profiles = {}
            if args.profile:
                for name in ("ours", "chat"):
                    shares, busy_ms = profile(client, api, *targets[name], requests=args.profile_requests, raw=args.profile_dir / f"long-history-{name}.txt")
                    profiles[name] = {"busy_ms_per_request": busy_ms, "shares": shares}
                    print(f"\nwhere the API process's busy time goes, {name}: {busy_ms:.0f} ms of samples per request (py-spy, non-idle)")
                    for category, share in shares.items():
                        print(f"  {share * 100:5.1f}%  {busy_ms * share:7.1f} ms  {category}")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"turns": args.turns, "tokens": args.tokens, "rounds": args.rounds, "summary": summary, "runs": results, "profiles": profiles}, indent=1))
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
