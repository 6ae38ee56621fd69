"""What a long history costs before the engine, paid once per piece instead of every turn.

Codex resends its whole history every turn (≈20k tokens of instructions, then a tool loop
that grows to 100k+). Without a cache every turn tokenizes the whole rendered prompt and
validates every input item again, though all but the last few are unchanged. Two caches,
both exact by construction and bounded in memory, one set per API process:

- :class:`PromptTokenizer`: the rendered prompt is cut at special tokens (``<|im_start|>``,
  ``<|im_end|>``, ...); each piece between them is tokenized on its own, and a piece seen
  before costs a dictionary lookup. A Hugging Face fast tokenizer splits its input at added
  tokens before anything else runs (``AddedVocabulary``, leftmost-longest), then normalizes,
  pre-tokenizes and runs the model on each part separately, so the pieces' ids, joined with
  the special tokens' ids, are the whole prompt's ids. Where that could fail the cache is
  off or the request falls back (see :meth:`PromptTokenizer.refusal`, :meth:`encode`), and a
  self-check against the real tokenizer runs at start-up. Special-token text inside user
  content is cut like any other: the full tokenization reads it as the special token too
  (vLLM's chat route does the same), and the ids must be the same.
- :class:`LRU` of validated input items (``protocol.parse_items``), keyed by the item's
  JSON: the same JSON validates to the same item.

Rendering the chat template is not cached: a template sees the whole conversation (where
the last user message is, whether a turn comes after it, tools), so an earlier message's
text may change with a later one, and nothing short of rendering tells.

No vLLM import here: ``vllm_engine`` hands vLLM's tokenizer in and installs the cache where
vLLM tokenizes a rendered prompt.
"""

import re
import sys
from array import array
from typing import Any

from ..common.logs import get_logger
from ..common.lru import DEFAULT_MAX_BYTES, LRU, _salt_key

logger = get_logger(__name__)


# Probes for the start-up self-check: text on either side of a special token that tokenizers
# treat specially at a string's start or end (prefix spaces, whitespace runs, bytes of
# multi-byte characters, digits, what could join the special token's own characters).
_PROBES = ["", " a", "a ", "  ", "\n\n", " \n", "Hello world", "日本語😀", "123", "\t", "x<|", "|>y"]


