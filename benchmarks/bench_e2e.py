"""Streaming load, side by side: upstream /v1/responses, ours, and /v1/chat/completions.

One run, one demo model, two servers started with the users' command: upstream vLLM
(no plugin) and vLLM with ``VLLM_PLUGINS=responses``. Targets are measured in alternation,
round after round, and reported as medians, because this 2-core machine is noisy and the
load generator shares it.

    python benchmarks/bench_e2e.py --concurrency 1 16 64 --tokens 128 --rounds 3

Every request uses the demo model's never-ending scenario cut by the token limit, so each
generates exactly ``--tokens`` tokens. Per target and concurrency it reports output
tokens/s, events/s, time to first event p50/p99, inter-event gap p50/p99, server CPU
seconds per 1,000 events and the load generator's own CPU share; prints a table, writes
JSON and draws a PNG.
"""

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from server import Server  # noqa: E402  (the test suite's launcher: the users' command)

PROMPT = "Count forever."


@dataclass
class Target:
    name: str
    path: str
    server: str  # "upstream" or "ours"
    extra: dict = field(default_factory=dict)  # added to the body

    def body(self, tokens: int) -> dict:
        if self.path == "/v1/chat/completions":
            return {
                "model": "demo", "stream": True, "max_tokens": tokens,
                "messages": [{"role": "user", "content": PROMPT}],
                "stream_options": {"include_usage": True},
            }
        return {"model": "demo", "stream": True, "max_output_tokens": tokens, "input": PROMPT, **self.extra}


TARGETS = [
    Target("upstream /v1/responses", "/v1/responses", "upstream"),
    Target("ours /v1/responses", "/v1/responses", "ours"),  # store: true, the default: two store writes each
    Target("ours store:false", "/v1/responses", "ours", {"store": False}),
    Target("chat/completions", "/v1/chat/completions", "ours"),
]


@dataclass
class RequestStats:
    ttfe: float
    gaps: list[float]
    events: int
    ok: bool


@dataclass
class Measurement:
    target: str
    concurrency: int
    round: int
    requests: int
    wall_s: float
    tokens_per_s: float
    events_per_s: float
    ttfe_p50_ms: float
    ttfe_p99_ms: float
    gap_p50_ms: float
    gap_p99_ms: float
    server_cpu_s_per_1k_events: float
    loadgen_cpu_share: float
    api_cpu_share: float = 0.0
    engine_cpu_share: float = 0.0
    failures: int = 0
    extra: dict = field(default_factory=dict)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def one_request(session: aiohttp.ClientSession, url: str, body: dict) -> RequestStats:
    start = time.perf_counter()
    last = None
    gaps: list[float] = []
    events = 0
    ttfe = float("nan")
    tail = b""
    try:
        async with session.post(url, json=body) as r:
            if r.status != 200:
                await r.read()
                return RequestStats(ttfe, gaps, 0, False)
            async for chunk in r.content.iter_any():
                now = time.perf_counter()
                n = chunk.count(b"data: ")
                if n == 0:
                    continue
                if last is None:
                    ttfe = now - start
                else:
                    gaps.append(now - last)
                gaps.extend([0.0] * (n - 1))  # events that arrived in the same read
                last = now
                events += n
                tail = (tail + chunk)[-4096:]
    except aiohttp.ClientError:
        return RequestStats(ttfe, gaps, events, False)
    ok = b"response.completed" in tail or b"response.incomplete" in tail or b'"usage"' in tail
    return RequestStats(ttfe, gaps, events, ok)


