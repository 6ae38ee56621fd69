"""Sealed reasoning: round trip, rotation, foreign blobs dropped, altered blobs refused."""

import base64
import os

import pytest

from vllm_responses.common.sealing import BrokenSeal, ReasoningSealer
from vllm_responses.settings import REASONING_KEYS, Settings

TEXT = "The user asked about the weather. I will call get_weather. ✓ 😀"


def test_round_trip_and_each_seal_differs():
    sealer = ReasoningSealer([os.urandom(32)])
    a, b = sealer.seal(TEXT), sealer.seal(TEXT)
    assert a != b  # a fresh nonce each time
    assert sealer.open(a) == sealer.open(b) == TEXT
    assert TEXT not in a and "weather" not in base64.urlsafe_b64decode(a + "==").decode(errors="replace")


def test_rotation_old_keys_still_open():
    old, new = os.urandom(32), os.urandom(32)
    blob = ReasoningSealer([old]).seal(TEXT)
    rotated = ReasoningSealer([new, old])
    assert rotated.open(blob) == TEXT
    assert ReasoningSealer([old]).open(rotated.seal(TEXT)) is None  # sealed with the new key


def test_foreign_blobs_are_dropped_not_refused(caplog):
    sealer = ReasoningSealer([os.urandom(32)])
    other = ReasoningSealer([os.urandom(32)]).seal(TEXT)
    openai_like = "gAAAAABo" + base64.urlsafe_b64encode(os.urandom(120)).decode()
    for blob in (other, openai_like, "not base64 at all!", ""):
        assert sealer.open(blob) is None
    assert "dropped a reasoning item" in caplog.text


@pytest.mark.parametrize("where", [3, 7, 20, -1])
def test_altered_blob_with_our_key_is_refused(where):
    sealer = ReasoningSealer([os.urandom(32)])
    raw = bytearray(base64.urlsafe_b64decode(sealer.seal(TEXT) + "=="))
    raw[where] ^= 1
    blob = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    if where == 3:  # the key id itself: no longer ours, so dropped
        assert sealer.open(blob) is None
    else:
        with pytest.raises(BrokenSeal):
            sealer.open(blob)


def test_no_key_means_a_random_one_per_process():
    a, b = ReasoningSealer(), ReasoningSealer()
    assert a.ephemeral and b.ephemeral
    assert b.open(a.seal(TEXT)) is None


def test_keys_from_the_environment():
    k1, k2 = os.urandom(32), os.urandom(32)
    env = {REASONING_KEYS: f"{base64.b64encode(k1).decode()}, {base64.urlsafe_b64encode(k2).decode().rstrip('=')}"}
    assert Settings.from_env(env).reasoning_keys == (k1, k2)
    with pytest.raises(ValueError, match="32 bytes"):
        Settings.from_env({REASONING_KEYS: base64.b64encode(b"short").decode()})
    with pytest.raises(ValueError, match="not base64"):
        Settings.from_env({REASONING_KEYS: "%%%"})
