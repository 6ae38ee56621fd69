"""The ``Engine`` contract and the vLLM adapter (the only code that imports vLLM internals), tool-call
decoding and the prompt-token cache.

May import: ``common``, ``settings``, ``events``, ``request``.
"""
