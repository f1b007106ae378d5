"""Bounded reading of the files the configuration names: the config file, policies and
``${file:...}`` references.

A path in a config may name anything: ``/dev/zero`` (endless), a FIFO (blocks until a
writer comes), a directory, a huge log. So a file is opened without blocking, must be a
regular file, and is read up to a limit, never by trusting its announced size.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class Unreadable(Exception):
    """The file cannot be used; the message says why (never its content)."""


def read_limited(path: Path, limit: int) -> bytes:
    """The whole content of the regular file at ``path``, at most ``limit`` bytes.

    Raises Unreadable when the file cannot be opened, is not a regular file or is longer.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except (OSError, ValueError) as exc:
        raise Unreadable(_reason(exc)) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Unreadable("not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise Unreadable(_reason(exc)) from None
    finally:
        os.close(fd)
    if size > limit:
        raise Unreadable(f"longer than {_size(limit)}")
    return b"".join(chunks)


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, ValueError):  # a NUL byte, or text no file name can hold
        return "not a usable file path"
    return type(exc).__name__


def _size(limit: int) -> str:
    return f"{limit // 1024} KB" if limit % 1024 == 0 else f"{limit} bytes"
