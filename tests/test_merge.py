"""Replay rules, tested as a pure function over hand-made layers."""

from __future__ import annotations

import pytest

from blanket import model
from blanket.errors import IntegrityError
from blanket.merge import Located, replay
from blanket.model import Entry


def f(path: str, since: int, size: int = 1) -> Entry:
    return Entry(model.FILE, path.encode(), size=size, since=since)


def d(path: str, since: int) -> Entry:
    return Entry(model.DIR, path.encode(), since=since)


def x(path: str, since: int) -> Entry:
    return Entry(model.DELETED, path.encode(), since=since)


def layer(n: int, *entries: Entry) -> list[Located]:
    return [Located(e, seq=n * 100 + i, layer=n) for i, e in enumerate(entries)]


def tree(layers: list[list[Located]], at: int | None = None) -> dict[str, int]:
    return {item.entry.path.decode(): item.entry.since for item in replay(layers, at=at)}


def test_newest_version_wins_and_unchanged_paths_come_from_older_layers() -> None:
    l0 = layer(0, d(".", 1), f("a", 1), f("b", 1))
    l1 = layer(1, f("b", 5))
    assert tree([l0, l1]) == {".": 1, "a": 1, "b": 5}
    assert tree([l0, l1], at=4) == {".": 1, "a": 1, "b": 1}


def test_a_marker_deletes_a_path_only_from_its_time_on() -> None:
    l0 = layer(0, d(".", 1), f("a", 1), f("b", 1))
    l1 = layer(1, x("a", 5))
    assert tree([l0, l1]) == {".": 1, "b": 1}
    assert tree([l0, l1], at=3) == {".": 1, "a": 1, "b": 1}


def test_a_directory_marker_hides_its_subtree_even_after_the_directory_returns() -> None:
    l0 = layer(0, d(".", 1), d("p", 1), f("p/old", 1), f("q", 1))
    l1 = layer(1, x("p", 5))
    l2 = layer(2, d("p", 7), f("p/new", 7))
    assert tree([l0, l1, l2]) == {".": 1, "p": 7, "p/new": 7, "q": 1}
    assert tree([l0, l1, l2], at=6) == {".": 1, "q": 1}
    assert tree([l0, l1, l2], at=2) == {".": 1, "p": 1, "p/old": 1, "q": 1}


def test_children_of_a_path_that_became_a_file_are_hidden() -> None:
    l0 = layer(0, d(".", 1), d("p", 1), f("p/c", 1))
    l1 = layer(1, f("p", 5))
    assert tree([l0, l1]) == {".": 1, "p": 5}


def test_clock_order_is_component_wise() -> None:
    l0 = layer(0, d(".", 1), d("a", 1), f("a/b", 1), f("a-b", 1), f("a.b", 1))
    assert list(tree([l0])) == [".", "a", "a/b", "a-b", "a.b"]


def test_a_layer_out_of_clock_order_is_refused() -> None:
    with pytest.raises(IntegrityError, match="out of clock order"):
        list(replay([layer(0, d(".", 1), f("b", 1), f("a", 1))]))


def test_memory_does_not_hold_the_tree() -> None:
    """Replay consumes its input lazily: the first result comes before the input ends."""
    consumed = 0

    def stream() -> object:
        nonlocal consumed
        yield Located(d(".", 1), 0, 0)
        for i in range(100_000):
            consumed += 1
            yield Located(f(f"f{i:06d}", 1), 0, 0)

    out = replay([stream()])  # type: ignore[list-item]
    next(out)
    next(out)
    assert consumed < 10
