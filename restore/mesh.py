"""The repositories a restore (or a mount) reads as one: mirrors of one repository
grouped, and the layer streams of them all, tagged with where each entry came from."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace

from blanket.merge import Located
from blanket.repo import Repository


def group_mirrors(repos: list[Repository]) -> list[Repository]:
    """Stores holding the same repository (same id) become one repository with mirrors."""
    by_id: dict[str, Repository] = {}
    for repo in repos:
        first = by_id.setdefault(repo.config.id, repo)
        if first is not repo:
            first.add_mirror(repo.backend)
    return list(by_id.values())


def mesh_streams(
    repos: list[Repository],
    at_layer: int | None,
    skip: set[tuple[int, int, bytes]],
    at: int | None = None,
    within: Iterable[bytes] = (),
) -> list[Iterable[Located]]:
    """Every layer of every repository (and, as of time ``at``, the old versions gc kept),
    tagged with its origin, without the versions in ``skip`` ((origin, seq, path) of
    content found damaged); only the commits that can hold ``within`` (paths), if any."""

    def tagged(origin: int, stream: Iterable[Located]) -> Iterator[Located]:
        for item in stream:
            if (origin, item.seq, item.entry.path) not in skip:
                yield replace(item, origin=origin) if origin else item

    return [
        tagged(origin, stream)
        for origin, repo in enumerate(repos)
        for stream in repo.layer_streams(up_to_layer=at_layer, at=at, within=within)
    ]
