"""The store: a branching event log on Redis or an embedded Valkey. See `keys.py` for the layout."""

from __future__ import annotations

from p2e.settings import settings
from p2e.store.keys import Keys
from p2e.store.log import BranchInfo, ConversationInfo, EventLog, Segment
from p2e.store.server import (
    ServerInfo,
    embedded_status,
    ensure_embedded,
    password_file,
    stop_embedded,
    store_url,
)


def connect(url: str | None = None, namespace: str | None = None) -> EventLog:
    """Open the store: `url`, else P2E_REDIS_URL, else the embedded Valkey (started if needed)."""
    log = EventLog(url or store_url(), namespace or settings().namespace)
    log.ping()
    return log


__all__ = [
    "BranchInfo",
    "ConversationInfo",
    "EventLog",
    "Keys",
    "Segment",
    "ServerInfo",
    "connect",
    "embedded_status",
    "ensure_embedded",
    "password_file",
    "stop_embedded",
    "store_url",
]
