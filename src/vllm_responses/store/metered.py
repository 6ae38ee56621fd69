"""Store calls counted for the metrics, by backend and operation."""

from collections.abc import Awaitable, Callable
from typing import Any

from ..common.metrics import STORE_ERRORS, STORE_OPERATIONS, T


# -- the store -------------------------------------------------------------------------------
def instrument_store(store: T) -> T:
    """Count every call of ``store``'s interface (:class:`~.store.base.Store`) and its
    failures, labelled with its ``backend``; the instance's methods are wrapped, the class
    is left alone (a store built directly, as unit tests do, is not counted)."""
    from .base import Store

    names = sorted(n for n, v in vars(Store).items() if getattr(v, "__isabstractmethod__", False) and n != "close")
    for name in names + ["wait_events"]:
        setattr(store, name, _counted(getattr(store, name), store.backend, name))  # type: ignore[attr-defined]
    return store


def _counted(method: Callable[..., Awaitable[T]], backend: str, name: str) -> Callable[..., Awaitable[T]]:
    calls, errors = STORE_OPERATIONS.labels(backend, name), STORE_ERRORS.labels(backend, name)

    async def counted(*args: Any, **kwargs: Any) -> T:
        try:
            return await method(*args, **kwargs)
        except Exception:
            errors.inc()
            raise
        finally:  # once it is over: a write is counted when it is done
            calls.inc()

    counted.__name__ = name
    counted.__doc__ = method.__doc__
    return counted
