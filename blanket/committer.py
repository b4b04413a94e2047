"""The commit sink of a backup run: sealed packs committed in order on a background
thread, the local state and the lease kept with them.

The pack assembler seals a pack and hands it over (:meth:`CommitSink.submit`); one
committer thread (:class:`Committer`) waits for the pack's gpg, stores the data and then
the index (the commit point), and records in the local state how far the clock got, in
the same write as the commit's own record, then renews the lease, while the run builds
the next pack. See docs/decisions.md, "The backup pipeline".
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from blanket.errors import BlanketError
from blanket.events import Listener, PackCommitted
from blanket.indexfmt import IndexHeader, escape
from blanket.model import Entry
from blanket.packer import Sealing
from blanket.repo import Repository


@dataclass
class Sealed:
    """A pack handed to the committer, with what to record once it is committed."""

    sealing: Sealing
    header: IndexHeader
    entries: list[Entry]
    links: dict[tuple[int, int], str]  # the hard-link groups met up to it (escaped paths)


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


class CommitSink:
    """Where a run's sealed packs go: commits them in order (:class:`Committer`), and
    with each commit saves the hard-link groups met (only when they changed) and then the
    pass's position (the pack's ``clock-to``, in the commit's own write of the local
    state: once per commit), then renews the lease (``renew``). ``collect`` announces
    finished commits on the run's thread (``PackCommitted``) and raises what a commit
    raised."""

    def __init__(
        self, repo: Repository, *, layer: int, renew: Callable[[], None], listener: Listener
    ) -> None:
        self.repo, self.layer, self.renew, self.listener = repo, layer, renew, listener
        self.packs = 0
        self._links_saved: dict[tuple[int, int], str] | None = None
        self._committer = Committer(self._commit, self._record)

    def submit(self, sealed: Sealed) -> None:
        self._announce(self._committer.submit(sealed))

    def collect(self, *, wait: bool = False) -> None:
        """Announce the commits finished so far; with ``wait``, all of them."""
        self._announce(self._committer.done(wait_for=-1 if wait else 0))

    def _announce(self, finals: list[IndexHeader]) -> None:
        for final in finals:
            self.packs += 1
            self.listener(
                PackCommitted(
                    final.seq, final.layer, final.entries, final.data_size, final.clock_to
                )
            )

    def _commit(self, sealed: Sealed) -> IndexHeader:
        """On the committer thread: wait for gpg, then store the pack and its index; the
        pass's position goes into the same write of the local state."""
        if self.repo.next_seq() != sealed.header.seq:
            sealed.sealing.abort()
            raise BlanketError(f"internal error: pack {sealed.header.seq} out of order")
        return self.repo.commit(
            sealed.sealing.wait(),
            sealed.header,
            sealed.entries,
            scan=(self.layer, escape(sealed.header.clock_to)),
            # the groups first: never a pointer past groups that were not saved
            before_state=lambda: self._save_links(sealed.links),
        )

    def _record(self, final: IndexHeader, sealed: Sealed) -> None:
        """On the committer thread, after a commit: the lease."""
        self.renew()

    def _save_links(self, links: dict[tuple[int, int], str]) -> None:
        if links != self._links_saved:
            self.repo.state.save_links(self.layer, links)
            self._links_saved = dict(links)

    def save_position(
        self, pointer: bytes | None, links: dict[tuple[int, int], str], *, done: bool = False
    ) -> None:
        """On the run's thread, once the committer is idle: how far the pass got beyond
        its last commit (or, ``done``, that the pass is over: no pointer, no groups)."""
        self._save_links({} if done else links)
        progress = self.repo.state.load()
        progress.scan_layer = self.layer
        progress.scan_pointer = "" if done or pointer is None else escape(pointer)
        self.repo.state.save(progress)

    def close(self) -> None:
        """Let queued commits finish (each is whole or not at all), then stop."""
        self._committer.close()
