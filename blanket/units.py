"""Parse and show sizes, durations and points in time, as the command line uses them."""

from __future__ import annotations

import re
from datetime import datetime

from blanket.errors import UsageError

_SIZE_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_TIME_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_size(text: str, what: str = "size") -> int:
    """``2G`` -> 2147483648. Units K, M, G, T are KiB, MiB, GiB, TiB (``iB``/``B`` allowed)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise UsageError(f"{what} {text!r} is not a size; write e.g. 512K, 32M, 2G or plain bytes")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).upper()])


def parse_duration(text: str, what: str = "duration") -> float:
    """``90s``, ``10m``, ``6h``, ``2d`` -> seconds (a plain number is seconds)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m:
        raise UsageError(f"{what} {text!r} is not a duration; write e.g. 90s, 10m, 6h or 2d")
    return float(m.group(1)) * _TIME_UNITS[m.group(2) or "s"]


def parse_at(text: str) -> tuple[int | None, int | None]:
    """``--at``: a layer number, or an ISO time (local time unless it names a zone).

    Returns ``(layer, None)`` or ``(None, time_ns)``.
    """
    if text.isdigit():
        return int(text), None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"--at {text!r} is neither a layer number nor an ISO time like 2026-11-01T08:00"
        ) from None
    if when.tzinfo is None:
        when = when.astimezone()
    seconds = int(when.timestamp())
    return None, seconds * 1_000_000_000 + when.microsecond * 1000 + 999


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def show_time(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9).astimezone().isoformat(timespec="seconds")
