"""The contract between the Responses layer and whatever generates tokens.

The real implementation is :class:`vllm_responses.engine.vllm_engine.VllmEngine`; unit tests use a
scripted fake. The routes only ever see this interface.
"""

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ..events.deltas import Delta, Finish, Sampling, Started
from ..request.protocol import ResponsesRequest


@dataclass
class Prepared:
    """What :meth:`Engine.prepare` hands back: what the response must report before any
    token exists; each engine subclasses it with its own handle for :meth:`Engine.generate`."""

    sampling: Sampling


class Engine(ABC):
    """Generates one response's semantic deltas.

    Contract:
    - :meth:`prepare` does every check that can fail before the first event (unknown
      model, bad parameters, prompt too long, template errors) and raises
      :class:`~vllm_responses.common.errors.APIError` for them; it starts no generation.
    - :meth:`generate` first yields :class:`~vllm_responses.events.deltas.Started` once the
      engine has accepted the request; before that it may still raise
      :class:`~vllm_responses.common.errors.APIError` (parameters the engine checks on submission),
      and the caller sends no event until then. It then yields deltas in model order and
      ends with exactly one :class:`~vllm_responses.events.deltas.Finish`. A failure after
      ``Started`` raises :class:`~vllm_responses.events.deltas.EngineFailure`, carrying the usage
      so far.
    - Closing the iterator early (client gone) aborts the generation at once.
    """

    @abstractmethod
    async def prepare(self, request: ResponsesRequest, items: list[Any]) -> Prepared:
        """Render ``items`` (the whole context the model sees: history then the request's
        own input, see :mod:`~vllm_responses.core.history`) with the request's instructions,
        tools and parameters, and validate; return the handle for :meth:`generate`."""

    @abstractmethod
    def generate(self, prepared: Prepared, request_id: str) -> AsyncIterator[Started | Delta | Finish]:
        """Run the generation prepared by :meth:`prepare` (``request_id`` names it in the engine)."""

    def input_tokens(self, prepared: Prepared) -> int:
        """The length of the prompt :meth:`prepare` rendered (``POST /v1/responses/input_tokens``)."""
        raise NotImplementedError(f"{type(self).__name__} does not count tokens")
