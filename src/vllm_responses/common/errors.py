"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}`` with string codes.

Every failure that reaches a client goes through :class:`APIError`, so no route ever
answers with a traceback or a 500 for something the client did.
"""

from http import HTTPStatus
from typing import Any

import orjson


class APIError(Exception):
    """An error known before streaming starts; answered as JSON with ``status``."""

    def __init__(
        self,
        message: str,
        *,
        status: int = HTTPStatus.BAD_REQUEST,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = int(status)
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def json(self) -> bytes:
        return orjson.dumps(self.body())


def invalid_request(message: str, param: str | None = None, code: str | None = "invalid_value") -> APIError:
    return APIError(message, param=param, code=code)


def model_not_found(model: str) -> APIError:
    return APIError(
        f"The model `{model}` does not exist.",
        status=HTTPStatus.NOT_FOUND,
        param="model",
        code="model_not_found",
    )


def context_length_exceeded(message: str) -> APIError:
    return APIError(message, param="input", code="context_length_exceeded")


def store_unavailable(detail: str) -> APIError:
    """The store cannot be reached: a 503, which clients retry."""
    return APIError(
        f"The response store is unavailable ({detail}). Retry later, or send `store: false` with the whole "
        "conversation in `input`.",
        status=HTTPStatus.SERVICE_UNAVAILABLE,
        type="server_error",
        code="store_unavailable",
    )


def request_too_large(limit: int) -> APIError:
    return APIError(
        f"The request body is larger than this server accepts ({limit} bytes).",
        status=HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        code="request_too_large",
    )


def not_found(what: str, ident: str, param: str | None, code: str | None) -> APIError:
    return APIError(f"{what} with id '{ident}' not found.", status=HTTPStatus.NOT_FOUND, param=param, code=code)


ENGINE_DEAD = "The inference engine has died; this server cannot generate until it is restarted. Retry later."


def engine_dead() -> APIError:
    """vLLM reports its engine dead (unrecoverable): a 503 that clients retry, as on vLLM's own routes."""
    return APIError(ENGINE_DEAD, status=HTTPStatus.SERVICE_UNAVAILABLE, type="server_error", code="engine_dead")


OVERLOADED = "server_is_overloaded"


def overloaded(message: str) -> APIError:
    """The engine cannot take the request now (its queue full, or paused: vLLM's admission
    control): a 503 that clients retry, as on vLLM's own routes. Once a stream has begun (a
    background response) it ends ``failed`` with ``server_error``: the codes of a response's
    ``error`` (the openai types) have no "overloaded"."""
    return APIError(message, status=HTTPStatus.SERVICE_UNAVAILABLE, type="server_error", code=OVERLOADED)


def invalid_api_key(provided: bool) -> APIError:
    """A missing or wrong API key on a server started with ``--api-key``: OpenAI's 401."""
    message = (
        "Incorrect API key provided."
        if provided
        else (
            "You didn't provide an API key. Send it in an Authorization header using Bearer auth "
            "(Authorization: Bearer YOUR_KEY)."
        )
    )
    return APIError(message, status=HTTPStatus.UNAUTHORIZED, code="invalid_api_key")
