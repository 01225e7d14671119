"""Ordered registries: lists whose order matters (checkpoint readers are tried in turn, report
figures are drawn in turn), each entry known by a name."""

from __future__ import annotations

from collections.abc import Callable

from ibtools.errors import InputError

__all__ = ["insert_ordered"]


def insert_ordered(entries: list, entry, name: Callable, *, before: str | None, what: str):
    """Put ``entry`` into ``entries`` in place: before the entry named ``before``, else last;
    an entry of the same name (``name(entry)``) is replaced.  ``what`` names the kind of entry
    in the error for an unknown ``before``.  Returns ``entry``."""
    names = [name(e) for e in entries]
    if before is not None and before not in names:
        raise InputError(f"before={before!r} names no registered {what}; known: {names}")
    entries[:] = [e for e in entries if name(e) != name(entry)]
    names = [name(e) for e in entries]
    entries.insert(names.index(before) if before is not None else len(entries), entry)
    return entry
