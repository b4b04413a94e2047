"""Typed progress events: the core reports them, a front end renders them.

The core calls a ``Listener`` (any callable taking an ``Event``); the default does
nothing. The CLI's renderer lives in ``blanket.ui``; a GUI could be another listener.
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
