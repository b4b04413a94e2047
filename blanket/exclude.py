"""Gitignore-style excludes, matched against paths relative to the source root.

Patterns follow ``.gitignore`` rules (via pathspec's gitignore flavour): ``*.tmp`` matches
at any depth, a leading ``/`` anchors to the source root, a trailing ``/`` matches
directories only, ``**`` spans directories and ``!pattern`` re-includes. As in git, nothing
below an excluded directory can be re-included: the walker does not descend into it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

import pathspec

from blanket.errors import UsageError
from blanket.model import ROOT


class Excluder:
    """Decides which paths a backup leaves out."""

    __slots__ = ("_spec",)

    def __init__(self, patterns: Iterable[str]) -> None:
        """Compile ``patterns``; raise ``UsageError`` naming the first bad one."""
        lines = list(patterns)
        check_patterns(lines)
        self._spec = pathspec.GitIgnoreSpec.from_lines(lines) if lines else None

    def excluded(self, path: bytes, is_dir: bool) -> bool:
        """True when ``path`` (relative, ``/``-joined bytes) is excluded; never the root."""
        if self._spec is None or path == ROOT:
            return False
        text = os.fsdecode(path)
        if is_dir:
            text += "/"
        return bool(self._spec.match_file(text))


def check_patterns(patterns: Iterable[str]) -> None:
    """Raise ``UsageError`` with a one-line message naming the first pattern pathspec rejects."""
    for pattern in patterns:
        try:
            pathspec.GitIgnoreSpec.from_lines([pattern])
        except (ValueError, re.error) as exc:
            raise UsageError(
                f"bad exclude pattern {pattern!r}: {exc}; fix it or leave it out "
                "(patterns follow .gitignore rules)"
            ) from exc
