"""Microbenchmark: the stream state machine plus SSE serialization, no server, one core.

Feeds the same synthetic deltas every run (reasoning, answer text, one tool call, with
reasoning summaries on) and reports microseconds per delta event, next to two references:
building an ``openai`` pydantic delta event and ``model_dump_json`` (the naive way), and
``orjson.dumps`` of the same dict.

    python benchmarks/bench_stream.py [--deltas 20000] [--repeat 5]
"""

import argparse
import json
import os
import time

import orjson
from openai.types.responses import ResponseTextDeltaEvent

from vllm_responses.events.deltas import Finish, ReasoningDelta, Sampling, TextDelta, ToolCallDelta, Usage
from vllm_responses.request.protocol import initial_response, parse_request
from vllm_responses.events.wire import frames
from vllm_responses.events.stream import ResponseStream, StreamOptions

WORDS = [" alpha", " beta", " gamma", ' "quoted"', " é", "\n", " delta", " 42"]


def synthetic(n: int) -> list:
    third = n // 3
    deltas: list = [ReasoningDelta(WORDS[i % len(WORDS)]) for i in range(third)]
    deltas += [TextDelta(WORDS[i % len(WORDS)]) for i in range(third)]
    deltas.append(ToolCallDelta(0, name="get_weather", call_id="call_1"))
    deltas += [ToolCallDelta(0, arguments=WORDS[i % len(WORDS)]) for i in range(n - len(deltas))]
    return deltas


def run_machine(deltas: list) -> tuple[float, int]:
    request = parse_request(json.dumps({"model": "demo", "input": "hi"}).encode())
    stream = ResponseStream(initial_response(request, "resp_bench", 0, "demo", Sampling()), StreamOptions(reasoning_summary=True))
    frames(stream.start())
    events = 0
    t0 = time.perf_counter()
    for d in deltas:
        batch = stream.feed(d)
        frames(batch)
        events += len(batch)
    frames(stream.finish(Finish("stop", Usage(10, len(deltas)))))
    return time.perf_counter() - t0, events


def naive(n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        ResponseTextDeltaEvent(
            type="response.output_text.delta", sequence_number=i, item_id="msg_x", output_index=0,
            content_index=0, delta=WORDS[i % len(WORDS)], logprobs=[],
        ).model_dump_json()
    return time.perf_counter() - t0


def plain_orjson(n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        orjson.dumps({"type": "response.output_text.delta", "sequence_number": i, "item_id": "msg_x", "output_index": 0,
                      "content_index": 0, "delta": WORDS[i % len(WORDS)], "logprobs": []})
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--deltas", type=int, default=20000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    deltas = synthetic(args.deltas)
    best, events = min(run_machine(deltas) for _ in range(args.repeat))
    per_event = best / events * 1e6
    ref_naive = min(naive(args.deltas) for _ in range(args.repeat)) / args.deltas * 1e6
    ref_orjson = min(plain_orjson(args.deltas) for _ in range(args.repeat)) / args.deltas * 1e6
    print(f"state machine + SSE serialization: {per_event:.2f} us per delta event "
          f"({events} events from {len(deltas)} deltas, best of {args.repeat}, one core)")
    print(f"  events/s on one core:            {1e6 / per_event:,.0f}")
    print(f"  reference, openai model + model_dump_json: {ref_naive:.2f} us per event")
    print(f"  reference, orjson.dumps of the dict:       {ref_orjson:.2f} us per event")
    print(f"  target <= 2 us per delta event: {'met' if per_event <= 2 else 'NOT met'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"us_per_delta_event": per_event, "events": events, "naive_us": ref_naive, "orjson_us": ref_orjson}, f, indent=2)


if __name__ == "__main__":
    main()
