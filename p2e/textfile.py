"""Reading the text files users give p2e (specs, agents files, scenarios, templates, rules) safely:
a regular file, of bounded size, in UTF-8, or one `InvalidArgument` line naming the file. A FIFO
or a device would block or never end, and a binary file would surface as a decoding traceback."""

from __future__ import annotations

import codecs
import os
import stat
from pathlib import Path

from p2e.errors import InvalidArgument

MAX_BYTES = 16 * 1024 * 1024
"""The largest file p2e reads; far above any spec or template, small enough to hold in memory."""


def read_text(path: str | Path, what: str, limit: int = MAX_BYTES) -> str:
    """The file's text; `what` ("rollout spec", "judge template", ...) names it in errors."""
    path = Path(path)
    return _decode(read_bytes(path, what, limit), path, what)


def read_bytes(path: str | Path, what: str, limit: int = MAX_BYTES) -> bytes:
    """The file's bytes, with the same checks (for binary formats: a Parquet scenario file)."""
    path = Path(path)
    try:
        _check(os.stat(path), path, what, limit)  # before opening: opening a device can act on it
        # O_NONBLOCK: a FIFO swapped in since the stat must not wait for a writer
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as f:
            _check(os.fstat(fd), path, what, limit)
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise InvalidArgument(f"no such {what}: {path} (not found)") from None
    except OSError as e:
        raise InvalidArgument(f"cannot read {what} {path}: {e.strerror or e}") from None
    if len(data) > limit:  # it grew after the stat
        raise _too_large(path, what, limit)
    return data


def _check(st: os.stat_result, path: Path, what: str, limit: int) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise InvalidArgument(f"{what} {path} is a directory; give a file")
    if not stat.S_ISREG(st.st_mode):
        raise InvalidArgument(f"{what} {path} is not a regular file (a pipe, device or socket); give a file")
    if st.st_size > limit:
        raise _too_large(path, what, limit)


def _too_large(path: Path, what: str, limit: int) -> InvalidArgument:
    return InvalidArgument(f"{what} {path}: too large (over {limit // 2**20} MB, the most p2e reads)")


def _decode(data: bytes, path: Path, what: str) -> str:
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):  # (UTF-32's marks start alike)
        raise InvalidArgument(
            f"{what} {path}: not UTF-8 text (it starts with a UTF-16 byte-order mark); save it as UTF-8"
        )
    try:
        text = data.decode("utf-8-sig")  # a UTF-8 byte-order mark is dropped
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise InvalidArgument(
            f"{what} {path}: not UTF-8 text (byte 0x{data[e.start]:02x} at line {line}: {e.reason}; "
            "a binary file?); save it as UTF-8"
        ) from None
    if "\0" in text:
        line = text.count("\n", 0, text.index("\0")) + 1
        raise InvalidArgument(f"{what} {path}: not text (a NUL byte at line {line}; a binary file?)")
    return text
