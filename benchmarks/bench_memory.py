"""Memory check: many sequential requests (streamed and not); does server RSS grow?

Starts vLLM with the plugin (the users' command), sends ``--requests`` requests one after
another, alternating streaming and non-streaming and cycling through demo scenarios
(reasoning, tool calls, custom tool, truncation), and prints the API server's RSS before,
every ``--every`` requests, and after.

    python benchmarks/bench_memory.py [--requests 10000]
"""

import argparse
import json
import sys
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from demo_requests import CASES  # noqa: E402
from server import running  # noqa: E402

SCENARIOS = ["default", "weather_call", "two_calls", "apply_patch", "json", "after_tool", "endless"]


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--every", type=int, default=1000)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    samples = []
    with running(plugin=True, log_path=out / "memory-server.log") as server:
        pid = server.proc.pid
        bodies = [CASES[name].request() for name in SCENARIOS]
        with httpx.Client(base_url=server.base_url, timeout=120) as client:
            for body in bodies:  # warm every code path once before the baseline
                client.post("/v1/responses", json=body).raise_for_status()
            samples.append((0, rss_mib(pid)))
            print(f"before: API server RSS {samples[0][1]:.1f} MiB", flush=True)
            t0 = time.perf_counter()
            for i in range(1, args.requests + 1):
                body = bodies[i % len(bodies)]
                if i % 2:
                    with client.stream("POST", "/v1/responses", json={**body, "stream": True}) as r:
                        for _ in r.iter_bytes():
                            pass
                else:
                    r = client.post("/v1/responses", json=body)
                if r.status_code != 200:
                    raise SystemExit(f"request {i} failed: {r.status_code}")
                if i % args.every == 0:
                    samples.append((i, rss_mib(pid)))
                    print(f"{i:>6} requests  RSS {samples[-1][1]:.1f} MiB  ({i / (time.perf_counter() - t0):.0f} req/s)", flush=True)
    first, last = samples[0][1], samples[-1][1]
    mid = samples[len(samples) // 2][1]
    print(f"after {samples[-1][0]} requests: RSS {last:.1f} MiB (before {first:.1f}, growth {last - first:+.1f} MiB; "
          f"second half {last - mid:+.1f} MiB)")
    (out / "bench_memory.json").write_text(json.dumps({"samples": samples, "growth_mib": last - first}, indent=2))


if __name__ == "__main__":
    main()
