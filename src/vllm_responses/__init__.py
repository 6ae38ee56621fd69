"""A spec-exact OpenAI Responses API for unmodified vLLM, served through its endpoint-plugin interface."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vllm-responses-plugin")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
