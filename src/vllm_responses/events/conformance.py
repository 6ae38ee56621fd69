"""A conformance checker for Responses event streams, as the strictest clients read them.

Use it on parsed events (``check_events(list_of_dicts)``) or on a captured SSE body
(``python -m vllm_responses.events.conformance capture.sse``). It enforces what openai-python's
``responses.stream()`` and Codex CLI rely on (see docs/events.md):

- every event validates against ``openai.types.responses.ResponseStreamEvent`` (strictly,
  from its JSON: an integer field holding ``1.0`` fails) and against the Open Responses
  specification's schema (:mod:`.open_responses`, which lists where the two disagree);
- ``sequence_number`` starts at 0 and rises by 1; ``response.created`` comes first;
- the response id never changes between lifecycle events;
- items open and close one after another (no interleaving), ``output_index`` counts up
  from 0, every content event belongs to the open item, and an item's type, id and
  ``call_id`` are the same at ``added`` and ``done``;
- text and argument deltas concatenate to their ``done`` text, which equals the item's;
- exactly one terminal event (``completed``, ``incomplete`` or ``failed``), last, whose
  ``response.output`` equals the items streamed; ``error`` only right before ``failed``;
  ``incomplete`` also ends a cancelled response (status ``cancelled``);
- function calls carry a ``call_id`` and string ``arguments``; reasoning items a ``summary``;
- built-in tool calls (``shell_call``, ``local_shell_call``, ``apply_patch_call``,
  ``tool_search_call``) get no argument or input events; a ``shell_call``'s commands stream as
  ``shell_call_command.added`` / ``delta`` / ``done`` (by ``output_index`` and
  ``command_index``, counting up from 0, each command done before the next is added), and the
  done commands are the item's ``action.commands``; every call but a tool search carries a
  ``call_id``.
"""

import sys
from collections.abc import Iterable
from typing import Any

import orjson
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter, ValidationError

from .open_responses import event_problems, response_problems
from .stream import TERMINAL_EVENTS as TERMINAL

_EVENT = TypeAdapter(ResponseStreamEvent)


class ConformanceError(AssertionError):
    """Raised with every violation found, one per line."""


def parse_sse(body: str | bytes) -> list[dict[str, Any]]:
    """Events from an SSE body; each frame's ``data:`` must be one JSON object."""
    text = body.decode() if isinstance(body, bytes) else body
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        data = [line[5:].lstrip() for line in block.split("\n") if line.startswith("data:")]
        names = [line[6:].strip() for line in block.split("\n") if line.startswith("event:")]
        if not data:
            continue
        event = orjson.loads("\n".join(data))
        if names and names[0] != event.get("type"):
            raise ConformanceError(f"SSE event name {names[0]!r} differs from data type {event.get('type')!r}")
        events.append(event)
    return events


def check_events(events: list[dict[str, Any]]) -> list[str]:
    """Every violation in ``events`` (empty when the stream conforms)."""
    return _Checker().run(events)


def check_response(response: dict[str, Any]) -> list[str]:
    """Every violation in a response object (a JSON body, or a retrieved response)."""
    problems = [f"open responses: {p}" for p in response_problems(response)]
    try:
        Response.model_validate_json(orjson.dumps(response), strict=True)
    except ValidationError as exc:
        problems.append(f"does not validate against the openai types: {exc.errors()[0]}")
    if isinstance(response.get("created_at"), float) or isinstance(response.get("completed_at"), float):
        problems.append("created_at and completed_at must be integers")
    if (response.get("completed_at") is not None) != (response.get("status") == "completed"):
        problems.append(f"completed_at {response.get('completed_at')!r} on a {response.get('status')} response")
    return problems


def assert_conforms(events: list[dict[str, Any]]) -> None:
    problems = check_events(events)
    if problems:
        raise ConformanceError("\n".join(problems))


