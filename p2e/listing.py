"""Listing conversations by page: newest first, filtered by rollout, status and age.

The filters that the store indexes answer cost no record read: `since` is a range of the id
index (scored by creation time), `rollout` a scan of the name index (an episode's attempts are
named `<rollout>.<episode>.<n>`). A status is the machine's, so it is rebuilt per conversation
(from its latest snapshot): only for the page shown, or, with a status filter, for the
conversations read until the page is full.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from typing import get_args

from pydantic import BaseModel

from p2e.conversation import rebuild
from p2e.errors import CorruptData, InvalidArgument
from p2e.machine.state import Status
from p2e.store import ConversationInfo, EventLog

STATUSES = (*get_args(Status), "done")
"""The machine's statuses, and `done`: idle after an answer, or finished."""
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d{1,9})([smhdw])")


def parse_since(text: str, now: float | None = None) -> float:
    """A time from `2h` (ago; s, m, h, d or w) or an ISO date or date-time (local time unless
    it has an offset)."""
    m = _DURATION.fullmatch(text.strip())
    if m:
        return (time.time() if now is None else now) - int(m[1]) * _UNITS[m[2]]
    try:
        return dt.datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise InvalidArgument(
            f"--since {text!r}: give a duration such as 30m, 2h or 7d, or a date such as 2025-01-31 "
            "(or 2025-01-31T14:00)"
        ) from None


class Listed(BaseModel):
    info: ConversationInfo
    status: str


class Page(BaseModel):
    items: list[Listed]
    broken: list[str]
    """The entries on this page that do not parse, as their error lines."""
    offset: int
    more: bool
    total: int | None
    """How many match, when known without reading them all (no status filter)."""


def _status(log: EventLog, info: ConversationInfo) -> str:
    return rebuild(log, log.branch(info.id, info.active)).status


def _matches(status: str, wanted: str) -> bool:
    return status in ("idle", "finished") if wanted == "done" else status == wanted


def list_conversations(
    log: EventLog,
    *,
    rollout: str | None = None,
    status: str | None = None,
    since: float | None = None,
    limit: int = 20,
    offset: int = 0,
) -> Page:
    """Conversations newest first, `offset` of them skipped, at most `limit`."""
    if status is not None and status not in STATUSES:
        raise InvalidArgument(f"--status {status!r}: use one of {', '.join(STATUSES)}")
    ids = log.conversation_ids(since)
    if rollout is not None:
        ours = set(log.matching(f"{rollout}.", limit=None).values())
        ids = [i for i in ids if i in ours]
    items: list[Listed] = []
    broken: list[str] = []
    if status is None:
        for row in log.conversation_rows(ids[offset : offset + limit]):
            listed = _listed(log, row)
            if isinstance(listed, str):
                broken.append(listed)
            else:
                items.append(listed)
        return Page(items=items, broken=broken, offset=offset, more=len(ids) > offset + limit, total=len(ids))
    seen = 0
    for start in range(0, len(ids), max(limit, 50)):
        for row in log.conversation_rows(ids[start : start + max(limit, 50)]):
            listed = _listed(log, row)
            if isinstance(listed, str):
                if offset <= seen < offset + limit:
                    broken.append(listed)
                continue
            if not _matches(listed.status, status):
                continue
            if seen == offset + limit:
                return Page(items=items, broken=broken, offset=offset, more=True, total=None)
            if seen >= offset:
                items.append(listed)
            seen += 1
    return Page(items=items, broken=broken, offset=offset, more=False, total=seen)


def _listed(log: EventLog, row: ConversationInfo | CorruptData) -> Listed | str:
    """The row with its status, or the error line of a broken one."""
    try:
        if isinstance(row, CorruptData):
            raise row
        return Listed(info=row, status=_status(log, row))
    except CorruptData as e:
        return str(e)
