"""Secrets out of everything p2e writes: logs, the store, exports, Rerun recordings, errors.

A model, a tool or an error message can echo an API key (the openai client quotes part of a bad
key in its error; a tool may print its environment). Whatever leaves the process goes through
one `Redactor`: it replaces the values of environment variables whose names say they are secret
(`*_API_KEY`, `*_TOKEN`, `*_SECRET`, `*_PASSWORD`), values registered by the code that reads them
(`register_secret`), strings shaped like well-known keys (`sk-...`, `ghp_...`, `AKIA...`,
`Bearer ...`) and a URL's password, by `[REDACTED]`.

It is on the store's write path (every event is checked before its append; rows, scores,
snapshots, the rollout record and payment reasons too), so the common case, no secret at all, is
one compiled-regex search over the encoded record. Records that keep settings drop secret-named
values (`without_secret_settings`: an inline `api_key` is never stored), and messages that name a
store print its URL through `mask_url`.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "[REDACTED]"

SECRET_ENV = re.compile(r".*_(API_KEY|APIKEY|TOKEN|SECRET|SECRET_KEY|PASSWORD|ACCESS_KEY)$", re.IGNORECASE)
"""Environment variables whose values are secrets (matched on the name)."""

MIN_SECRET_LEN = 8
"""Shorter environment values are not treated as secrets: `X_TOKEN=1` would mask every `1`."""

KEY_PATTERNS: tuple[str, ...] = (
    r"sk-(?:proj-|ant-|live-|test-)?[A-Za-z0-9_\-]{16,}",  # OpenAI, Anthropic, Stripe-style keys
    r"gh[pousr]_[A-Za-z0-9]{30,}",  # GitHub tokens
    r"github_pat_[A-Za-z0-9_]{40,}",
    r"hf_[A-Za-z0-9]{30,}",  # Hugging Face
    r"xox[abposr]-[A-Za-z0-9-]{10,}",  # Slack
    r"AKIA[0-9A-Z]{16}",  # AWS access key id
    r"AIza[0-9A-Za-z_\-]{35}",  # Google API key
    r"(?<=[Bb]earer )[A-Za-z0-9_\-.=+/]{16,}",  # an Authorization header's credential
    r"(?<=://)[^\s/:\"'\\]*:[^\s/@\"'\\]+(?=@)",  # a URL's user:password (never a JSON quote)
    r"(?<=[?&]password=)[^\s&#\"'\\]+",  # a URL's ?password= (redis-py takes one)
)


class Redactor:
    """Replaces secrets in text. Build it once; `refresh()` after the environment changes."""

    def __init__(self, secrets: Iterable[str] = (), env: Mapping[str, str] | None = None):
        self._lock = threading.Lock()
        self._extra = {s for s in secrets if len(s) >= MIN_SECRET_LEN}
        self._env = env
        self._build()

    def _build(self) -> None:
        env = os.environ if self._env is None else self._env
        values = {v for k, v in env.items() if SECRET_ENV.match(k) and len(v) >= MIN_SECRET_LEN}
        exact = sorted(values | self._extra, key=len, reverse=True)  # longest first: no partial masks
        parts = [re.escape(s) for s in exact] + list(KEY_PATTERNS)
        self.secrets = tuple(exact)
        self._text = re.compile("|".join(parts))
        self._bytes = re.compile("|".join(parts).encode())

    def refresh(self) -> None:
        """Re-read the environment (a key exported after the redactor was built)."""
        with self._lock:
            self._build()

    def add(self, secret: str) -> None:
        """Treat `secret` as a secret from now on (e.g. a key read from a config file)."""
        if len(secret) >= MIN_SECRET_LEN and secret not in self._extra:
            with self._lock:
                self._extra.add(secret)
                self._build()

    def text(self, s: str) -> str:
        return self._text.sub(MASK, s) if self._text.search(s) else s

    def data(self, b: bytes) -> bytes:
        """For encoded JSON: secrets are masked inside their strings, which stay valid JSON
        (the mask has no quote or backslash)."""
        return self._bytes.sub(MASK.encode(), b) if self._bytes.search(b) else b

    def value(self, v: Any) -> Any:
        """Strings anywhere inside dicts, lists and tuples (log arguments, tool arguments)."""
        if isinstance(v, str):
            return self.text(v)
        if isinstance(v, dict):
            return {k: self.value(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return type(v)(self.value(x) for x in v)
        return v


_default: Redactor | None = None
_default_lock = threading.Lock()


def default_redactor() -> Redactor:
    """The process-wide redactor (built from the environment on first use)."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Redactor()
    return _default


def redact(text: str) -> str:
    return default_redactor().text(text)


def register_secret(secret: str) -> None:
    """Mask `secret` everywhere from now on. Code that reads a key from anywhere but the
    environment (a config file, a vault) should call this."""
    default_redactor().add(secret)


def refresh_secrets() -> None:
    """Re-read secret-named environment variables (after one was set in this process)."""
    default_redactor().refresh()


SECRET_SETTING = re.compile(
    r"(?:^|.*_)(?:api_?key|token|secret|secret_key|password|passwd|access_key|private_key)$", re.IGNORECASE
)
"""Settings whose values are secrets (matched on the name): `api_key`, `auth_token`, `password`.
`api_key_env` names a variable and is kept."""


def without_secret_settings(value: Any, replacement: str) -> Any:
    """`value` (dicts and lists of settings, e.g. a spec's inline `providers:`) with the value of
    every secret-named setting replaced by `replacement`, which should say where the secret
    came from: for records that keep settings but must never keep a key."""
    if isinstance(value, dict):
        return {
            k: replacement
            if isinstance(k, str) and SECRET_SETTING.match(k) and isinstance(v, str) and v
            else without_secret_settings(v, replacement)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(without_secret_settings(x, replacement) for x in value)
    return value


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_URL_PASSWORD = re.compile(r"([?&](?:ssl_)?password=)[^&#]*")


def mask_url(url: str) -> str:
    """A URL fit to print: its password (`redis://:***@host`, `rediss://user:***@host`,
    `?password=***`, `&ssl_password=***`) or a bare credential (`https://***@host`) masked; the
    rest, which tells a user which server was meant, kept. Every error and log line that names a
    store URL uses it."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    if "@" in authority:
        userinfo, host = authority.rsplit("@", 1)
        user, colon, _ = userinfo.partition(":")
        authority = f"{user}:***@{host}" if colon else f"***@{host}"
    return f"{scheme}://{authority}" + _URL_PASSWORD.sub(r"\1***", tail)


def mask_urls(text: str) -> str:
    """`mask_url` on every URL inside a message (an exception's text, say)."""
    return _URL.sub(lambda m: mask_url(m.group(0)), text)


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in a record's message, arguments and exception text.

    Attach it to handlers (not loggers): a handler's filters see every record it emits,
    whichever logger it came from."""

    def __init__(self, redactor: Redactor | None = None):
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        r = self.redactor or default_redactor()
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: let the handler report it as logging does
            return True
        record.msg, record.args = r.text(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = r.text(record.exc_text)
        if record.stack_info:
            record.stack_info = r.text(record.stack_info)
        for key in ("conversation", "branch", "episode", "rollout"):
            v = record.__dict__.get(key)
            if isinstance(v, str):
                record.__dict__[key] = r.text(v)
        return True
