"""The transports: HTTP routes (SSE and JSON), the WebSocket, conversations, compact, input_tokens, the
Codex model catalog, the API-key gate and tenancy, OpenAPI. They parse, call the service and frame.

May import: every layer below.
"""
