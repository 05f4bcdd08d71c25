"""Which ledger a store namespace uses, and `open_ledger`, the one way to get a `Ledger`.

`p2e ledger init` records the choice in the store (`ns:ledger:config`), so every later command,
tool and actor of that namespace opens the same ledger without being told again. Nothing
recorded means the embedded ledger.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from p2e.errors import CorruptData, InvalidArgument
from p2e.ledger.base import Ledger
from p2e.settings import settings as env_settings

if TYPE_CHECKING:
    from p2e.store import EventLog

Backend = Literal["embedded", "canton"]


class LedgerSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: Backend = "embedded"
    url: str | None = None
    """Canton: the Ledger API (gRPC) URL, e.g. http://localhost:6865."""
    operator: str = "p2e-operator"
    """Canton: the party hint of the issuer/operator, allocated by `init`."""


def load_settings(store: EventLog) -> LedgerSettings | None:
    key = store.keys.ledger.config
    raw = store.get(key)
    if raw is None:
        return None
    try:
        return LedgerSettings.model_validate_json(raw)
    except ValidationError as e:
        raise CorruptData(key, f"not ledger settings ({e.errors()[0]['msg']})") from e


def save_settings(store: EventLog, settings: LedgerSettings) -> None:
    key = store.keys.ledger.config
    store.put(key, settings.model_dump_json())


def open_ledger_on(
    store: EventLog, backend: Backend | None = None, url: str | None = None, operator: str | None = None
) -> Ledger:
    """The ledger of `store`'s namespace: `backend`/`url` if given, else the recorded settings,
    else the embedded ledger. The caller closes it."""
    settings = load_settings(store) or LedgerSettings()
    backend = backend or settings.backend
    if backend == "embedded":
        from p2e.ledger.embedded import EmbeddedLedger

        return EmbeddedLedger(store.url, store.keys.ns)
    if backend == "canton":
        import redis

        from p2e.ledger.canton import CantonLedger, CommandIndex

        target = url or settings.url or env_settings().canton_url
        if not target:
            raise InvalidArgument(
                "the Canton ledger needs a Ledger API URL: pass url=..., set P2E_CANTON_URL, "
                "or record it with `p2e ledger init --backend canton --url http://localhost:6865`"
            )
        commands = CommandIndex(redis.Redis.from_url(store.url), store.keys.ns)  # pins command ids
        return CantonLedger.connect(target, operator=operator or settings.operator, commands=commands)
    raise InvalidArgument(f"unknown ledger backend {backend!r}; use 'embedded' or 'canton'")


def open_ledger(
    store_url: str | None = None,
    namespace: str | None = None,
    backend: Backend | None = None,
    url: str | None = None,
) -> Ledger:
    """Open the ledger: the store at `store_url` (else P2E_REDIS_URL, else the embedded Valkey)
    under `namespace` (else P2E_NAMESPACE, else "p2e"); backend and Canton URL as recorded by
    `p2e ledger init` unless given here."""
    from p2e.store import connect

    store = connect(store_url, namespace)
    try:
        return open_ledger_on(store, backend, url)
    finally:
        store.close()
