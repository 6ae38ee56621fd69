"""Our loggers live under vLLM's ``vllm`` logger.

vLLM configures only that logger (its format, its level, ``VLLM_LOGGING_LEVEL``); a logger
outside it reaches no handler, so warnings such as "the store is unavailable" would never
show in the server's log.
"""

import logging


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"vllm.{name}")
