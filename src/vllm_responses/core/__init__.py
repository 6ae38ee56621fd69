"""The service and its parts: runs, stored records, history, conversations, background runs,
upkeep, owners, late writes, compaction, capture. One door: :class:`.service.ResponsesService`.

May import: every layer below (``common``, ``store``, ``settings``, ``events``, ``request``, ``engine``).
"""
