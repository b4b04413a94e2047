"""Typed progress events: the core reports them, a front end renders them.

The core calls a ``Listener`` (any callable taking an ``Event``); the default does
nothing. The CLI's renderer lives in ``blanket.ui``; a GUI could be another listener.

Events that may come once per file or once per chunk are cheap to make and the core
throttles the chattiest (``Position`` at most ten times a second), so a listener may do
a little work per event; one that draws must still throttle its own drawing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    """Base class of every event."""


@dataclass(frozen=True)
class FileStored(Event):
    path: bytes
    size: int


@dataclass(frozen=True)
class PackCommitted(Event):
    seq: int
    layer: int
    entries: int
    size: int
    clock_to: bytes


@dataclass(frozen=True)
class SourceWarning(Event):
    """A source file could not be backed up; the run goes on."""

    path: bytes
    message: str


@dataclass(frozen=True)
class Position(Event):
    """The walk has reached ``path`` on the file clock (sent at most ten times a second,
    whether or not anything there changed: progress through unchanged files)."""

    path: bytes


@dataclass(frozen=True)
class Reading(Event):
    """A heartbeat inside a large file: ``done`` of its ``size`` bytes have been read
    (sent per chunk of a file too large to read at once), so a hung mount shows."""

    path: bytes
    done: int
    size: int


@dataclass(frozen=True)
class Planned(Event):
    """A task knows how much it has to do: ``files`` entries and ``bytes`` of content
    (restore after planning; verify, sync and gc may send it too)."""

    task: str
    files: int
    bytes: int


@dataclass(frozen=True)
class ObjectDone(Event):
    """One object (a pack, an index) was checked, copied or deleted: for verify, sync
    and gc progress."""

    key: str
    size: int


@dataclass(frozen=True)
class FileRestored(Event):
    path: bytes
    size: int


@dataclass(frozen=True)
class RestoreProblem(Event):
    """A path could not be restored as asked; the run goes on."""

    path: bytes
    message: str


Listener = Callable[[Event], None]


def ignore(event: Event) -> None:
    """The default listener."""
