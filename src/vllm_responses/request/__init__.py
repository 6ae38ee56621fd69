"""What a request means: the typed view of a create body, its validation, parameters, items, the
translation to a chat request, and the files it carries.

May import: ``common``, ``store``, ``settings``, ``events``.
"""
