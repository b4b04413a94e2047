"""Write whole packs' files in worker processes, each with its own GIL.

Restoring many small files is bound by Python: parsing tar headers and the handful of
system calls per file, which in one process wait for each other's GIL (docs/decisions.md,
"What bounded the small files' phase was the GIL"). So the files of a pack are written by
one of a few worker processes, forked once, before the caller starts any thread, from the
process that holds the plan and the open target: each worker inherits both (and the
``SafeWriter`` with its rules) and needs no state sent to it. A task names a pack whose
plaintext the caller has already fetched and verified; its outcome comes back to the
caller, in the order the tasks were handed over, to be judged there.

Workers ignore SIGINT (the caller stops them after the pack in hand, so no temporary file
is left behind) and die with their parent (``PR_SET_PDEATHSIG``), so a killed restore
leaves no process behind.
"""

from __future__ import annotations

import ctypes
import gc
import multiprocessing
import os
import signal
import sys
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Generic, TypeVar

R = TypeVar("R")
_PR_SET_PDEATHSIG = 1

_work: Callable[..., Any] | None = None  # in a worker: what its tasks run


def _start(work: Callable[..., Any], parent: int) -> None:
    """In a new worker: die with the parent, leave Ctrl-C to it, remember ``work``."""
    global _work
    _work = work
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the worker ends when its queue does
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _run(*args: object) -> Any:
    assert _work is not None
    return _work(*args)


def _nothing() -> None:
    return None


class PackWorkers(Generic[R]):
    """``submit(*args)`` runs ``work(*args)`` in a worker; ``done(result)`` is called on
    the submitting thread, in order, from ``submit`` or ``drain``. At most ``2 *
    processes`` tasks are in flight; ``submit`` waits for the oldest beyond that. With
    no processes, ``submit`` runs the task and ``done`` at once, here (a small restore,
    which forking would only slow down)."""

    def __init__(self, processes: int, work: Callable[..., R], done: Callable[[R], None]) -> None:
        self._work, self._done = work, done
        self._limit = 2 * processes
        self._running: deque[Future[R]] = deque()
        self._pool: ProcessPoolExecutor | None = None
        if processes < 1:
            return
        for stream in (sys.stdout, sys.stderr):  # or a worker's exit writes it out again
            if stream is not None:
                stream.flush()
        gc.freeze()  # the workers' collections then leave the inherited objects unshared
        try:
            self._pool = ProcessPoolExecutor(
                processes,
                mp_context=multiprocessing.get_context("fork"),
                initializer=_start,
                initargs=(work, os.getpid()),
            )
            self._pool.submit(_nothing).result()  # fork every worker now, while no thread runs
        finally:
            gc.unfreeze()

    def submit(self, *args: object) -> None:
        if self._pool is None:
            self._done(self._work(*args))
            return
        self._running.append(self._pool.submit(_run, *args))
        self._collect(wait=False)

    def drain(self) -> None:
        self._collect(wait=True)

    def _collect(self, *, wait: bool) -> None:
        while self._running:
            if not (wait or len(self._running) > self._limit or self._running[0].done()):
                return
            self._done(self._running.popleft().result())

    def close(self) -> None:
        """Stop: tasks not started are dropped, those being run finish."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._running.clear()

    def __enter__(self) -> PackWorkers[R]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
