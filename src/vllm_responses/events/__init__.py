"""What a response streams: the engine's semantic deltas, the state machine that turns them into the
exact event sequence, the ``Response`` object, the wire encoding, and the conformance checkers.

May import: ``common``.
"""