class _Checker:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.response_id: str | None = None
        self.items_done: dict[int, dict[str, Any]] = {}
        self.open: dict[str, Any] | None = None  # {"index", "item", "parts": {ci: text}, "summary": {si: text}, "args"}
        self.next_index = 0
        self.terminal: dict[str, Any] | None = None

    def fail(self, i: int, event: dict[str, Any], message: str) -> None:
        self.problems.append(f"event {i} ({event.get('type')}): {message}")

    def run(self, events: list[dict[str, Any]]) -> list[str]:
        if not events:
            return ["the stream has no events"]
        for i, event in enumerate(events):
            self.check(i, event)
            if event.get("type") == "error" and (
                i + 1 >= len(events) or events[i + 1].get("type") != "response.failed"
            ):
                self.fail(i, event, "an error event must be followed by response.failed")
        if self.terminal is None:
            self.problems.append("the stream ended without a terminal event (completed, incomplete or failed)")
        if self.open is not None:
            self.problems.append(f"item at output_index {self.open['index']} was never done")
        return self.problems

    def check(self, i: int, e: dict[str, Any]) -> None:
        kind = e.get("type")
        try:
            _EVENT.validate_json(orjson.dumps(e), strict=True)
        except ValidationError as exc:
            self.fail(i, e, f"does not validate against the openai types: {exc.errors()[0]}")
        for problem in event_problems(e):
            self.fail(i, e, f"open responses: {problem}")
        if e.get("sequence_number") != i:
            self.fail(i, e, f"sequence_number {e.get('sequence_number')} != {i}")
        if i == 0 and kind != "response.created":
            self.fail(i, e, "the first event must be response.created")
        if self.terminal is not None:
            self.fail(i, e, "event after the terminal event")
        if "response" in e and kind and kind.startswith("response.") and isinstance(e["response"], dict):
            self.lifecycle(i, e)
        elif kind == "response.output_item.added":
            self.item_added(i, e)
        elif kind == "response.output_item.done":
            self.item_done(i, e)
        elif kind == "error":
            pass
        else:
            self.content(i, e)

    # -- lifecycle ------------------------------------------------------------------------
    def lifecycle(self, i: int, e: dict[str, Any]) -> None:
        response = e["response"]
        if self.response_id is None:
            self.response_id = response.get("id")
        elif response.get("id") != self.response_id:
            self.fail(i, e, f"response id changed from {self.response_id} to {response.get('id')}")
        for problem in check_response(response):
            self.fail(i, e, f"response: {problem}")
        kind = e["type"]
        if kind not in TERMINAL:
            return
        self.terminal = e
        # A cancelled response (no event type of its own) ends with response.incomplete.
        expected_status = (
            ("incomplete", "cancelled") if kind == "response.incomplete" else (kind.removeprefix("response."),)
        )
        if response.get("status") not in expected_status:
            self.fail(i, e, f"status {response.get('status')!r} is not {' or '.join(map(repr, expected_status))}")
        if self.open is not None:
            self.fail(i, e, f"terminal event while item {self.open['index']} is open")
        streamed = [self.items_done[k] for k in sorted(self.items_done)]
        if response.get("output") != streamed:
            self.fail(i, e, "response.output differs from the items streamed")
        usage = response.get("usage")
        if usage is not None and usage.get("total_tokens") != usage.get("input_tokens", 0) + usage.get(
            "output_tokens", 0
        ):
            self.fail(i, e, "usage.total_tokens != input_tokens + output_tokens")
        if response.get("status") == "incomplete" and not (response.get("incomplete_details") or {}).get("reason"):
            self.fail(i, e, "response.incomplete without incomplete_details.reason")
        if kind == "response.failed":
            error = response.get("error") or {}
            if not error.get("code") or not error.get("message"):
                self.fail(i, e, "response.failed without error.code and error.message")

    # -- items ----------------------------------------------------------------------------
    def item_added(self, i: int, e: dict[str, Any]) -> None:
        item, index = e.get("item") or {}, e.get("output_index")
        if self.open is not None:
            self.fail(i, e, f"item {index} added while item {self.open['index']} is still open")
        if index != self.next_index:
            self.fail(i, e, f"output_index {index} != expected {self.next_index}")
        self.next_index = (index if isinstance(index, int) else self.next_index) + 1
        self.item_shape(i, e, item)
        self.open = {"index": index, "item": item, "parts": {}, "summary": {}, "args": None, "input": None}

    def item_shape(self, i: int, e: dict[str, Any], item: dict[str, Any]) -> None:
        if not item.get("id"):
            self.fail(i, e, "item without id")
        if item.get("type") in _NEEDS_CALL_ID and not item.get("call_id"):
            self.fail(i, e, "tool call item without call_id")
        if item.get("type") == "function_call" and not isinstance(item.get("arguments"), str):
            self.fail(i, e, "function_call arguments must be a string")
        if item.get("type") == "reasoning" and "summary" not in item:
            self.fail(i, e, "reasoning item without summary")

    def item_done(self, i: int, e: dict[str, Any]) -> None:
        item, index = e.get("item") or {}, e.get("output_index")
        o = self.open
        if o is None or o["index"] != index:
            self.fail(i, e, f"output_item.done for {index}, which is not the open item")
            return
        added = o["item"]
        for key in ("type", "id", "call_id", "name"):
            if added.get(key) != item.get(key):
                self.fail(i, e, f"item {key} changed between added ({added.get(key)!r}) and done ({item.get(key)!r})")
        self.item_shape(i, e, item)
        kind = item.get("type")
        if kind == "message":
            texts = {ci: p.get("text") for ci, p in enumerate(item.get("content") or [])}
            if texts != {ci: t for ci, t in o["parts"].items()}:
                self.fail(i, e, f"message content {texts} differs from the streamed parts {o['parts']}")
        elif kind == "reasoning":
            texts = {ci: p.get("text") for ci, p in enumerate(item.get("content") or [])}
            if texts != o["parts"]:
                self.fail(i, e, "reasoning content differs from the streamed reasoning text")
            summary = {si: p.get("text") for si, p in enumerate(item.get("summary") or [])}
            if summary != o["summary"]:
                self.fail(i, e, "reasoning summary differs from the streamed summary text")
        elif kind == "function_call" and o["args"] is not None and item.get("arguments") != o["args"]["done"]:
            self.fail(i, e, "function_call arguments differ from function_call_arguments.done")
        elif kind == "custom_tool_call" and o["input"] is not None and item.get("input") != o["input"]["done"]:
            self.fail(i, e, "custom_tool_call input differs from custom_tool_call_input.done")
        elif kind == "shell_call":
            commands = o.get("commands") or []
            if [c["done"] for c in commands] != (item.get("action") or {}).get("commands"):
                self.fail(i, e, "shell_call action.commands differ from the shell_call_command.done commands")
        if o.get("commands") and kind != "shell_call":
            self.fail(i, e, f"shell_call_command events for a {kind} item")
        if kind in _BUILTIN_CALLS and (o["args"] is not None or o["input"] is not None):
            self.fail(i, e, f"argument or input events for a {kind} item")
        for name, acc in (("arguments", o["args"]), ("input", o["input"])):
            if acc is not None and acc["done"] is None:
                self.fail(i, e, f"{name} streamed without a done event")
        self.items_done[index] = item
        self.open = None

    # -- content --------------------------------------------------------------------------
    def content(self, i: int, e: dict[str, Any]) -> None:
        kind = e["type"]
        o = self.open
        if o is None or e.get("output_index") != o["index"]:
            self.fail(i, e, f"content event for output_index {e.get('output_index')}, which is not the open item")
            return
        if kind.startswith("response.shell_call_command."):
            self.command(i, e, o)
            return
        if e.get("item_id") != o["item"].get("id"):
            self.fail(i, e, f"item_id {e.get('item_id')} != open item's id {o['item'].get('id')}")
        if kind == "response.content_part.added":
            ci = e.get("content_index")
            if ci in o["parts"] or ci != len(o["parts"]):
                self.fail(i, e, f"content_index {ci} out of order")
            o["parts"][ci] = (e.get("part") or {}).get("text", "")
            o.setdefault("parts_done", set())
        elif kind in ("response.output_text.delta", "response.reasoning_text.delta", "response.refusal.delta"):
            ci = e.get("content_index")
            if ci not in o["parts"] or ci in o.get("parts_done", set()):
                self.fail(i, e, f"delta for content_index {ci} that is not open")
                return
            o["parts"][ci] += e.get("delta", "")
        elif kind in ("response.output_text.done", "response.reasoning_text.done"):
            ci = e.get("content_index")
            if o["parts"].get(ci) != e.get("text"):
                self.fail(i, e, "done text differs from the concatenated deltas")
        elif kind == "response.content_part.done":
            ci = e.get("content_index")
            if o["parts"].get(ci) != (e.get("part") or {}).get("text"):
                self.fail(i, e, "content_part.done text differs from the concatenated deltas")
            o.setdefault("parts_done", set()).add(ci)
        elif kind == "response.reasoning_summary_part.added":
            si = e.get("summary_index")
            if si in o["summary"] or si != len(o["summary"]):
                self.fail(i, e, f"summary_index {si} out of order")
            o["summary"][si] = ""
        elif kind == "response.reasoning_summary_text.delta":
            si = e.get("summary_index")
            if si not in o["summary"]:
                self.fail(i, e, f"summary delta for summary_index {si} before its part was added")
                return
            o["summary"][si] += e.get("delta", "")
        elif kind in ("response.reasoning_summary_text.done", "response.reasoning_summary_part.done"):
            si = e.get("summary_index")
            text = e.get("text") if kind.endswith("text.done") else (e.get("part") or {}).get("text")
            if o["summary"].get(si) != text:
                self.fail(i, e, "summary done text differs from the concatenated deltas")
        elif kind in ("response.function_call_arguments.delta", "response.custom_tool_call_input.delta"):
            key = "args" if "function_call" in kind else "input"
            acc = o[key] = o[key] or {"text": "", "done": None}
            if acc["done"] is not None:
                self.fail(i, e, "delta after done")
            acc["text"] += e.get("delta", "")
        elif kind in ("response.function_call_arguments.done", "response.custom_tool_call_input.done"):
            key, field = ("args", "arguments") if "function_call" in kind else ("input", "input")
            acc = o[key] = o[key] or {"text": "", "done": None}
            acc["done"] = e.get(field)
            if acc["text"] and acc["text"] != acc["done"]:
                self.fail(i, e, f"{field} deltas do not concatenate to the done {field}")

    def command(self, i: int, e: dict[str, Any], o: dict[str, Any]) -> None:
        """A ``shell_call_command`` event (no ``item_id``: the open item at ``output_index``)."""
        kind, ci = e["type"], e.get("command_index")
        commands = o.setdefault("commands", [])
        if kind == "response.shell_call_command.added":
            if ci != len(commands) or (commands and commands[-1]["done"] is None):
                self.fail(i, e, f"command_index {ci} added out of order")
                return
            commands.append({"text": e.get("command") or "", "done": None})
            return
        if not commands or ci != len(commands) - 1 or commands[-1]["done"] is not None:
            self.fail(i, e, f"{kind} for command_index {ci}, which is not the open command")
            return
        if kind == "response.shell_call_command.delta":
            commands[-1]["text"] += e.get("delta", "")
        else:
            commands[-1]["done"] = e.get("command")
            if commands[-1]["text"] != e.get("command"):
                self.fail(i, e, "shell command deltas do not concatenate to the done command")


# Items that answer nothing without their call id (a tool search's is optional), and the built-in calls.
_NEEDS_CALL_ID = frozenset({"function_call", "custom_tool_call", "shell_call", "local_shell_call", "apply_patch_call"})
_BUILTIN_CALLS = frozenset({"shell_call", "local_shell_call", "apply_patch_call", "tool_search_call"})


def main(argv: Iterable[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m vllm_responses.events.conformance CAPTURE.sse", file=sys.stderr)
        return 2
    with open(args[0], "rb") as f:
        problems = check_events(parse_sse(f.read()))
    for problem in problems:
        print(problem)
    print("conforms" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
