"""Ids and names given by their first characters: `e386` for `e386f1c2a9b7`.

Stores find the candidates with a server-side SCAN ... MATCH over their id or name index (see
`match_pattern`): O(n) in the number of ids on the server, but no record or event is read and
only the matches travel. `pick` then decides: an exact id or name wins, one match is the answer,
several are an `AmbiguousPrefix` naming a few, none is a `NotFound`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from p2e.errors import AmbiguousPrefix, NotFound

ENOUGH = 6
"""Matches to collect before a scan stops: more than one is ambiguous, and a few are named."""


def match_pattern(prefix: str) -> str:
    """A Redis glob matching what begins with `prefix` (its glob characters escaped)."""
    return re.sub(r"([*?\[\]\\^])", r"\\\1", prefix) + "*"


def first(items: Iterable[str], limit: int | None = ENOUGH) -> list[str]:
    """The distinct items of a scan, at most `limit` (None: all of them)."""
    out: dict[str, None] = {}
    for item in items:
        out.setdefault(item, None)
        if limit is not None and len(out) >= limit:
            break
    return list(out)


def pick(given: str, what: str, matches: list[str], hint: str) -> str:
    """`given` if it is one of `matches` (an exact id or name), else the only match.

    Raises `AmbiguousPrefix` for several (asking for more characters) and `NotFound` for none,
    saying where to look (`hint`, e.g. "see `p2e rollout list`")."""
    if given in matches:
        return given
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise NotFound(f"no {what} {given!r} (no id or name begins with it); {hint}")
    raise AmbiguousPrefix(given, what, sorted(matches))
