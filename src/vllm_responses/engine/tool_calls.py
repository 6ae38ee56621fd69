"""Tool-call fragments from vLLM's tool parser, decoded back into Responses tool calls.

The model calls chat functions (see :mod:`.chat`); the client must see its real tools:
the function's own name and namespace, and a custom tool's raw input streamed as it
arrives rather than the ``{"input": ...}`` JSON the model writes.
"""

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from ..events.deltas import ToolCallDelta, valid_text
from ..request.chat import CUSTOM_TOOL_INPUT, ChatTools, ToolTarget


class CustomInputDecoder:
    """Streams the string in ``{"input": "..."}`` while the JSON arguments still arrive.

    A custom tool is shown to the model as a function of one string; its call comes back as
    JSON argument fragments, and the client must see the raw input, streamed.

    Whatever the model writes decodes to valid text, never an error: an escape JSON does not
    define (``\\d`` in a regex, ``\\users`` in a Windows path: a backslash the model forgot
    to double) stays as written; a lone surrogate escape becomes U+FFFD and a pair the
    character it encodes; arguments not of the shape asked for are handed on as written.
    """

    _ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
    _START = re.compile(r'\s*\{\s*"' + CUSTOM_TOOL_INPUT + r'"\s*:\s*"')
    _PREFIX = '{"' + CUSTOM_TOOL_INPUT + '":"'  # _START without its whitespace
    _SPECIAL = re.compile(r'["\\]')
    _HEX = frozenset("0123456789abcdefABCDEF")

    def __init__(self) -> None:
        self.streamed = ""
        self._raw: list[str] = []  # every fragment, for a shape the decoder does not stream
        self._tail = ""  # text not decoded yet: before the string starts, or a cut escape
        self._started = False
        self._closed = False

    def feed(self, fragment: str) -> str:
        self._raw.append(fragment)
        if self._closed:
            return ""
        self._tail += fragment
        if not self._started:
            match = self._START.match(self._tail)
            if match is None:
                if not self._PREFIX.startswith("".join(self._tail.split())):
                    self._closed = True  # never the shape asked for: finish() hands on the raw text
                return ""
            self._started, self._tail = True, self._tail[match.end() :]
        return self._emit(self._decode(final=False))

    def finish(self) -> str:
        """What is left of the input once the arguments are complete."""
        if self._started:  # the string was cut (the token limit): keep its end as written
            return self._emit("" if self._closed else self._decode(final=True))
        raw = "".join(self._raw)
        try:
            value = json.loads(raw)
        except ValueError:
            value = None
        if isinstance(value, dict) and isinstance(value.get(CUSTOM_TOOL_INPUT), str):
            full = value[CUSTOM_TOOL_INPUT]
        elif isinstance(value, str):
            full = value
        else:  # not the shape we asked for: hand the client the raw text
            full = raw
        return self._emit(valid_text(full))

    def _emit(self, chunk: str) -> str:
        self.streamed += chunk
        return chunk

    def _decode(self, final: bool) -> str:
        """Decode ``_tail`` up to the closing quote; keep a cut escape unless ``final``."""
        text, out, i, n = self._tail, [], 0, len(self._tail)
        while i < n:
            m = self._SPECIAL.search(text, i)
            if m is None:
                out.append(text[i:])
                i = n
                break
            j = m.start()
            out.append(text[i:j])
            i = j
            if text[j] == '"':
                self._closed = True
                i = n
                break
            char, used = self._escape(text, j, final)
            if used == 0:  # cut: wait for more
                break
            out.append(char)
            i = j + used
        self._tail = text[i:]
        return "".join(out)

    def _escape(self, text: str, j: int, final: bool) -> tuple[str, int]:
        """The character the escape at ``text[j]`` stands for and its length (0: cut short)."""
        n = len(text)
        if j + 1 >= n:
            return ("\\", 1) if final else ("", 0)
        e = text[j + 1]
        if e != "u":
            return self._ESCAPES.get(e, "\\" + e), 2
        code = self._hex4(text, j + 2)
        if code is None:
            return ("", 0) if self._cut(text, j + 2, final) else ("\\u", 2)
        if 0xDC00 <= code < 0xE000:
            return "\ufffd", 6
        if not 0xD800 <= code < 0xDC00:
            return chr(code), 6
        # A high surrogate: a pair if a low surrogate escape follows.
        if text.startswith("\\u", j + 6):
            low = self._hex4(text, j + 8)
            if low is not None and 0xDC00 <= low < 0xE000:
                return chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)), 12
            if low is None and self._cut(text, j + 8, final):
                return "", 0
        elif j + 7 >= n and text[j + 6 : j + 7] in ("", "\\") and not final:
            return "", 0
        return "\ufffd", 6

    def _hex4(self, text: str, k: int) -> int | None:
        digits = text[k : k + 4]
        return int(digits, 16) if len(digits) == 4 and all(c in self._HEX for c in digits) else None

    def _cut(self, text: str, k: int, final: bool) -> bool:
        """Whether the 4 hex digits at ``k`` may still arrive (all so far are hex)."""
        digits = text[k : k + 4]
        return not final and len(digits) < 4 and all(c in self._HEX for c in digits)


