"""Shared by every layer: OpenAI-shaped errors, ids, logs, metrics, sealing, tasks, private files.

Imports nothing of the package but ``settings``.
"""