def server_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds so far of the API server process and of its children (the engine core)."""
    proc = psutil.Process(pid)

    def seconds(p: psutil.Process) -> float:
        try:
            t = p.cpu_times()
            return t.user + t.system
        except psutil.NoSuchProcess:
            return 0.0

    return seconds(proc), sum(seconds(c) for c in proc.children(recursive=True))


async def measure(target: Target, base_url: str, pid: int, concurrency: int, requests: int, tokens: int, rnd: int) -> Measurement:
    url = base_url + target.path
    body = target.body(tokens)
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=True)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await one_request(session, url, body)  # warm-up
        queue = list(range(requests))
        results: list[RequestStats] = []

        async def worker() -> None:
            while queue:
                queue.pop()
                results.append(await one_request(session, url, body))

        (api0, eng0), own0, t0 = server_cpu(pid), time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
        (api1, eng1), own1 = server_cpu(pid), time.process_time()
    ok = [r for r in results if r.ok]
    events = sum(r.events for r in ok)
    gaps = [g for r in ok for g in r.gaps]
    return Measurement(
        target=target.name, concurrency=concurrency, round=rnd, requests=len(results), wall_s=wall,
        tokens_per_s=len(ok) * tokens / wall, events_per_s=events / wall,
        ttfe_p50_ms=pct([r.ttfe for r in ok], 0.5) * 1e3, ttfe_p99_ms=pct([r.ttfe for r in ok], 0.99) * 1e3,
        gap_p50_ms=pct(gaps, 0.5) * 1e3, gap_p99_ms=pct(gaps, 0.99) * 1e3,
        server_cpu_s_per_1k_events=(api1 - api0 + eng1 - eng0) / max(events, 1) * 1e3,
        loadgen_cpu_share=(own1 - own0) / wall, failures=len(results) - len(ok),
        api_cpu_share=(api1 - api0) / wall, engine_cpu_share=(eng1 - eng0) / wall,
    )


def median_table(measurements: list[Measurement]) -> list[dict]:
    rows = []
    keys = ["tokens_per_s", "events_per_s", "ttfe_p50_ms", "ttfe_p99_ms", "gap_p50_ms", "gap_p99_ms",
            "server_cpu_s_per_1k_events", "loadgen_cpu_share", "api_cpu_share", "engine_cpu_share"]
    for c in sorted({m.concurrency for m in measurements}):
        for t in TARGETS:
            ms = [m for m in measurements if m.concurrency == c and m.target == t.name]
            if ms:
                row = {"target": t.name, "concurrency": c, "rounds": len(ms), "failures": sum(m.failures for m in ms)}
                row.update({k: statistics.median(getattr(m, k) for m in ms) for k in keys})
                # The Responses layer's own cost: API-process CPU (not the engine's) per 1,000 events.
                row["api_cpu_ms_per_1k_events"] = statistics.median(m.api_cpu_share / max(m.events_per_s, 1e-9) * 1e6 for m in ms)
                rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    head = (f"{'target':<24}{'conc':>5}{'tok/s':>9}{'ev/s':>9}{'TTFE p50':>10}{'p99':>8}{'gap p50':>9}{'p99':>8}"
            f"{'srvCPU/1k':>11}{'API CPU':>9}{'engine':>8}{'API ms/1k':>10}{'gen CPU':>9}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['target']:<24}{r['concurrency']:>5}{r['tokens_per_s']:>9.0f}{r['events_per_s']:>9.0f}"
              f"{r['ttfe_p50_ms']:>9.1f}m{r['ttfe_p99_ms']:>7.1f}m{r['gap_p50_ms']:>8.2f}m{r['gap_p99_ms']:>7.1f}m"
              f"{r['server_cpu_s_per_1k_events']:>10.3f}s{r['api_cpu_share']:>9.0%}{r['engine_cpu_share']:>8.0%}"
              f"{r['api_cpu_ms_per_1k_events']:>10.0f}"
              f"{r['loadgen_cpu_share']:>9.0%}")


def ratios(rows: list[dict]) -> list[str]:
    lines = []
    for c in sorted({r["concurrency"] for r in rows}):
        by = {r["target"]: r for r in rows if r["concurrency"] == c}
        ours, up, chat = by.get("ours /v1/responses"), by.get("upstream /v1/responses"), by.get("chat/completions")
        if ours and up and chat:
            lines.append(
                f"c={c}: ours/chat tokens/s = {ours['tokens_per_s'] / chat['tokens_per_s']:.2f}x, "
                f"ours/upstream = {ours['tokens_per_s'] / up['tokens_per_s']:.2f}x, "
                f"TTFE p50 ours-chat = {ours['ttfe_p50_ms'] - chat['ttfe_p50_ms']:+.1f} ms"
            )
    return lines


def chart(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    concs = sorted({r["concurrency"] for r in rows})
    for t in TARGETS:
        pts = [next((r for r in rows if r["target"] == t.name and r["concurrency"] == c), None) for c in concs]
        xs = [c for c, p in zip(concs, pts) if p]
        pts = [p for p in pts if p]
        axes[0].plot(xs, [p["tokens_per_s"] for p in pts], marker="o", label=t.name)
        axes[1].plot(xs, [p["ttfe_p50_ms"] for p in pts], marker="o", label=t.name)
        axes[2].plot(xs, [p["server_cpu_s_per_1k_events"] for p in pts], marker="o", label=t.name)
    for ax, title in zip(axes, ["output tokens/s (median)", "time to first event p50 (ms)", "server CPU s per 1k events"]):
        ax.set_xscale("log", base=2)
        ax.set_xticks(concs, [str(c) for c in concs])
        ax.set_xlabel("concurrent streams")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def main_async(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    servers = {
        "upstream": Server(plugin=False, log_path=out / "upstream-server.log"),
        "ours": Server(plugin=True, log_path=out / "ours-server.log"),
    }
    try:
        for s in servers.values():
            s.wait_ready()
        measurements: list[Measurement] = []
        for rnd in range(args.rounds):
            for c in args.concurrency:
                order = TARGETS if rnd % 2 == 0 else list(reversed(TARGETS))  # alternate who goes first
                for t in order:
                    s = servers[t.server]
                    for other in servers.values():  # the idle server must not take CPU
                        other.pause(other is not s)
                    requests = max(args.min_requests, c * args.waves)
                    m = await measure(t, s.base_url, s.proc.pid, c, requests, args.tokens, rnd)
                    measurements.append(m)
                    print(f"round {rnd} c={c:<3} {t.name:<24} {m.tokens_per_s:8.0f} tok/s  ttfe p50 {m.ttfe_p50_ms:6.1f} ms"
                          f"  gen CPU {m.loadgen_cpu_share:4.0%}  failures {m.failures}", flush=True)
    finally:
        for s in servers.values():
            s.pause(False)
            s.stop()
    rows = median_table(measurements)
    print()
    print_table(rows)
    for line in ratios(rows):
        print(line)
    meta = {"tokens": args.tokens, "rounds": args.rounds, "concurrency": args.concurrency, "cpus": os.cpu_count(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    (out / "bench_e2e.json").write_text(json.dumps(
        {"meta": meta, "medians": rows, "ratios": ratios(rows), "runs": [asdict(m) for m in measurements]}, indent=2))
    chart(rows, out / "bench_e2e.png")
    print(f"\nwrote {out / 'bench_e2e.json'} and {out / 'bench_e2e.png'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--tokens", type=int, default=128, help="output tokens per request")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--waves", type=int, default=3, help="requests per stream slot in one measurement")
    p.add_argument("--min-requests", type=int, default=12)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
