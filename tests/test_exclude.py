"""Gitignore-style excludes: the matcher alone and as the walker applies it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from blanket.errors import EXIT_USAGE, UsageError
from blanket.exclude import Excluder, check_patterns
from blanket.walker import walk

PATTERNS = ["*.tmp", "!keep.tmp", "build/", "/top-only", "**/cache/**", "\udcff*"]


@pytest.fixture
def excluder() -> Excluder:
    return Excluder(PATTERNS)


@pytest.mark.parametrize(
    ("path", "is_dir", "expected"),
    [
        (b"x.tmp", False, True),
        (b"deep/down/x.tmp", False, True),
        (b"x.tmp.not", False, False),
        (b"keep.tmp", False, False),  # negated
        (b"sub/keep.tmp", False, False),
        (b"build", True, True),
        (b"sub/build", True, True),
        (b"build", False, False),  # a file named build is kept
        (b"sub/build", False, False),
        (b"top-only", False, True),
        (b"top-only", True, True),
        (b"sub/top-only", False, False),  # anchored to the root
        (b"cache/x", False, True),
        (b"a/b/cache/x", False, True),
        (b"a/b/cache/deeper/x", False, True),
        (b"cachex/y", False, False),
        (b"\xff\xfeabc", False, True),  # non-UTF-8 name against a non-UTF-8 pattern
        (b"sub/\xffz", True, True),
        (b"\xfe\xff", False, False),
        (b"plain", False, False),
        (b".", True, False),
    ],
)
def test_matching(excluder: Excluder, path: bytes, is_dir: bool, expected: bool) -> None:
    assert excluder.excluded(path, is_dir) is expected


def test_root_is_never_excluded() -> None:
    assert not Excluder(["*", "**", "."]).excluded(b".", True)


def test_empty_pattern_list_excludes_nothing() -> None:
    empty = Excluder([])
    for path in (b"x.tmp", b"build", b"\xff", b"a/b/c"):
        assert not empty.excluded(path, True)
        assert not empty.excluded(path, False)


def test_comments_and_blank_lines_exclude_nothing() -> None:
    ex = Excluder(["", "# a comment"])
    assert not ex.excluded(b"# a comment", False)
    assert not ex.excluded(b"anything", False)


@pytest.mark.parametrize("bad", ["\\", "trailing\\", "!", "[z-a]"])
def test_bad_pattern_is_a_usage_error_naming_it(bad: str) -> None:
    with pytest.raises(UsageError) as info:
        check_patterns(["fine/*.o", bad])
    message = str(info.value)
    assert repr(bad) in message
    assert "\n" not in message
    assert info.value.exit_code == EXIT_USAGE
    with pytest.raises(UsageError):
        Excluder(["ok", bad])


def test_good_patterns_pass() -> None:
    check_patterns(PATTERNS)
    check_patterns([])


def test_walk_applies_excludes(tmp_path: Path, excluder: Excluder) -> None:
    root = os.fsencode(tmp_path)
    dirs = [b"build/obj", b"sub/build", b"a/cache/inner", b"top-only", b"sub/top-only", b"src"]
    for d in dirs:
        os.makedirs(root + b"/" + d)
    files = [
        b"build/obj/x.o",  # inside an excluded dir: must not appear
        b"sub/build/y",
        b"a/cache/inner/z",
        b"a/cache/direct",
        b"top-only/t",
        b"sub/top-only/kept",
        b"src/build",  # a file named build
        b"src/a.tmp",
        b"src/keep.tmp",
        b"src/main.c",
        b"\xff\xfe",
        b"\xfe",
    ]
    for f in files:
        with open(root + b"/" + f, "wb"):
            pass
    errors: list[tuple[bytes, OSError]] = []
    got = [
        i.path for i in walk(root, excluder=excluder, on_error=lambda p, e: errors.append((p, e)))
    ]
    assert errors == []
    assert [p for p in got if not p.startswith(b"a/cache")] == [
        b".",
        b"a",
        b"src",
        b"src/build",
        b"src/keep.tmp",
        b"src/main.c",
        b"sub",
        b"sub/top-only",
        b"sub/top-only/kept",
        b"\xfe",
    ]
    # Whatever pathspec says of the cache directory itself, nothing below it comes out.
    assert [p for p in got if p.startswith(b"a/cache/")] == []


def test_excluded_pointer_ancestor_is_not_entered_on_resume(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path)
    os.makedirs(root + b"/build/x")
    os.makedirs(root + b"/late")
    Path(os.fsdecode(root + b"/build/x/y")).write_text("y")  # would come next
    got = [
        i.path for i in walk(root, after=b"build/x", excluder=Excluder(["build/"]), on_error=print)
    ]
    assert got == [b"late"]