class PromptTokenizer:
    """A rendered prompt's token ids, with the pieces between special tokens cached.

    ``tokenize(texts)`` is the tokenizer itself, called as vLLM calls it (``tokenizer(texts,
    add_special_tokens=False)["input_ids"]`` on a list), so whatever it does to a text it
    does to each piece. ``refusal`` says why the cache is off for this tokenizer (None: on).
    """

    def __init__(self, tokenizer: Any, max_bytes: int = DEFAULT_MAX_BYTES, self_check: bool = True) -> None:
        self.tokenizer = tokenizer
        self.pieces: LRU[str | tuple[bytes, str], array] = LRU(max_bytes)
        self.tokens_reused = 0
        self.tokens_tokenized = 0
        self.special: dict[str, int] = {}
        self.refusal = self._refusal()
        self._pattern: re.Pattern[str] | None = None
        if self.refusal is None:
            self._pattern = re.compile("|".join(re.escape(s) for s in sorted(self.special, key=len, reverse=True)))
            if self_check:
                self.refusal = self._self_check()
        if self.refusal is not None:
            logger.info("prompt token cache off for this tokenizer: %s", self.refusal)

    @property
    def enabled(self) -> bool:
        return self.refusal is None and self.pieces.max_bytes > 0

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return list(self.tokenizer(texts, add_special_tokens=False)["input_ids"])

    def tokenize_pieces(self, texts: list[str]) -> list[list[int]]:
        """One tokenizer call per piece, as vLLM tokenizes a prompt: each runs on one core,
        the GIL released. A list in one call would run on every core at once (the Rust
        tokenizer's thread pool) and, for a fresh long history, take them from the event
        loop and the engine while it lasts (``bench_stall.py``'s ``cold``)."""
        return [self.tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]

    def _refusal(self) -> str | None:
        """Why cutting at special tokens might not give the tokenizer's ids, or None.

        Cut only at special tokens matched on the raw text (``normalized=False``) that absorb
        no neighbouring whitespace (``lstrip``/``rstrip``) and that no other added token can
        overlap or extend: then every occurrence of one is a split the tokenizer makes too,
        and the text before it is matched the same alone as inside the whole.
        """
        if not getattr(self.tokenizer, "is_fast", False):
            return "not a fast (Rust) tokenizer"
        if getattr(self.tokenizer, "split_special_tokens", False):
            return "split_special_tokens is set"
        added = getattr(self.tokenizer, "added_tokens_decoder", None)
        if not isinstance(added, dict):
            return "no added-token table"
        tokens = [(token_id, token) for token_id, token in added.items() if getattr(token, "content", "")]
        if any(getattr(t, "single_word", False) for _, t in tokens):
            return "an added token is single_word (its match depends on the characters around it)"
        raw = [t.content for _, t in tokens if not getattr(t, "normalized", False)]
        suffixes = {o[k:] for o in raw for k in range(1, len(o))}
        for token_id, t in tokens:
            if (
                t.special
                and not t.normalized
                and not t.lstrip
                and not t.rstrip
                and not _overlapped(t.content, raw, suffixes)
            ):
                self.special[t.content] = token_id
        if not self.special:
            return "no special token to cut at"
        return None

    def _self_check(self) -> str | None:
        """Compare whole and cut tokenization on probes around up to 8 special tokens."""
        specials = sorted(self.special, key=self.special.__getitem__)[:8]
        texts = [a + s + b for s in specials for a in _PROBES for b in _PROBES]
        texts += [
            a + s + b + t + c
            for s in specials[:3]
            for t in specials[:3]
            for a in _PROBES[:5]
            for b in _PROBES[:5]
            for c in _PROBES[:5]
        ]
        try:
            whole = self.tokenize(texts)
            cuts = [self.split(text) for text in texts]
            pieces = list(dict.fromkeys(p for parts in cuts for p in parts if isinstance(p, str)))
            alone = dict(zip(pieces, self.tokenize_pieces(pieces)))
        except Exception as exc:  # noqa: BLE001 - a tokenizer that cannot take a list, or breaks on a probe
            return f"self-check failed: {type(exc).__name__}: {exc}"
        for text, w, parts in zip(texts, whole, cuts):
            cut = [i for p in parts for i in ([p] if isinstance(p, int) else alone[p])]
            if list(w) != cut:
                return f"self-check: {text!r} tokenizes to {list(w)} whole but {cut} cut at special tokens"
        return None

    def split(self, text: str) -> list[str | int]:
        """The text pieces between special tokens and the special tokens' ids, in order."""
        assert self._pattern is not None
        parts: list[str | int] = []
        at = 0
        for match in self._pattern.finditer(text):
            if match.start() > at:
                parts.append(text[at : match.start()])
            parts.append(self.special[match.group()])
            at = match.end()
        if at < len(text):
            parts.append(text[at:])
        return parts

    def encode(self, text: str, encode_kwargs: dict[str, Any], salt: str | None = None) -> list[int] | None:
        """``tokenizer(text, **encode_kwargs)["input_ids"]``, or None where the caller must
        tokenize the whole text itself: the cache is off, or the arguments ask for more than
        plain ids (special tokens added, offsets).

        Truncation cuts the ids as the tokenizer does (a single sequence without special
        tokens: the whole encoding, then ``max_length`` kept from ``truncation_side``). vLLM
        asks for it on every prompt (``max_length``: the context + 1), so a prompt longer than
        the context is tokenized once, not once here and again by the tokenizer.

        ``salt``: the request's ``cache_salt``, part of every piece's key, so that how fast a
        prompt is tokenized tells nothing about what requests of another salt sent."""
        if (
            not self.enabled
            or encode_kwargs.get("add_special_tokens", True)
            or set(encode_kwargs) - {"add_special_tokens", "truncation", "max_length"}
        ):
            return None
        parts = self.split(text)
        prefix = _salt_key(salt)
        found: dict[str, Any] = {}
        for part in parts:
            if isinstance(part, str) and part not in found:
                hit = self.pieces.get((prefix, part) if prefix else part)
                if hit is not None:
                    found[part] = hit
        missing = list(dict.fromkeys(p for p in parts if isinstance(p, str) and p not in found))
        if missing:
            for piece, piece_ids in zip(missing, self.tokenize_pieces(missing)):
                stored = array("i", piece_ids)
                found[piece] = stored
                key: str | tuple[bytes, str] = (prefix, piece) if prefix else piece
                # What the entry really holds: the text, the ids (``sys.getsizeof``: the
                # objects with their headers), a key tuple when salted (its digest shared).
                weight = sys.getsizeof(piece) + sys.getsizeof(stored) + (sys.getsizeof(key) if prefix else 0)
                self.pieces.put(key, stored, weight)
        ids: list[int] = []
        for part in parts:
            if isinstance(part, int):
                ids.append(part)
            else:
                ids.extend(found[part])
        fresh = sum(len(found[p]) for p in missing)
        self.tokens_tokenized += fresh
        self.tokens_reused += len(ids) - fresh
        max_length = encode_kwargs.get("max_length")
        if encode_kwargs.get("truncation") and max_length is not None and len(ids) > max_length:
            side = getattr(self.tokenizer, "truncation_side", "right")
            if side == "right":
                return ids[:max_length]
            if side == "left":
                return ids[len(ids) - max_length :]
            return None  # a side we do not know: the tokenizer decides
        return ids


def _overlapped(special: str, others: list[str], suffixes: set[str] | None = None) -> bool:
    """Whether another token could be matched over part of ``special``: a longer one starting
    with it, one holding it after its first character, or one whose tail is the start of it
    (``suffixes``: every proper tail of ``others``). Leftmost-longest matching would then
    pick that one, not ``special``."""
    if suffixes is None:
        suffixes = {o[k:] for o in others for k in range(1, len(o))}
    if any(special[:n] in suffixes for n in range(1, len(special) + 1)):
        return True
    return any(other != special and (other.startswith(special) or special in other[1:]) for other in others)
