"""Tenancy: whose stored state a request may see, by the API key it presented.

vLLM's ``--api-key`` takes several keys (``--api-key KEY_A KEY_B``), typically one per client.
With two or more, each key is a tenant: the responses, conversations, items and background
runs a key creates are its own, and every other key gets 404 for them, as if they did not
exist (the same answer as for an id nobody made, so nothing tells the two apart). With one
key or none there is nothing to tell apart and every record is shared, as before; so are
records made before tenancy. ``VLLM_RESPONSES_TENANCY=shared`` shares state between all keys.

The store never holds a key: a tenant is ``t_`` + scrypt(key) (a slow, salted hash, so that a
leaked store does not give away weak keys by guessing), computed once per key when the gate
is built, the same in every process and replica. The key gate (:mod:`.auth`) puts the
request's tenant into its ASGI scope; the routes read it with :func:`tenant_of`.
"""

import hashlib
from collections.abc import Iterable, Mapping

from starlette.types import Scope

from ..settings import Tenancy

SCOPE_KEY = "vllm_responses.tenant"
_SALT = b"vllm-responses/tenant/v1"


def tenant_id(key: str) -> str:
    """The tenant of an API key (scrypt: about 50 ms and 16 MiB, once per key at start-up)."""
    return "t_" + hashlib.scrypt(key.encode(), salt=_SALT, n=2**14, r=8, p=1, dklen=16).hex()


def tenants(keys: Iterable[str], mode: Tenancy) -> dict[bytes, str]:
    """Each key's tenant, by the key's SHA-256 digest (what the gate computes anyway): empty
    when state is shared (the mode says so, or there are fewer than two distinct keys)."""
    distinct = sorted(set(keys))
    if mode == "shared" or len(distinct) < 2:
        return {}
    return {hashlib.sha256(key.encode()).digest(): tenant_id(key) for key in distinct}


def tenant_of(scope: Scope | Mapping[str, object]) -> str | None:
    """The tenant the gate found for this request; ``None``: state is shared."""
    tenant = scope.get(SCOPE_KEY)
    return tenant if isinstance(tenant, str) else None
