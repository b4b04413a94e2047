"""Commit a backup run's sealed packs in order on a background thread.

The run thread seals a pack and hands it over with :meth:`Committer.submit`; one
committer thread waits for the pack's gpg, stores the data and then the index (the
commit point), and records in the local state how far the clock got, while the run
builds the next pack. See docs/decisions.md, "The backup pipeline".
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from blanket.errors import BlanketError
from blanket.indexfmt import IndexHeader
from blanket.model import Entry
from blanket.packer import Sealing


@dataclass
class Sealed:
    """A pack handed to the committer, with what to record once it is committed."""

    sealing: Sealing
    header: IndexHeader
    entries: list[Entry]
    links: dict[tuple[int, int], bytes]


class Committer:
    """Commits sealed packs in clock order on one background thread, while the run goes
    on building the next pack. At most ``depth`` packs wait or commit at once.

    After a pack is committed (data, then index), the same thread records the clock
    pointer (the pack's ``clock-to``) and the hard-link groups met up to it in the
    local state and renews the lease, so the local state never runs ahead of the
    store. If a commit fails, every later one is refused: a pack must never be
    committed after a gap in the clock. The run thread collects finished commits with
    ``done()`` (which raises what a commit raised).
    """

    def __init__(
        self,
        commit: Callable[[Sealed], IndexHeader],
        record: Callable[[IndexHeader, Sealed], None],
        depth: int = 2,
    ) -> None:
        self._commit = commit
        self._record = record
        self._depth = depth
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="blanket-commit")
        self._queue: deque[Future[IndexHeader]] = deque()
        self._failed = False

    def submit(self, sealed: Sealed) -> list[IndexHeader]:
        """Queue ``sealed``; returns the commits finished meanwhile (waiting for the
        oldest when ``depth`` are already queued)."""

        def job() -> IndexHeader:
            if self._failed:
                sealed.sealing.abort()
                raise BlanketError("not committed: an earlier pack of this run failed")
            try:
                final = self._commit(sealed)
                self._record(final, sealed)
                return final
            except BaseException:
                self._failed = True
                raise

        self._queue.append(self._pool.submit(job))  # queued even if an earlier one failed:
        # its job aborts its gpg. Wait only for what is over ``depth`` (never pass a
        # negative count: -1 means "wait for all", which made every commit synchronous)
        return self.done(wait_for=max(0, len(self._queue) - self._depth))

    def done(self, *, wait_for: int = 0) -> list[IndexHeader]:
        """Commits finished so far, in order; waits for the oldest ``wait_for`` of those
        queued (all of them with ``wait_for=-1``)."""
        out: list[IndexHeader] = []
        if wait_for < 0:
            wait_for = len(self._queue)
        while self._queue and (wait_for > 0 or self._queue[0].done()):
            out.append(self._queue.popleft().result())
            wait_for -= 1
        return out

    def close(self) -> None:
        """Let queued commits finish (each is whole or not at all), then stop."""
        self._pool.shutdown(wait=True)
