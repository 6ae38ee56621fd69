"""Where the API process's CPU goes while it streams (issue 11.3): py-spy on the API process
of one server while ``--concurrency`` streams of ``--tokens`` tokens run back to back, for
ours and for upstream's Responses route (each on its own server, started with the users'
command), then every sample put in one category (the first that matches, from the leaf up)
and a table printed: socket writes, vLLM's output handler, the parsers, the event loop, the
store's and tokenizer's threads, request intake, middleware, our events and glue, upstream's
Responses layer.

    python benchmarks/profile_api.py --concurrency 64 256 [--seconds 30] [--raw-dir /tmp]

Shares, not absolute figures: py-spy and the load generator share the machine's two cores.
The API-process CPU per event printed beside each profile is bench_e2e's measurement.
"""

import argparse
import asyncio
import collections
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_e2e  # noqa: E402 - after the path
from server import Server  # noqa: E402

# (category, does a sample belong to it: its frames joined by ";" and its leaf), in order.
CATEGORIES: list[tuple[str, object]] = [
    ("threads: store writes, tokenizer pool", lambda s, leaf: "Thread._bootstrap" in s),
    ("socket writes (uvicorn's send)", lambda s, leaf: "httptools_impl.py" in leaf),
    ("ASGI middleware and routing", lambda s, leaf: any(x in leaf for x in (
        "starlette/middleware", "_exception_handler", "prometheus_fastapi_instrumentator", "starlette/routing", "fastapi/routing"))),
    ("vLLM's output handler (detokenizing, stats)", lambda s, leaf: "output_handler" in s),
    ("vLLM's reasoning/tool parser", lambda s, leaf: "vllm/parser" in s or "reasoning/" in s or "tool_parsers" in s),
    ("events: state machine, serialization, SSE framing", lambda s, leaf: any(x in s for x in (
        "vllm_responses/events/", "event_json", "frame_of", "frames ("))),
    ("request intake (parse, validate, render, tokenize)", lambda s, leaf: any(x in s for x in (
        "ResponsesService.create", "VllmEngine.prepare", "parse_request", "create_responses", "render", "_preprocess", "validate"))),
    ("upstream's Responses layer", lambda s, leaf: "vllm/entrypoints/openai/responses" in s or "serving_responses" in s),
    ("our glue (generators from engine to socket, adapter)", lambda s, leaf: "vllm_responses/" in s),
    ("event loop (uvloop)", lambda s, leaf: "runners.py" in leaf or "uvloop" in leaf),
]


def categorize(raw: Path) -> dict[str, float]:
    """Share of py-spy's samples (its ``raw`` format) per category."""
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():  # a blank or cut line
            continue
        frames = stack.split(";")
        name = next((name for name, match in CATEGORIES if match(stack, frames[-1])), "other")  # type: ignore[operator]
        counts[name] += int(n)
    total = sum(counts.values()) or 1
    return {name: counts[name] / total for name, _ in [*CATEGORIES, ("other", None)]}


def profile(plugin: bool, concurrency: int, tokens: int, seconds: float, raw_dir: Path) -> tuple[dict[str, float], float]:
    name = "ours" if plugin else "upstream"
    server = Server(plugin=plugin, log_path=raw_dir / f"profile-{name}-{concurrency}.log")
    try:
        server.wait_ready()
        target = next(t for t in bench_e2e.TARGETS if t.server == name and not t.extra and t.path == "/v1/responses")

        def cpu() -> tuple[float, float]:
            return bench_e2e.server_cpu(server.proc.pid)

        asyncio.run(bench_e2e.measure(target, server.base_url, cpu, concurrency, concurrency, tokens, 0))  # warm-up
        raw = raw_dir / f"profile-{name}-{concurrency}.txt"
        spy = subprocess.Popen(
            [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(server.proc.pid), "--rate", "250",
             "--format", "raw", "--nonblocking", "--duration", str(int(seconds)), "--output", str(raw)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        per_event: list[float] = []
        started = time.monotonic()
        while time.monotonic() - started < seconds - 2:
            m = asyncio.run(bench_e2e.measure(target, server.base_url, cpu, concurrency, 3 * concurrency, tokens, 0))
            per_event.append(m.api_cpu_share / max(m.events_per_s, 1e-9) * 1e6)
        spy.wait()
        return categorize(raw), sorted(per_event)[len(per_event) // 2]
    finally:
        server.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--raw-dir", type=Path, default=Path(tempfile.gettempdir()), help="where py-spy's raw stacks are kept")
    args = p.parse_args()
    columns: dict[str, dict[str, float]] = {}
    for concurrency in args.concurrency:
        for plugin in (True, False):
            shares, us = profile(plugin, concurrency, args.tokens, args.seconds, args.raw_dir)
            columns[f"{'ours' if plugin else 'upstream'} {concurrency} ({us:.0f} µs/ev)"] = shares
    names = [name for name, _ in CATEGORIES] + ["other"]
    print(f"{'':52}" + "".join(f"{c:>26}" for c in columns))
    for name in names:
        print(f"{name:52}" + "".join(f"{col[name]:>26.1%}" for col in columns.values()))


if __name__ == "__main__":
    main()
