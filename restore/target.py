"""Where a restore may write: never into, over or around the backed-up source."""

from __future__ import annotations

import os

from blanket.errors import UsageError
from blanket.repo import Repository

__all__ = ["check_target"]


def check_target(repos: list[Repository], target: str, force: bool) -> None:
    """Refuse to restore into, over or around the backed-up source without ``force``."""
    if force:
        return
    real = os.path.realpath(target)
    for repo in repos:
        if not repo.headers:
            continue
        source = os.fsdecode(repo.headers[-1].source_path)
        overlap = (
            real == source
            or real.startswith(source.rstrip("/") + "/")
            or source.startswith(real.rstrip("/") + "/")
        )
        if overlap:
            raise UsageError(
                f"--to {target} overlaps the backed-up source {source}; restore elsewhere "
                "or pass --force to overwrite it"
            )
