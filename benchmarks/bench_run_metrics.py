"""Microbenchmark: what the metrics cost a response, per event and per response (one core).

Drives ``service.Run`` (the path every transport reads) over synthetic deltas with no engine
and no transport, and reports nanoseconds per event; run it once on a checkout without the
metrics for the baseline (``PYTHONPATH=/path/to/old/src``). Then it times the accounting one
response costs (:func:`vllm_responses.common.metrics.response_ended` and a time-to-first-event
observation), which is all the hot path pays: nothing per event.

    python benchmarks/bench_run_metrics.py [--deltas 20000] [--responses 2000] [--repeat 5]
"""

import argparse
import asyncio
import json
import time

from vllm_responses.events.deltas import Finish, Sampling, Started, TextDelta, Usage
from vllm_responses.request.protocol import initial_response, parse_request
from vllm_responses.core.run import Run
from vllm_responses.events.stream import ResponseStream

REQUEST = parse_request(json.dumps({"model": "demo", "input": "hi"}).encode())


async def _deltas(n: int):
    yield Started()
    for i in range(n):
        yield TextDelta(f" w{i % 10}")
    yield Finish("stop", Usage(10, n))


async def one_run(n: int) -> tuple[float, int]:
    stream = ResponseStream(initial_response(REQUEST, "resp_bench", 0, "demo", Sampling()))
    run = Run(stream, _deltas(n))
    events = 0
    t0 = time.perf_counter()
    async for batch in run.batches():
        events += len(batch)
    return time.perf_counter() - t0, events


async def many_runs(responses: int, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(responses):
        await one_run(n)
    return time.perf_counter() - t0


def accounting(responses: int) -> float | None:
    try:
        from vllm_responses.common import metrics
    except ImportError:  # the baseline checkout has no metrics
        return None
    t0 = time.perf_counter()
    for _ in range(responses):
        started = time.perf_counter()
        metrics.first_event("sse", started)
        metrics.response_ended("sse", "completed", started, 12)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--deltas", type=int, default=20000)
    parser.add_argument("--responses", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    per_event, per_small = [], []
    for _ in range(args.repeat):
        seconds, events = asyncio.run(one_run(args.deltas))
        per_event.append(seconds / events * 1e9)
        per_small.append(asyncio.run(many_runs(args.responses, 8)) / args.responses * 1e6)
    print(f"Run.batches, one response of {args.deltas} deltas: {min(per_event):.0f} ns/event (best of {args.repeat})")
    print(f"Run.batches, {args.responses} responses of 8 deltas: {min(per_small):.1f} us/response (best of {args.repeat})")
    costs = [accounting(args.responses) for _ in range(args.repeat)]
    if costs[0] is not None:
        print(f"metrics accounting (first event + end): {min(costs) / args.responses * 1e6:.2f} us/response")  # type: ignore[type-var]


if __name__ == "__main__":
    main()
