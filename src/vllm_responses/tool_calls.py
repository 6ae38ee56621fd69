"""Tool-call fragments from vLLM's tool parser, decoded back into Responses tool calls.

The model calls chat functions (see :mod:`.chat`); the client must see its real tools:
the function's own name and namespace, and a custom tool's raw input streamed as it
arrives rather than the ``{"input": ...}`` JSON the model writes.
"""

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from .chat import CUSTOM_TOOL_INPUT, ChatTools, ToolTarget
from .deltas import ToolCallDelta


class CustomInputDecoder:
    """Streams the string in ``{"input": "..."}`` while the JSON arguments still arrive.

    A custom tool is shown to the model as a function of one string; its call comes back as
    JSON argument fragments, and the client must see the raw input, streamed.
    """

    _ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
    _START = re.compile(r'\s*\{\s*"' + CUSTOM_TOOL_INPUT + r'"\s*:\s*"')

    def __init__(self) -> None:
        self.text = ""
        self.streamed = ""
        self._pos: int | None = None
        self._closed = False

    def feed(self, fragment: str) -> str:
        self.text += fragment
        if self._pos is None:
            match = self._START.match(self.text)
            if match is None:
                return ""
            self._pos = match.end()
        out: list[str] = []
        text, i = self.text, self._pos
        while i < len(text) and not self._closed:
            c = text[i]
            if c == '"':
                self._closed = True
                break
            if c != "\\":
                out.append(c)
                i += 1
                continue
            if i + 1 >= len(text):
                break
            e = text[i + 1]
            if e != "u":
                out.append(self._ESCAPES.get(e, e))
                i += 2
                continue
            if i + 6 > len(text):
                break
            code = int(text[i + 2 : i + 6], 16)
            if 0xD800 <= code < 0xDC00:  # a surrogate pair spans two escapes
                if i + 12 > len(text):
                    break
                low = int(text[i + 8 : i + 12], 16)
                out.append(chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)))
                i += 12
            else:
                out.append(chr(code))
                i += 6
        self._pos = i
        chunk = "".join(out)
        self.streamed += chunk
        return chunk

    def finish(self) -> str:
        """What is left of the input once the arguments are complete."""
        try:
            value = json.loads(self.text)
        except ValueError:
            value = None
        if isinstance(value, dict) and isinstance(value.get(CUSTOM_TOOL_INPUT), str):
            full = value[CUSTOM_TOOL_INPUT]
        elif isinstance(value, str):
            full = value
        else:  # not the shape we asked for: hand the client the raw text
            full = self.text
        rest = full[len(self.streamed) :] if full.startswith(self.streamed) else ""
        self.streamed += rest
        return rest


@dataclass
class _CallState:
    index: int
    position: int  # the n-th call of the turn
    target: ToolTarget | None = None
    call_id: str | None = None
    pending: str = ""
    raw: str = ""  # every argument fragment the parser sent, as sent
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

    def feed(self, index: int, name: str | None, call_id: str | None, arguments: str) -> list[ToolCallDelta]:
        if self._first_index is None:
            self._first_index = index
        if not self.parallel and index != self._first_index:
            return []
        out: list[ToolCallDelta] = []
        call = self._current
        if call is None or call.index != index:
            out += self.finish()
            call = self._current = _CallState(index, self._count)
            self._count += 1
        call.call_id = call.call_id or call_id
        call.raw += arguments
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
            return out + [ToolCallDelta(index, arguments, t.name, call.call_id, t.namespace, t.custom)]
        if call.decoder is not None:
            arguments = call.decoder.feed(arguments)
        return out + ([ToolCallDelta(index, arguments)] if arguments else [])

    def finish(self) -> list[ToolCallDelta]:
        """Close the call in progress: arguments the parser did not stream, then custom input
        still held back by the decoder."""
        call, self._current = self._current, None
        if call is None or call.target is None:
            return []
        out: list[ToolCallDelta] = []
        whole = self.complete(call.position) if self.complete is not None and not _is_json(call.raw) else None
        if whole and whole.startswith(call.raw) and _is_json(whole):
            missing, call.raw = whole[len(call.raw) :], whole
            if call.decoder is not None:
                missing = call.decoder.feed(missing)
            if missing:
                out.append(ToolCallDelta(call.index, missing))
        if call.decoder is not None:
            rest = call.decoder.finish()
            if rest:
                out.append(ToolCallDelta(call.index, rest))
        return out
