"""Sealed reasoning: ``encrypted_content`` on reasoning items, opened again when sent back.

Clients that keep no server state (Codex: ``store: false`` with
``include: ["reasoning.encrypted_content"]``, whole history every turn) hand the model's
reasoning back in this form, so the next prompt can hold it without the client ever being
trusted with a plaintext it could alter unnoticed.

A blob is ``base64url(MAGIC | key id | nonce | AES-256-GCM(reasoning text))``; the magic and
the key id are authenticated data. The key id lets rotation work (several keys open, the
first seals) and tells "not ours" (another server, a key rotated out: the blob is dropped,
since a client replays its whole history every turn) from "ours but altered" (refused).
"""

import base64
import binascii
import hashlib
import os
from collections import Counter

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .logs import get_logger

logger = get_logger(__name__)

MAGIC = b"vr1"
_KID = 4
_NONCE = 12


class Dropped:
    """Blobs dropped while reading one request, logged once when it is read: a request may
    carry a million of them, and a log line each would let one body flood the log."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()

    def add(self, what: str, why: str) -> None:
        self.counts[(what, why)] += 1

    def log(self) -> None:
        if self.counts:
            logger.warning(
                "dropped %s", "; ".join(f"{n} {what}(s) {why}" for (what, why), n in sorted(self.counts.items()))
            )
            self.counts.clear()


_NOT_OURS = "whose encrypted_content was not made by this server"
_ROTATED = "sealed with a key this server does not hold (another server, or a key rotated out)"


class BrokenSeal(Exception):
    """A blob made with one of our keys that does not authenticate: it was altered."""


def key_id(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()[:_KID]


class ReasoningSealer:
    """Seals with the first key, opens with any; see the module docstring for the format."""

    def __init__(self, keys: tuple[bytes, ...] | list[bytes] = ()) -> None:
        if not keys:
            keys = (os.urandom(32),)
            self.ephemeral = True
        else:
            self.ephemeral = False
        self._seal_kid = key_id(keys[0])
        self._seal_key = AESGCM(keys[0])
        self._keys = {key_id(k): AESGCM(k) for k in keys}

    def seal(self, text: str) -> str:
        nonce = os.urandom(_NONCE)
        header = MAGIC + self._seal_kid
        sealed = self._seal_key.encrypt(nonce, text.encode(), header)
        return base64.urlsafe_b64encode(header + nonce + sealed).decode().rstrip("=")

    def open(self, blob: str, what: str = "reasoning item", dropped: Dropped | None = None) -> str | None:
        """The reasoning text; ``None`` when the blob is not ours (to be dropped: counted in
        ``dropped``, whose owner logs it once per request; logged at once without one).

        Raises :class:`BrokenSeal` when it carries one of our key ids but fails to authenticate.
        """
        try:
            raw = base64.urlsafe_b64decode(blob + "=" * (-len(blob) % 4))
        except (binascii.Error, ValueError):
            raw = b""
        header = raw[: len(MAGIC) + _KID]
        if len(raw) < len(header) + _NONCE + 16 or not header.startswith(MAGIC):
            return _drop(dropped, what, _NOT_OURS)
        key = self._keys.get(header[len(MAGIC) :])
        if key is None:
            return _drop(dropped, what, _ROTATED)
        nonce, sealed = raw[len(header) : len(header) + _NONCE], raw[len(header) + _NONCE :]
        try:
            return key.decrypt(nonce, sealed, header).decode()
        except (InvalidTag, UnicodeDecodeError):
            raise BrokenSeal("encrypted_content does not authenticate: it was altered") from None


def _drop(dropped: Dropped | None, what: str, why: str) -> None:
    if dropped is None:
        logger.warning("dropped a %s %s", what, why)
    else:
        dropped.add(what, why)
