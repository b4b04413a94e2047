"""Which libfuse ``mfusepy`` loads: libfuse 3, found where Debian and others put it.

``mfusepy`` picks its library when imported, asking ``ctypes.util.find_library`` for
``fuse`` (libfuse 2) first and ``fuse3`` second; that search runs ``ldconfig -p`` and
was seen to fail now and then on a busy machine. Naming the file of libfuse 3 in
``FUSE_LIBRARY_PATH`` (its own setting) before the import makes the choice certain.
"""

from __future__ import annotations

import glob
import os

__all__ = ["use_libfuse3"]

_PLACES = (
    "/lib/*-linux-gnu/libfuse3.so.3",
    "/usr/lib/*-linux-gnu/libfuse3.so.3",
    "/usr/lib64/libfuse3.so.3",
    "/usr/lib/libfuse3.so.3",
    "/usr/local/lib/libfuse3.so.3",
)


def use_libfuse3() -> None:
    """Point ``mfusepy`` at libfuse 3 unless ``FUSE_LIBRARY_PATH`` already names one."""
    if os.environ.get("FUSE_LIBRARY_PATH"):
        return
    for pattern in _PLACES:
        found = sorted(glob.glob(pattern))
        if found:
            os.environ["FUSE_LIBRARY_PATH"] = found[0]
            return
