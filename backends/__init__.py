"""Storage backends. :func:`open_backend` is the one place that knows them all and stacks
the wrappers (:mod:`blanket.backends.wrappers`, :mod:`blanket.backends.ratelimit`) around
them."""

from __future__ import annotations

import os
import re
import threading
from urllib.parse import unquote, urlsplit

from blanket.backends.base import Backend
from blanket.backends.local import LocalBackend
from blanket.backends.memory import MemoryBackend
from blanket.backends.ratelimit import RateLimitedBackend
from blanket.backends.wrappers import RetryingBackend
from blanket.errors import UsageError

__all__ = ["Backend", "open_backend"]

_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_FORMS = "a directory path, file:///absolute/path or s3://bucket/prefix"

_memory_stores: dict[str, MemoryBackend] = {}
_memory_lock = threading.Lock()


def open_backend(
    url: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    limit_upload: float | None = None,
    limit_download: float | None = None,
    retries: bool = True,
) -> Backend:
    """Open the store that ``url`` names; nothing is created or contacted yet.

    Accepts a plain path or ``file:///abs/path`` (a local directory), ``memory://name``
    (one in-memory store per name in this process) and ``s3://bucket/prefix`` (AWS S3 or
    an S3-compatible store at ``endpoint_url``, else ``AWS_ENDPOINT_URL``; ``region``
    else the standard AWS chain). Raises UsageError for anything else, and for an
    ``endpoint_url`` or ``region`` given with a URL that is not ``s3://``.

    The stack, innermost first: the store; :class:`RateLimitedBackend` when a limit
    (bytes per second) is given; :class:`RetryingBackend` for S3 unless ``retries`` is
    false. A local or memory store is not wrapped in retries: it never raises a retriable
    error, and without limits it is returned bare.
    """
    backend, remote = _open_store(url, endpoint_url, region)
    if limit_upload or limit_download:
        backend = RateLimitedBackend(backend, limit_upload or None, limit_download or None)
    if remote and retries:
        backend = RetryingBackend(backend)
    return backend


def _open_store(url: str, endpoint_url: str | None, region: str | None) -> tuple[Backend, bool]:
    """The bare store, and whether it is remote (worth retrying)."""
    match = _SCHEME_RE.match(url)
    scheme = match.group()[:-3].lower() if match else ""
    if scheme != "s3" and (endpoint_url or region):
        option = "--endpoint-url" if endpoint_url else "a region"
        raise UsageError(f"{option} applies only to s3:// repository URLs, not {url!r}")
    if match is None:
        if not url:
            raise UsageError(f"empty repository URL; give {_FORMS}")
        return LocalBackend(os.path.expanduser(url)), False
    if scheme == "file":
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost") or not parts.path or parts.query or parts.fragment:
            raise UsageError(f"bad file URL {url!r}; write file:///absolute/path")
        return LocalBackend(unquote(parts.path)), False
    if scheme == "memory":
        name = url[match.end() :]
        if not name:
            raise UsageError(f"bad memory URL {url!r}; write memory://name")
        with _memory_lock:
            return _memory_stores.setdefault(name, MemoryBackend(name)), False
    if scheme == "s3":
        from blanket.backends.s3 import S3Backend, parse_s3_url  # boto3 only when needed

        bucket, prefix = parse_s3_url(url)
        return S3Backend(bucket, prefix, endpoint_url=endpoint_url, region=region), True
    raise UsageError(f"unsupported repository URL {url!r}; give {_FORMS}")
