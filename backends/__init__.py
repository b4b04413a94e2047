"""Storage backends. :func:`open_backend` is the one place that knows them all."""

from __future__ import annotations

import os
import re
import threading
from urllib.parse import unquote, urlsplit

from blanket.backends.base import Backend
from blanket.backends.local import LocalBackend
from blanket.backends.memory import MemoryBackend
from blanket.errors import UsageError

__all__ = ["Backend", "open_backend"]

_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_FORMS = "a directory path, file:///absolute/path or s3://bucket/prefix"

_memory_stores: dict[str, MemoryBackend] = {}
_memory_lock = threading.Lock()


def open_backend(url: str) -> Backend:
    """Open the store that ``url`` names; nothing is created or contacted yet.

    Accepts a plain path or ``file:///abs/path`` (a local directory), ``memory://name``
    (one in-memory store per name in this process) and, later, ``s3://bucket/prefix``.
    Raises UsageError for anything else.
    """
    match = _SCHEME_RE.match(url)
    if match is None:
        if not url:
            raise UsageError(f"empty repository URL; give {_FORMS}")
        return LocalBackend(os.path.expanduser(url))
    scheme = match.group()[:-3].lower()
    if scheme == "file":
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost") or not parts.path or parts.query or parts.fragment:
            raise UsageError(f"bad file URL {url!r}; write file:///absolute/path")
        return LocalBackend(unquote(parts.path))
    if scheme == "memory":
        name = url[match.end() :]
        if not name:
            raise UsageError(f"bad memory URL {url!r}; write memory://name")
        with _memory_lock:
            return _memory_stores.setdefault(name, MemoryBackend(name))
    if scheme == "s3":
        raise UsageError("S3 stores are not supported yet in this build; use a local directory")
    raise UsageError(f"unsupported repository URL {url!r}; give {_FORMS}")