@dataclass
class _CallState:
    index: int
    position: int  # the n-th call of the turn
    target: ToolTarget | None = None
    call_id: str | None = None
    pending: str = ""
    raw: list[str] = field(default_factory=list)  # every argument fragment the parser sent, as sent
    decoder: CustomInputDecoder | None = None


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


class ToolCallMapper:
    """Chat-function call fragments from a tool parser → Responses tool-call deltas.

    Restores each call's real name and namespace, unwraps custom-tool input as it streams,
    and with ``parallel=False`` keeps only the first call of the turn.

    What the model writes is passed on, never refused (as the hosted API does): arguments that
    are not JSON stay the string the model produced; a call of a tool that was not offered
    keeps the name the model used; a call the model never named, once it closes, becomes a
    call named ``""`` with its arguments (nothing is lost silently; Codex answers it to the
    model as an unsupported call, so the model can try again); a call without arguments and
    without a name is no call. One call per index: fragments for a call already closed
    (the parser moved on) are dropped.

    ``complete(position)``, when given, returns the whole arguments of the turn's n-th call as
    the parser's non-streaming pass reads the output so far (``None``: unknown). Some streaming
    tool parsers drop argument fragments when one engine step holds several tokens (vLLM's
    ``deepseek_v3`` sends the name and nothing more); when what streamed is a prefix of the
    whole, the rest is sent before the call closes.
    """

    def __init__(
        self, tools: ChatTools, parallel: bool = True, complete: Callable[[int], str | None] | None = None
    ) -> None:
        self.tools = tools
        self.parallel = parallel
        self.complete = complete
        self._current: _CallState | None = None
        self._first_index: int | None = None
        self._count = 0
        self._closed: set[int] = set()

    def feed(self, index: int, name: str | None, call_id: str | None, arguments: str) -> list[ToolCallDelta]:
        if self._first_index is None:
            self._first_index = index
        if not self.parallel and index != self._first_index:
            return []
        out: list[ToolCallDelta] = []
        call = self._current
        if call is None or call.index != index:
            if index in self._closed:
                return []
            out += self.finish()
            call = self._current = _CallState(index, self._count)
            self._count += 1
        call.call_id = call.call_id or call_id
        call.raw.append(arguments)
        if call.target is None:
            call.pending += arguments
            if not name:
                return out
            call.target = self.tools.target(name)
            if call.target.custom:
                call.decoder = CustomInputDecoder()
            arguments, call.pending = call.pending, ""
            if call.decoder is not None:
                arguments = call.decoder.feed(arguments)
            t = call.target
            options = (
                {"execution": t.execution, "environment": t.environment, "server_label": t.server_label}
                if t.builtin
                else None
            )
            return out + [
                ToolCallDelta(index, arguments, t.name, call.call_id, t.namespace, t.custom, t.builtin, options)
            ]
        if call.decoder is not None:
            arguments = call.decoder.feed(arguments)
        return out + ([ToolCallDelta(index, arguments)] if arguments else [])

    def finish(self) -> list[ToolCallDelta]:
        """Close the call in progress: arguments the parser did not stream, then custom input
        still held back by the decoder."""
        call, self._current = self._current, None
        if call is None:
            return []
        self._closed.add(call.index)
        if call.target is None:  # never named: see the class docstring
            return [ToolCallDelta(call.index, call.pending, "", call.call_id)] if call.pending else []
        out: list[ToolCallDelta] = []
        raw = "".join(call.raw)
        whole = self.complete(call.position) if self.complete is not None and not _is_json(raw) else None
        if whole and whole.startswith(raw) and _is_json(whole):
            missing = whole[len(raw) :]
            if call.decoder is not None:
                missing = call.decoder.feed(missing)
            if missing:
                out.append(ToolCallDelta(call.index, missing))
        if call.decoder is not None:
            rest = call.decoder.finish()
            if rest:
                out.append(ToolCallDelta(call.index, rest))
        return out
