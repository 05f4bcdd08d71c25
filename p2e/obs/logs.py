"""Structured logs: every record carries the ids of the work it is about, and no secret.

`log_context(conversation=..., branch=..., episode=...)` sets the ids for the code it wraps (a
context variable, so asyncio tasks started inside inherit them, and concurrent conversations on
one event loop do not mix); `bind(logger, ...)` fixes them on a logger instead. The handler that
`configure_logging` installs writes them as `key=value` suffixes, or as JSON lines when
`P2E_LOG_FORMAT=json` (one object per line, for log shippers), and masks secrets
(`p2e.redact`).
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from types import MappingProxyType
from typing import IO, Any, Literal

from p2e.errors import InvalidArgument
from p2e.redact import RedactingFilter
from p2e.settings import settings

ID_FIELDS: tuple[str, ...] = ("rollout", "episode", "conversation", "branch", "agent")
"""The ids a record can carry, in the order the text format shows them."""

_ids: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "p2e_log_ids", default=MappingProxyType({})
)

Format = Literal["text", "json"]


@contextlib.contextmanager
def log_context(**ids: str | None) -> Iterator[None]:
    """Records logged inside carry these ids (None values are left out)."""
    _check(ids)
    token = _ids.set({**_ids.get(), **{k: str(v) for k, v in ids.items() if v is not None}})
    try:
        yield
    finally:
        _ids.reset(token)


class _Bound(logging.LoggerAdapter[logging.Logger]):
    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def bind(logger: logging.Logger | str, **ids: str) -> logging.LoggerAdapter[logging.Logger]:
    """A logger whose records carry `ids` (on top of any `log_context`)."""
    _check(ids)
    return _Bound(logging.getLogger(logger) if isinstance(logger, str) else logger, ids)


def _check(ids: Mapping[str, object]) -> None:
    unknown = set(ids) - set(ID_FIELDS)
    if unknown:
        raise InvalidArgument(f"unknown log id(s) {sorted(unknown)}; use {', '.join(ID_FIELDS)}")


class ContextFilter(logging.Filter):
    """Copies the context's ids onto each record (ids given as `extra=` or by `bind` win)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for k, v in _ids.get().items():
            if k not in record.__dict__:
                record.__dict__[k] = v
        return True


def record_ids(record: logging.LogRecord) -> dict[str, str]:
    return {k: str(record.__dict__[k]) for k in ID_FIELDS if record.__dict__.get(k) is not None}


class TextFormatter(logging.Formatter):
    """`2026-11-25 14:04:05 WARNING p2e.driver: message conversation=c1 branch=main`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = record_ids(record)
        if not ids:
            return line
        first, nl, rest = line.partition("\n")  # ids on the message line, before any traceback
        return first + " " + " ".join(f"{k}={v}" for k, v in ids.items()) + nl + rest


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (ISO 8601, UTC), level, logger, msg, the ids, exc."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            **record_ids(record),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        return json.dumps(out, ensure_ascii=False, default=str)


def make_handler(fmt: Format = "text", stream: IO[str] | None = None) -> logging.Handler:
    """A handler with p2e's ids, format and redaction (redaction runs last, on the final text)."""
    if fmt not in ("text", "json"):
        raise InvalidArgument(f"log format {fmt!r} is not one of text, json (P2E_LOG_FORMAT)")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    # a mark of ours on the stdlib's handler, so a second configure replaces it, not stacks
    handler._p2e = True  # type: ignore[attr-defined]
    return handler


def configure_logging(
    level: int | str | None = None,
    fmt: Format | None = None,
    stream: IO[str] | None = None,
    logger: str = "",
) -> logging.Handler:
    """Install p2e's handler on `logger` (the root by default), replacing one installed before.

    Defaults come from P2E_LOG_LEVEL (WARNING) and P2E_LOG_FORMAT (text). Safe to call again,
    e.g. in each Ray actor's constructor: the handler is replaced, never duplicated."""
    fmt = fmt or settings().log_format
    raw = level if level is not None else settings().log_level
    lvl = logging.getLevelName(raw.upper()) if isinstance(raw, str) else raw
    if not isinstance(lvl, int):
        raise InvalidArgument(f"log level {raw!r} is not one of DEBUG, INFO, WARNING, ERROR (P2E_LOG_LEVEL)")
    handler = make_handler(fmt, stream)
    target = logging.getLogger(logger)
    for h in list(target.handlers):
        if getattr(h, "_p2e", False):
            target.removeHandler(h)
    target.addHandler(handler)
    target.setLevel(lvl)
    return handler
