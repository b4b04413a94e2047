"""``blanket mount MOUNTPOINT``: every point in time as read-only files, until unmounted
(``fusermount3 -u MOUNTPOINT``) or signalled (Ctrl-C, SIGTERM)."""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import stat
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from blanket.commands.common import open_repo, repo_urls
from blanket.errors import EXIT_OK, BlanketError, UsageError
from blanket.events import RestoreProblem
from blanket.ui import Output
from blanket.units import human_size, parse_size

if TYPE_CHECKING:
    from blanket.restore.mounttree import Point

HELP = "show every point in time as read-only files (FUSE) until unmounted"
DEFAULT_CACHE = "512M"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="an empty folder to mount on")
    p.add_argument(
        "--cache-size",
        default=DEFAULT_CACHE,
        help=f"disk space for decrypted frames (default {DEFAULT_CACHE})",
    )


def check_mountpoint(path: str) -> None:
    """Refuse a missing, occupied or dead mount point with a one-line fix."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UsageError(
            f"mount point {path} does not exist; create it first (mkdir {path})"
        ) from None
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise UsageError(
                f"mount point {path} is left from a mount whose process ended; "
                f"unmount it first (fusermount3 -u {path})"
            ) from None
        raise UsageError(f"mount point {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"mount point {path} is not a folder; give an empty folder")
    if os.path.ismount(path):
        raise UsageError(
            f"mount point {path} is already mounted; unmount it first (fusermount3 -u {path})"
        )
    if os.listdir(path):
        raise UsageError(f"mount point {path} is not empty; give an empty folder")


def _stale_workdirs(top: Path) -> None:
    """Remove the work folders of mounts whose process is gone (killed)."""
    if not top.is_dir():
        return
    for d in top.iterdir():
        pid = int(d.name) if d.name.isdigit() else 0
        if pid and pid != os.getpid() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(d, ignore_errors=True)


def run(args: argparse.Namespace, out: Output) -> int:
    mountpoint = os.path.abspath(args.mountpoint)
    check_mountpoint(mountpoint)
    cache_size = parse_size(args.cache_size, "--cache-size")
    try:
        from blanket.restore.mount import serve
    except (ImportError, OSError) as exc:  # mfusepy raises OSError without libfuse
        raise BlanketError(
            f"cannot load libfuse 3 ({exc}); install it (apt-get install fuse3) "
            "and run scripts/setup.sh"
        ) from None
    from blanket.restore.mesh import group_mirrors

    repos = group_mirrors([open_repo(args, url, reads="mount") for url in repo_urls(args)])
    for r in repos:
        r.refresh(strict=False)
    lock = threading.Lock()

    def report(what: str, message: str) -> None:
        with lock:
            out.event(RestoreProblem(what.encode(), message))

    for r in repos:
        for key, message in r.problems:
            report(key, message)
    top = repos[0].state.dir / "mount"
    _stale_workdirs(top)
    workdir = top / str(os.getpid())

    def mounted(points: list[Point]) -> None:
        with lock:
            out.emit("mounted", mountpoint=mountpoint, points=len(points))
            out.line(
                f"mounted {len(points)} point(s) in time at {mountpoint}: latest/, layers/N/, "
                f"at/TIME/; unmount with 'fusermount3 -u {mountpoint}' or Ctrl-C"
            )
            out.stream.flush()

    try:
        stats = serve(
            repos,
            mountpoint,
            str(workdir),
            cache_size,
            report=report,
            on_mounted=mounted,
        )
    except RuntimeError as exc:
        raise BlanketError(
            f"cannot mount at {mountpoint} (libfuse said {exc}); check that /dev/fuse "
            "exists and fusermount3 is installed (apt-get install fuse3)"
        ) from None
    out.summary(
        f"unmounted {mountpoint}: {stats.files_opened} file(s) opened, "
        f"{human_size(stats.bytes_fetched)} read from the store in "
        f"{stats.frames_fetched} frame(s)",
        mountpoint=mountpoint,
        files_opened=stats.files_opened,
        bytes_fetched=stats.bytes_fetched,
        frames_fetched=stats.frames_fetched,
        points_built=stats.points_built,
    )
    return EXIT_OK
