"""Identifiers in OpenAI's shapes (``resp_…``, ``msg_…``, ``rs_…``, ``fc_…``, ``call_…``)."""

import secrets


def new_id(prefix: str) -> str:
    """A random id; 24 bytes of hex keeps them unguessable, like OpenAI's."""
    return f"{prefix}_{secrets.token_hex(24)}"
