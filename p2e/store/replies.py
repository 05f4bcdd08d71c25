"""redis-py's replies as this project's clients get them, for the type checker.

No client here sets `decode_responses`, so a string reply is always bytes; redis-py (>= 6) types
one as `bytes | str` to cover both settings, and a sorted set's members as a union with score
pairs. These say which one it is, once, instead of narrowing at every read (casts: no check and
no copy at run time).
"""

from __future__ import annotations

from typing import cast


def as_bytes(reply: object) -> bytes:
    """A string reply (GET, HGET, LINDEX, a member of a list or set)."""
    return cast(bytes, reply)


def as_list(reply: object) -> list[bytes]:
    """A list of string replies (LRANGE, ZRANGE without scores, HKEYS)."""
    return cast(list[bytes], reply)


def as_hash(reply: object) -> dict[bytes, bytes]:
    """A hash (HGETALL)."""
    return cast(dict[bytes, bytes], reply)
