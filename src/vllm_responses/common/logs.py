"""Our loggers live under vLLM's ``vllm`` logger.

vLLM configures only that logger (its format, its level, ``VLLM_LOGGING_LEVEL``); a logger
outside it reaches no handler, so warnings such as "the store is unavailable" would never
show in the server's log.
"""

import logging
import re


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"vllm.{name}")


# Query parameters whose values are secrets (``?password=``, ``&token=``, ``api_key=``, ...).
_QUERY_SECRET = re.compile(r"(?i)([?&;][^=&#;]*(?:pass|pwd|secret|token|auth|key)[^=&#;]*=)[^&#;]*")


def redact_url(url: str) -> str:
    """A store URL for the log, its secrets replaced by ``***``: the password of the user
    info (which may itself hold ``@``, ``:`` or ``/``: the user info ends at the last ``@``)
    and secret query parameters. A file path (``sqlite://``, ``unix:///path``) has no user
    info and is left as it is."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower().startswith("sqlite"):
        return url
    rest = _QUERY_SECRET.sub(r"\1***", rest)
    at = rest.rfind("@")
    if at < 0 or rest.startswith("/"):  # no user info; an "@" in a socket's path is no secret
        return f"{scheme}://{rest}"
    user, colon, _ = rest[:at].partition(":")
    keep = colon and not any(c in user for c in "@/?#")  # a user name holds none of these: else all is secret
    return f"{scheme}://{user + ':***' if keep else '***'}{rest[at:]}"
