"""One exception hierarchy. Every message says what went wrong and what to do about it.

The CLI prints `str(error)` on one line and exits non-zero, so messages are written for users,
not for stack traces.
"""

from __future__ import annotations

import logging
import re
import sys

from p2e.redact import mask_url, mask_urls

LINE_MAX = 300
"""The longest error line `one_line` gives: it is stored in events and rows and shown in tables."""
_ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[@-_])")  # CSI, OSC, the rest


class P2EError(Exception):
    """Base of every error p2e raises on purpose."""

    exit_code = 1


class NotFound(P2EError):
    """A conversation, branch or artifact that the store does not hold."""

    exit_code = 2


class UnknownConversation(NotFound):
    def __init__(self, conversation: str):
        super().__init__(
            f"unknown conversation {conversation!r}; `p2e conversation list` shows the ones in the store"
        )
        self.conversation = conversation


class UnknownBranch(NotFound):
    def __init__(self, conversation: str, branch: str, known: list[str] | None = None):
        hint = f" (its branches: {', '.join(known)})" if known else ""
        super().__init__(f"conversation {conversation!r} has no branch {branch!r}{hint}")
        self.conversation, self.branch = conversation, branch


class UnknownArtifact(NotFound):
    def __init__(self, ref: str, why: str = ""):
        super().__init__(f"unknown artifact {ref!r}{': ' + why if why else ''}")
        self.ref = ref


class InvalidArgument(P2EError):
    """A value given by the user (CLI argument, API argument) that cannot be used."""

    exit_code = 2


class AmbiguousPrefix(InvalidArgument):
    """The start of an id or name that more than one id or name begins with."""

    def __init__(self, given: str, what: str, matches: list[str], shown: int = 4):
        more = f" and {len(matches) - shown} more" if len(matches) > shown else ""
        super().__init__(
            f"{what} {given!r} is ambiguous: it begins {', '.join(matches[:shown])}{more}; "
            "give more characters"
        )
        self.given, self.matches = given, matches


class SequenceOutOfRange(InvalidArgument):
    def __init__(self, seq: int, length: int, what: str = "branch"):
        last = f"0..{length - 1}" if length else "none: it is empty"
        super().__init__(f"sequence number {seq} is out of range; this {what} holds events {last}")
        self.seq, self.length = seq, length


class EventRejected(P2EError):
    """An event that does not fit the machine's state. It is never stored."""

    def __init__(self, reason: str, seq: int | None = None):
        where = f" at seq {seq}" if seq is not None else ""
        super().__init__(f"event rejected{where}: {reason}")
        self.reason, self.seq = reason, seq


class Conflict(P2EError):
    """Someone else appended to the branch first (optimistic concurrency); reload and retry."""


class StoreError(P2EError):
    """The store could not be used."""


class StoreUnavailable(StoreError):
    def __init__(self, url: str, cause: object = ""):
        url = mask_url(url)  # the message is printed, logged and pickled: never the password
        super().__init__(
            f"cannot reach the store at {url} ({mask_urls(str(cause))}); {_store_fix(url, cause)}"
        )
        self.url = url


def _store_fix(url: str, cause: object) -> str:
    """What to do: mostly start the server, but a managed Redis also refuses a wrong password,
    an untrusted certificate and a client without TLS (it closes the connection)."""
    text = str(cause)
    if any(s in text for s in ("WRONGPASS", "NOAUTH", "password", "uthentication required")):
        return "check the user name and password in P2E_REDIS_URL (redis://USER:PASSWORD@... or ?password=)"
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return (
            "the server's certificate is not trusted: add ?ssl_ca_certs=/path/to/ca.pem to the URL "
            "(or ssl_cert_reqs=none to skip the check)"
        )
    if url.startswith("redis://") and any(s in text for s in ("closed by", "reset by peer")):
        return "check that the server runs; if it expects TLS (managed Redis often does), use rediss://"
    if url.startswith("rediss://") and "SSL" in text:
        return "the TLS handshake failed: check the port, and use redis:// if the server has no TLS"
    return "check that the server runs, or unset P2E_REDIS_URL to use the embedded store (`p2e store start`)"


class StoreLost(StoreError):
    """The store stopped answering in the middle of a rollout (its driver has stopped it)."""

    def __init__(self, url: str, rollout: str, spec: str, cause: object = ""):
        super().__init__(
            f"the store at {mask_url(url)} stopped answering during rollout {rollout} "
            f"({mask_urls(str(cause)) or 'connection lost'}); start it again (the embedded one: "
            f"`p2e store start`), then finish the rollout: p2e rollout run {spec} --resume {rollout}"
        )
        self.rollout = rollout


class CorruptData(StoreError):
    """Data under the p2e prefix that p2e did not write, or that no longer parses."""

    def __init__(self, key: str, why: str):
        super().__init__(
            f"corrupt or foreign data at {key}: {why}; it was not written by this version of p2e "
            "(remove the key, or use another P2E_NAMESPACE)"
        )
        self.key = key


def origin(exc: BaseException) -> BaseException:
    """The exception that started it all: a Ray task error (maybe nested, an actor calling an
    actor) unwrapped to what the remote code raised."""
    ray_exceptions = sys.modules.get("ray.exceptions")  # loaded if Ray made it; never import Ray here
    if ray_exceptions is not None:
        while isinstance(exc, ray_exceptions.RayTaskError) and exc.cause is not None and exc.cause is not exc:
            exc = exc.cause
    return exc


def p2e_cause(exc: BaseException) -> P2EError | None:
    """The p2e error behind `exc` (raised by an actor, maybe through others), to re-raise as
    itself: one clear line for the user instead of Ray's wrapper with the remote traceback."""
    cause = origin(exc)
    return cause if isinstance(cause, P2EError) else None


def one_line(exc: BaseException, limit: int = LINE_MAX) -> str:
    """The original exception on one line, for events, rows and the CLI: `Type: message`, or just
    the message of a p2e error (written for users; its class name is noise). No terminal escapes,
    no remote traceback, at most `limit` characters. The full traceback belongs in the log
    (`log_failure`), not here."""
    exc = origin(exc)
    text = str(exc)
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(exc, pydantic.ValidationError):  # its str is a multi-line table
        text = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors())
    first = next((s for s in map(_printable, _ANSI.sub("", text).splitlines()) if s), "")
    if isinstance(exc, P2EError) and first:
        line = first
    else:
        line = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"


def log_failure(logger: logging.Logger, what: str, exc: BaseException) -> None:
    """Log `what` failed: a p2e error (its message is written for users) as one line at WARNING,
    with its traceback only when DEBUG is on; anything else, a bug, at ERROR with the traceback."""
    if isinstance(origin(exc), P2EError):
        trace = exc if logger.isEnabledFor(logging.DEBUG) else None
        logger.warning("%s: %s", what, one_line(exc), exc_info=trace)
    else:
        logger.error("%s: %s", what, one_line(exc), exc_info=exc)


def _printable(line: str) -> str:
    """`line` with control characters as spaces, and runs of spaces as one."""
    return " ".join("".join(c if c.isprintable() else " " for c in line).split())
