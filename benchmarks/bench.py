"""blanket side by side with ``tar | zstd -3 | gpg`` and restic, on one deterministic corpus.

Default mode builds a laptop-like corpus (about 1.5 GB at ``--scale 1``: tens of thousands
of small text-like and random files, medium files, a few large incompressible files, a
sparse file, some symlinks) in a work directory under /tmp, then measures in one run:

* the physical reference ``tar -cf - -C SRC . | zstd -3 | gpg --sign --encrypt`` (and its
  stages, and its restore ``gpg -d | zstd -d | tar -x``);
* blanket: full backup, no-change rerun, rerun after ~1% of the files changed, full
  restore, restore of one small subtree (with warm and with empty local state);
* restic (when installed): the same six steps on the same corpus.

Every measured command runs as its own subprocess; its figures are its own: wall time,
CPU time (user+sys of the process and everything it waited for, from ``wait4``; split into
the process itself and its children, from ``/proc/PID/stat`` read before it is reaped),
peak RSS (``ru_maxrss``: the largest single process of the tree, not a sum), bytes the
process tree read (``/proc/PID/io`` ``rchar``), repository size, and for restores the bytes
of store objects read (atime of every store object is reset before the restore; the
objects whose atime moved were read, counted whole: exact for blanket, which downloads
whole packs, an upper bound for restic, which reads ranges of packs).

Peak RSS is taken through a small launcher process, because ``ru_maxrss`` starts from the
RSS of the process a command was forked from (about 9 MiB is the floor). All figures are
warm-cache figures (the corpus is read once before the first step). blanket runs from a
snapshot of its source copied into the work directory at the start, so a tree being edited
meanwhile does not change what is measured. ``--micro`` also times the pipeline's parts
alone and two design probes (a tar stream from Python into ``zstd`` and ``gpg`` processes,
and its reverse); ``--pack-sizes`` adds full backups and subtree restores at other pack
sizes; ``--profile`` adds cProfile'd runs of backup, no-change rerun and restore with a
summary. On a shared machine, ``--nice -15`` (as root; it sets the session's autogroup
too) keeps other processes' CPU use out of the figures, and ``--repeat N`` keeps the
fastest of N runs; the "others' cores" and "runq wait" columns show what noise remained.

``--million`` creates 1,000,000 tiny files (``--files N`` for fewer) and reports wall time
and peak RSS of blanket's backup, no-change rerun and restore (and restic's).

    .venv/bin/python benchmarks/bench.py [--scale 1.0] [--repeat 2] [--micro] [--profile]
    .venv/bin/python benchmarks/bench.py --million [--files 1000000]

Partial results are printed if a step fails; the work directory is removed at the end
unless ``--keep``. docs/performance.md has the results and the exact commands.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MiB = 1 << 20
NICE = 0  # --nice: niceness of every measured command (negative needs root)
KEY_UID = "blanket bench <bench@localhost>"


# --- measuring one command ------------------------------------------------------------


@dataclass
class Run:
    """What one measured command cost."""

    step: str
    tool: str
    cmd: str
    ok: bool = False
    rc: int | None = None
    wall: float = 0.0
    cpu: float = 0.0  # user+sys of the process tree (wait4)
    cpu_self: float = 0.0  # the process itself (all threads)
    cpu_children: float = 0.0  # what it waited for (gpg, zstd, tar, ...)
    maxrss_mib: float = 0.0
    rchar: int = 0
    read_bytes: int = 0
    data_bytes: int = 0  # bytes the step is about, for MB/s
    repo_bytes: int | None = None
    store_read: dict[str, int] | None = None
    pack_read: int | None = None  # data-object bytes blanket says it read (--json summary)
    note: str = ""
    others: float = -1.0  # cores other processes kept busy during the run, on average
    runq: float = -1.0  # share of the wall time its main thread waited for a CPU

    @property
    def mbps(self) -> float | None:
        return (
            self.data_bytes / self.wall / 1e6 if self.ok and self.wall and self.data_bytes else None
        )


# The measured command is started by this small launcher, not by the benchmark itself: a
# process's peak RSS (ru_maxrss) starts from the RSS of the process it was forked from, so
# forking from the benchmark (100+ MiB) would inflate every figure; the launcher's ~9 MiB
# is the floor instead. It waits for the command without reaping it, reads /proc/PID/io
# and /proc/PID/stat (own vs children CPU), then reaps it with wait4 for its rusage.
LAUNCHER = r"""
import os, sys, time, json
out, niceness, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
if niceness:  # the session's autogroup too: across sessions only its niceness counts
    try:
        with open("/proc/self/autogroup", "w") as f:
            f.write(str(niceness))
    except OSError:
        pass
    os.nice(niceness)
t0 = time.perf_counter()
pid = os.posix_spawnp(argv[0], argv, os.environ)
os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
wall = time.perf_counter() - t0
try:
    io = dict((k.strip(), int(v)) for k, v in (l.split(":") for l in open("/proc/%d/io" % pid)))
except OSError:
    io = {}
try:
    f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    own, kids = (int(f[11]) + int(f[12])) / tick, (int(f[13]) + int(f[14])) / tick
except (OSError, IndexError, ValueError):
    own = kids = 0.0
try:
    delay = int(open("/proc/%d/schedstat" % pid).read().split()[1]) / 1e9
except (OSError, IndexError, ValueError):
    delay = -1.0
_, status, ru = os.wait4(pid, 0)
rc = os.waitstatus_to_exitcode(status)
with open(out, "w") as f:
    json.dump({"rc": rc, "wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "own": own,
               "kids": kids, "delay": delay, "maxrss_kib": ru.ru_maxrss, "io": io}, f)
"""


def measure(
    step: str,
    tool: str,
    argv: list[str],
    env: dict[str, str],
    logs: Path,
    *,
    data_bytes: int = 0,
    timeout: float = 3600,
    cwd: Path | None = None,
) -> Run:
    """Run ``argv`` as its own process (through the launcher, in its own session) and
    record its costs."""
    run = Run(step, tool, shlex.join(argv), data_bytes=data_bytes)
    os.sync()  # what earlier steps wrote must not be flushed on this step's time
    busy0 = busy_seconds()
    slug = f"{tool}-{step}".replace(" ", "_").replace("/", "_")
    result = logs / f"{slug}.json"
    result.unlink(missing_ok=True)
    with open(logs / f"{slug}.out", "wb") as out, open(logs / f"{slug}.err", "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", LAUNCHER, str(result), str(NICE), *argv],
            env=env,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            proc.wait()
            run.note = f"killed after {timeout:.0f} s"
            return run
    try:
        got = json.loads(result.read_text())
    except (OSError, ValueError):
        run.note = f"launcher failed (exit {proc.returncode})"
        return run
    run.rc = got["rc"]
    run.ok = run.rc == 0
    run.wall = got["wall"]
    run.cpu, run.cpu_self, run.cpu_children = got["cpu"], got["own"], got["kids"]
    if run.wall > 0:
        run.others = max(0.0, (busy_seconds() - busy0 - run.cpu) / run.wall)
        run.runq = got.get("delay", -1) / run.wall
    run.maxrss_mib = got["maxrss_kib"] / 1024
    run.rchar = got["io"].get("rchar", 0)
    run.read_bytes = got["io"].get("read_bytes", 0)
    if tool == "blanket":
        run.pack_read = _json_summary_field(logs / f"{slug}.out", "pack_bytes_read")
    if not run.ok:
        tail = (logs / f"{slug}.err").read_bytes()[-400:].decode("utf-8", "replace").strip()
        run.note = f"exit {run.rc}: {tail.splitlines()[-1] if tail else ''}"
    return run


def _json_summary_field(path: Path, name: str) -> int | None:
    """A number from the last line of ``--json`` output that has it."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get(name), int):
            return int(obj[name])
    return None


def busy_seconds() -> float:
    """CPU seconds all processors have been busy since boot (``/proc/stat``)."""
    try:
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = f[3] + (f[4] if len(f) > 4 else 0)
    return (sum(f[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def idle_cores(window: float = 3.0) -> float:
    """How many processors were idle, on average, over the next ``window`` seconds."""
    b0, t0 = busy_seconds(), time.monotonic()
    time.sleep(window)
    return (os.cpu_count() or 1) - (busy_seconds() - b0) / (time.monotonic() - t0)


def wait_for_idle(cores: float, longest: float) -> float:
    """Wait (at most ``longest`` s) until other processes leave ``cores`` processors idle
    over a 3 s window; return the idle cores of the last window."""
    deadline = time.monotonic() + longest
    while True:
        idle = idle_cores()
        if idle >= cores or time.monotonic() > deadline:
            return idle


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def tree_bytes(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


class StoreReads:
    """Which store objects a command reads: reset every object's atime to 0 before it,
    look at which moved after it (relatime updates an atime that is older than mtime)."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.before: dict[str, int] = {}
        for dirpath, _dirs, files in os.walk(store):
            for name in files:
                p = os.path.join(dirpath, name)
                st = os.lstat(p)
                os.utime(p, ns=(0, st.st_mtime_ns), follow_symlinks=False)
                self.before[os.path.relpath(p, store)] = st.st_size

    def read(self) -> dict[str, int]:
        """Bytes of the objects that were read, by top-level folder, and ``total``."""
        out: dict[str, int] = {"total": 0}
        for rel, size in self.before.items():
            try:
                st = os.lstat(self.store / rel)
            except FileNotFoundError:
                continue
            if st.st_atime_ns != 0:
                top = rel.split("/", 1)[0] if "/" in rel else rel
                out[top] = out.get(top, 0) + size
                out["total"] += size
        return out


# --- parts of the pipeline alone (--micro), run with blanket's python ------------------

MICRO_GNUPG = """
import sys, gnupg
zst, fpr = sys.argv[1], sys.argv[2]
with open(zst, "rb") as f:
    r = gnupg.GPG().encrypt_file(
        f, [fpr], sign=fpr, always_trust=True, armor=False, output="/dev/null",
        extra_args=["--yes", "--compress-algo", "none"])
assert r.ok, r.stderr
"""

MICRO_GNUPG_SMALL = """
import os, sys, gnupg
g = gnupg.GPG()
data = os.urandom(100_000)
for _ in range(int(sys.argv[2])):
    r = g.encrypt(data, [sys.argv[1]], sign=sys.argv[1], always_trust=True, armor=False)
    assert r.ok, r.stderr
"""

MICRO_ZSTD = """
import sys, zstandard
size, threads = int(sys.argv[1]), int(sys.argv[2])
w = zstandard.ZstdCompressor(level=3, threads=threads).stream_writer(open("/dev/null", "wb"))
read = sys.stdin.buffer.read
while block := read(size):
    w.write(block)
w.flush(zstandard.FLUSH_FRAME)
"""

MICRO_TARFILE = """
import hashlib, os, sys, tarfile
class Null:
    def write(self, b):
        return len(b)
class Hashing:
    def __init__(self, f):
        self.f, self.h = f, hashlib.sha256()
    def read(self, n=-1):
        b = self.f.read(n)
        self.h.update(b)
        return b
root = sys.argv[1]
tar = tarfile.open(fileobj=Null(), mode="w|", format=tarfile.PAX_FORMAT)
for dirpath, dirs, files in os.walk(root):
    dirs.sort()
    for name in sorted(files):
        path = os.path.join(dirpath, name)
        info = tar.gettarinfo(path, os.path.relpath(path, root))
        if info.isreg():
            with open(path, "rb") as f:
                tar.addfile(info, Hashing(f))
        else:
            tar.addfile(info)
tar.close()
"""


MICRO_PIPELINE = """
# A design probe, not blanket: Python writes the tar stream (PAX headers from tarfile,
# file data with os.write in 1 MiB blocks, SHA-256 of every file) into a pipe to a
# 'zstd -3' process that pipes into 'gpg' (processes, not threads: no GIL in the data path).
import hashlib, os, subprocess, sys, tarfile
root, fpr, out = sys.argv[1], sys.argv[2], sys.argv[3]
gpg = ["gpg", "--batch", "--yes", "--trust-model", "always", "--compress-algo", "none",
       "--sign", "--encrypt", "-r", fpr, "-o", out]
z = subprocess.Popen(["zstd", "-3", "-q", "-c"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
g = subprocess.Popen(gpg, stdin=z.stdout)
z.stdout.close()
fd = z.stdin.fileno()
def put(b):
    v = memoryview(b)
    while v:
        v = v[os.write(fd, v):]
def walk(d):
    with os.scandir(d) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        st = e.stat(follow_symlinks=False)
        info = tarfile.TarInfo(os.path.relpath(e.path, root))
        info.mtime, info.mode = st.st_mtime, st.st_mode & 0o7777
        info.uid, info.gid = st.st_uid, st.st_gid
        info.pax_headers = {"mtime": "%d.%09d" % divmod(st.st_mtime_ns, 10**9)}
        if e.is_dir(follow_symlinks=False):
            info.type = tarfile.DIRTYPE
            put(info.tobuf(tarfile.PAX_FORMAT))
            walk(e.path)
        elif e.is_symlink():
            info.type, info.linkname = tarfile.SYMTYPE, os.readlink(e.path)
            put(info.tobuf(tarfile.PAX_FORMAT))
        elif e.is_file(follow_symlinks=False):
            info.size = st.st_size
            put(info.tobuf(tarfile.PAX_FORMAT))
            h = hashlib.sha256()
            f = os.open(e.path, os.O_RDONLY)
            while b := os.read(f, 1 << 20):
                h.update(b)
                put(b)
            os.close(f)
            if st.st_size % 512:
                put(bytes(512 - st.st_size % 512))
walk(root)
put(bytes(1024))
z.stdin.close()
assert z.wait() == 0 and g.wait() == 0
"""

MICRO_RESTORE = """
# A design probe, not blanket: 'gpg -d | zstd -d' processes feed Python, which parses the
# tar stream (tarfile, 1 MiB buffer) and writes every file under a temporary name (O_EXCL),
# hashing it, sets its mode and mtime, then renames it into place (one thread).
import hashlib, os, subprocess, sys, tarfile
pack, dest = sys.argv[1], sys.argv[2]
g = subprocess.Popen(["gpg", "--batch", "-q", "-d", pack], stdout=subprocess.PIPE)
z = subprocess.Popen(["zstd", "-d", "-q", "-c"], stdin=g.stdout, stdout=subprocess.PIPE)
g.stdout.close()
n = 0
with tarfile.open(fileobj=z.stdout, mode="r|", bufsize=1 << 20) as tar:
    for m in tar:
        path = os.path.join(dest, m.name)
        if m.isdir():
            os.makedirs(path, exist_ok=True)
        elif m.issym():
            os.symlink(m.linkname, path)
        elif m.isreg():
            tmp = os.path.join(os.path.dirname(path), ".tmp-%d" % n)
            n += 1
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            h = hashlib.sha256()
            r = tar.extractfile(m)
            while b := r.read(1 << 20):
                h.update(b)
                os.write(fd, b)
            os.fchmod(fd, m.mode)
            os.close(fd)
            os.utime(tmp, (m.mtime, m.mtime))
            os.rename(tmp, path)
assert z.wait() == 0 and g.wait() == 0
"""


# --- the corpus -----------------------------------------------------------------------


@dataclass
class Corpus:
    root: Path
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0  # apparent size of the regular files
    data_bytes: int = 0  # without the sparse file's holes
    subtree: str = ""
    subtree_files: int = 0
    subtree_bytes: int = 0
    regular: list[str] = field(default_factory=list)


class TextGen:
    """Text-like, compressible content: lines drawn from a large pool of lines made of a
    Zipf-weighted vocabulary (compresses about like source code and documents)."""

    def __init__(self, rng: random.Random) -> None:
        letters = "abcdefghijklmnopqrstuvwxyz"
        vocab = ["".join(rng.choices(letters, k=rng.randint(2, 10))) for _ in range(6000)]
        weights = [1 / (i + 1) for i in range(len(vocab))]
        punct = ["", "", "", ",", ".", ";", "()", " =", ":", " {", " }"]
        pool = []
        for _ in range(150_000):
            words = rng.choices(vocab, weights, k=rng.randint(2, 14))
            indent = " " * (4 * rng.randint(0, 3))
            tail = rng.choice(punct) + (str(rng.randint(0, 99999)) if rng.random() < 0.2 else "")
            pool.append((indent + " ".join(words) + tail).encode())
        self.pool = pool
        self.rng = rng

    def make(self, size: int) -> bytes:
        k = size // 40 + 2
        data = b"\n".join(self.rng.choices(self.pool, k=k))
        while len(data) < size:
            data += b"\n" + b"\n".join(self.rng.choices(self.pool, k=k))
        return data[:size]


def _log_uniform(rng: random.Random, lo: int, hi: int) -> int:
    return int(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _write(path: Path, data: bytes, mtime: int) -> None:
    path.write_bytes(data)
    os.utime(path, ns=(mtime, mtime))


def build_corpus(root: Path, scale: float, seed: int) -> Corpus:
    """The laptop-like mix, deterministic for a given (scale, seed)."""
    rng = random.Random(seed)
    text = TextGen(rng)
    c = Corpus(root)
    base = 1_700_000_000 * 10**9
    root.mkdir(parents=True)
    # small files: 30k at scale 1, 64 B - 64 KiB log-uniform, 70% text-like
    n_small = max(50, int(30_000 * scale))
    per_dir = 40
    small_dirs = []
    for i in range(n_small):
        d = root / "small" / f"g{i // (per_dir * 25):02d}" / f"d{(i // per_dir) % 25:02d}"
        if i % per_dir == 0:
            d.mkdir(parents=True)
            small_dirs.append(d)
        size = _log_uniform(rng, 64, 64 << 10)
        if rng.random() < 0.7:
            p, data = d / f"f{i:06d}.txt", text.make(size)
        else:
            p, data = d / f"f{i:06d}.bin", rng.randbytes(size)
        _write(p, data, base + i * 10**6)
        c.files += 1
        c.bytes += size
        c.regular.append(str(p.relative_to(root)))
    # medium files: 120 at scale 1, 256 KiB - 16 MiB log-uniform, 40% compressible logs
    n_medium = max(4, int(120 * scale))
    for i in range(n_medium):
        d = root / "medium" / f"m{i // 20:02d}"
        d.mkdir(parents=True, exist_ok=True)
        size = _log_uniform(rng, 256 << 10, 16 << 20)
        if rng.random() < 0.4:
            p, data = d / f"log{i:04d}.log", text.make(size)
        else:
            p, data = d / f"photo{i:04d}.jpg", rng.randbytes(size)
        _write(p, data, base + i * 10**7)
        c.files += 1
        c.bytes += size
        c.regular.append(str(p.relative_to(root)))
    # large incompressible files: 3 x 200 MiB at scale 1
    (root / "large").mkdir()
    for i in range(3):
        size = max(1 << 20, int((200 << 20) * scale))
        p = root / "large" / f"video{i}.mkv"
        with open(p, "wb") as f:
            left = size
            while left:
                n = min(left, 16 << 20)
                f.write(rng.randbytes(n))
                left -= n
        os.utime(p, ns=(base, base))
        c.files += 1
        c.bytes += size
        c.regular.append(str(p.relative_to(root)))
    c.data_bytes = c.bytes
    # a sparse disk image: 128 MiB apparent, 8 x 1 MiB of data at scale 1
    (root / "vm").mkdir()
    p = root / "vm" / "disk.img"
    apparent = max(16 << 20, int((128 << 20) * scale))
    with open(p, "wb") as f:
        f.truncate(apparent)
        for k in range(8):
            f.seek(k * (apparent // 8))
            f.write(rng.randbytes(min(1 << 20, apparent // 16)))
            c.data_bytes += min(1 << 20, apparent // 16)
    os.utime(p, ns=(base, base))
    c.files += 1
    c.bytes += apparent
    c.regular.append(str(p.relative_to(root)))
    # symlinks and empty directories
    links = root / "links"
    links.mkdir()
    for i in range(max(5, int(100 * scale))):
        os.symlink(f"../{c.regular[rng.randrange(n_small)]}", links / f"l{i:04d}")
        c.symlinks += 1
    for i in range(20):
        (root / "empty" / f"e{i:02d}").mkdir(parents=True)
    sub = small_dirs[len(small_dirs) // 3]
    c.subtree = str(sub.relative_to(root))
    c.subtree_files = sum(1 for _ in sub.iterdir())
    c.subtree_bytes = tree_bytes(sub)
    c.dirs = sum(len(ds) for _, ds, _ in os.walk(root)) + 1
    return c


def change_one_percent(c: Corpus, seed: int) -> tuple[int, int]:
    """Change ~1% of the regular files (deterministically): rewrite the head of binary
    files, append to text files; every changed file gets a new mtime. Returns (files,
    bytes of the changed files)."""
    rng = random.Random(seed + 1)
    picks = sorted(rng.sample(c.regular, max(1, len(c.regular) // 100)))
    when = 1_800_000_000 * 10**9
    changed_bytes = 0
    for rel in picks:
        p = c.root / rel
        if rel.endswith((".txt", ".log")):
            with open(p, "ab") as f:
                f.write(b"\nchanged line %d\n" % rng.randrange(10**9))
        else:
            with open(p, "r+b") as f:
                f.write(rng.randbytes(min(4096, os.fstat(f.fileno()).st_size)))
        os.utime(p, ns=(when, when))
        changed_bytes += p.stat().st_size
    return len(picks), changed_bytes


def compare_trees(src: Path, restored: Path, sample_every: int = 10) -> str:
    """A sanity check of a restore: same names, kinds and sizes; content of a sample."""
    problems = 0
    seen = 0
    for dirpath, dirs, files in os.walk(src):
        rel_dir = os.path.relpath(dirpath, src)
        for name in sorted(files) + sorted(
            d for d in dirs if os.path.islink(os.path.join(dirpath, d))
        ):
            a = Path(dirpath) / name
            b = restored / rel_dir / name
            seen += 1
            try:
                sa, sb = os.lstat(a), os.lstat(b)
            except FileNotFoundError:
                problems += 1
                continue
            if (sa.st_mode, sa.st_size) != (sb.st_mode, sb.st_size):
                problems += 1
            elif os.path.islink(a):
                problems += os.readlink(a) != os.readlink(b)
            elif seen % sample_every == 0 or sa.st_size > 64 * MiB:
                problems += _digest(a) != _digest(b)
    return "ok" if problems == 0 else f"{problems} of {seen} differ"


def _digest(p: Path) -> str:
    h = hashlib.blake2b()
    with open(p, "rb") as f:
        while block := f.read(4 * MiB):
            h.update(block)
    return h.hexdigest()


# --- environment ----------------------------------------------------------------------


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
        return out.strip().splitlines()[0] if out.strip() else "?"
    except (OSError, subprocess.SubprocessError):
        return "not installed"


_VERSIONS = (
    "import sys, zstandard, gnupg; from importlib.metadata import version; "
    "print(sys.version.split()[0], zstandard.__version__, "
    "'.'.join(map(str, zstandard.ZSTD_VERSION)), gnupg.__version__, version('blanket'))"
)


def versions(blanket: list[str], env: dict[str, str] | None = None) -> dict[str, str]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    py = blanket[0]
    pyinfo = subprocess.run(
        [py, "-c", _VERSIONS],
        capture_output=True,
        text=True,
        env=env,
    ).stdout.split()
    info = {
        "machine": f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM",
        "os": f"{platform.system()} {platform.release()}; Debian {_read('/etc/debian_version')}",
        "python": pyinfo[0] if pyinfo else "?",
        "blanket": pyinfo[4] if len(pyinfo) > 4 else "?",
        "python-zstandard": f"{pyinfo[1]} (libzstd {pyinfo[2]})" if len(pyinfo) > 2 else "?",
        "python-gnupg": pyinfo[3] if len(pyinfo) > 3 else "?",
        "gpg": _version(["gpg", "--version"]),
        "zstd": _version(["zstd", "--version"]),
        "tar": _version(["tar", "--version"]),
        "restic": _version(["restic", "version"]),
    }
    return info


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return "?"


def make_key(gnupghome: Path) -> str:
    gnupghome.mkdir(mode=0o700)
    env = dict(os.environ, GNUPGHOME=str(gnupghome))
    subprocess.run(
        [
            "gpg",
            "--batch",
            "--passphrase",
            "",
            "--quick-gen-key",
            KEY_UID,
            "future-default",
            "default",
            "never",
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    out = subprocess.run(
        ["gpg", "--batch", "--with-colons", "--list-secret-keys", KEY_UID],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))


def find_blanket(explicit: str | None, env: dict[str, str]) -> list[str]:
    if explicit:
        return shlex.split(explicit)
    for py in (ROOT / ".venv" / "bin" / "python", Path(sys.executable)):
        if (
            py.exists()
            and subprocess.run(
                [str(py), "-c", "import blanket.cli"], capture_output=True, cwd="/", env=env
            ).returncode
            == 0
        ):
            return [str(py), "-m", "blanket"]
    raise SystemExit("cannot find blanket: run scripts/setup.sh or pass --blanket 'CMD'")


# --- reporting ------------------------------------------------------------------------


def fmt_mib(n: int | None) -> str:
    return "" if n is None else f"{n / MiB:,.1f}"


def print_runs(runs: list[Run], out: TextIO = sys.stdout) -> None:
    head = (
        "step",
        "tool",
        "wall s",
        "MB/s",
        "CPU s (self+children)",
        "peak RSS MiB",
        "read MiB (rchar)",
        "repo MiB",
        "others' cores",
        "runq wait",
        "note",
    )
    print("| " + " | ".join(head) + " |", file=out)
    print("|" + "---|" * len(head), file=out)
    for r in runs:
        mbps = f"{r.mbps:,.1f}" if r.mbps else ""
        cpu = f"{r.cpu:.1f} ({r.cpu_self:.1f}+{r.cpu_children:.1f})" if r.ok else ""
        note = r.note
        if r.store_read:
            note = (
                (note + "; " if note else "")
                + "store objects read: "
                + ", ".join(f"{k} {v / MiB:.1f} MiB" for k, v in r.store_read.items())
            )
            if r.pack_read is not None:
                note += f" (of the data objects, {r.pack_read / MiB:.2f} MiB were read)"
        cells = (
            r.step,
            r.tool,
            f"{r.wall:.2f}" if r.ok else "FAILED",
            mbps,
            cpu,
            f"{r.maxrss_mib:.0f}" if r.ok else "",
            fmt_mib(r.rchar) if r.ok else "",
            fmt_mib(r.repo_bytes),
            f"{r.others:.2f}" if r.others >= 0 else "",
            f"{100 * r.runq:.0f}%" if r.runq >= 0 else "",
            note,
        )
        print("| " + " | ".join(cells) + " |", file=out)
    out.flush()


def ratio(a: Any, b: Any) -> str:
    """``a / b`` for two figures, "n/a" when either is missing (None, 0 or a failed run)."""
    if not isinstance(a, int | float) or not isinstance(b, int | float) or not a or not b:
        return "n/a"
    return f"{a / b:.2f}"


def get(runs: list[Run], step: str, tool: str) -> Run | None:
    for r in runs:
        if r.step == step and r.tool == tool and r.ok:
            return r
    return None


def store_read_estimate(r: Run) -> int:
    """Bytes read from the store by a restore, indexes included. For restic, which reads
    ranges of packs: the smaller of the sizes of the objects whose atime moved and the
    process's rchar (which also counts its local cache reads). For blanket, which may read
    ranges of packs too: the bytes of data objects it reports having read (its --json
    summary counts every byte the stores returned) plus every other object whose atime
    moved, whole."""
    seen = r.store_read or {}
    whole = seen.get("total", 0)
    if r.tool == "restic":
        return min(whole, r.rchar)
    if r.tool == "blanket" and r.pack_read is not None:
        return whole - seen.get("data", 0) + r.pack_read
    return whole


def print_ratios(
    runs: list[Run], extra: dict[str, float], out: TextIO = sys.stdout
) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []

    def add(what: str, value: str, target: str) -> None:
        rows.append((what, value, target))

    bf = get(runs, "full backup", "blanket")
    ref = get(runs, "full backup", "reference")
    rf = get(runs, "full backup", "restic")
    add("backup throughput, blanket / reference", ratio(bf and bf.mbps, ref and ref.mbps), ">= 0.8")
    add("backup throughput, blanket / restic", ratio(bf and bf.mbps, rf and rf.mbps), ">= 1")
    add("backup CPU s, blanket / reference", ratio(bf and bf.cpu, ref and ref.cpu), "")
    add("backup CPU s, blanket / restic", ratio(bf and bf.cpu, rf and rf.cpu), "")
    add("backup peak RSS, blanket / restic", ratio(bf and bf.maxrss_mib, rf and rf.maxrss_mib), "")
    add(
        "repository size, blanket / reference",
        ratio(bf and bf.repo_bytes, ref and ref.repo_bytes),
        "",
    )
    add("repository size, blanket / restic", ratio(bf and bf.repo_bytes, rf and rf.repo_bytes), "")
    bn, rn = get(runs, "no-change rerun", "blanket"), get(runs, "no-change rerun", "restic")
    add("no-change rerun time, blanket / restic", ratio(bn and bn.wall, rn and rn.wall), "< 1")
    bc, rc = (
        get(runs, "rerun after 1% change", "blanket"),
        get(runs, "rerun after 1% change", "restic"),
    )
    add("1%-change rerun time, blanket / restic", ratio(bc and bc.wall, rc and rc.wall), "")
    br, rr = get(runs, "full restore", "blanket"), get(runs, "full restore", "restic")
    rref = get(runs, "full restore", "reference")
    add("restore throughput, blanket / restic", ratio(br and br.mbps, rr and rr.mbps), ">= 1")
    add("restore throughput, blanket / reference", ratio(br and br.mbps, rref and rref.mbps), "")
    add("restore peak RSS, blanket / restic", ratio(br and br.maxrss_mib, rr and rr.maxrss_mib), "")
    packed = extra.get("subtree_packed")
    for tool in ("blanket", "restic"):
        for step in ("subtree restore", "subtree restore, empty cache"):
            r = get(runs, step, tool)
            if r and r.store_read and packed:
                read = store_read_estimate(r)
                data = (
                    f"; data objects alone {ratio(r.pack_read, packed)}"
                    if r.pack_read is not None
                    else ""
                )
                add(
                    f"{step}: store bytes read / subtree packed size, {tool}",
                    f"{ratio(read, packed)} ({read / 1e3:,.0f} kB / {packed / 1e3:,.0f} kB{data})",
                    "<= 2 (+ indexes)",
                )
    for r in runs:
        if r.ok and r.step.startswith("subtree restore --pack-size") and packed and r.store_read:
            read = store_read_estimate(r)
            add(
                f"{r.step}: store bytes read / subtree packed size, blanket",
                f"{ratio(read, packed)} ({read / 1e3:,.0f} kB / {packed / 1e3:,.0f} kB)",
                "<= 2 (+ indexes)",
            )
    bs, rs = get(runs, "subtree restore", "blanket"), get(runs, "subtree restore", "restic")
    add("subtree restore time, blanket / restic", ratio(bs and bs.wall, rs and rs.wall), "")
    print("| comparison | ratio | target |", file=out)
    print("|---|---|---|", file=out)
    for what, value, target in rows:
        print(f"| {what} | {value} | {target} |", file=out)
    out.flush()
    return rows


# --- the main benchmark ---------------------------------------------------------------


def snapshot_code(dest: Path) -> str:
    """Copy blanket's source (blanket/, backends/, restore/ as the installed layout has them)
    to ``dest`` so that every step runs the same code even while the tree is being edited;
    returns a short hash of what was copied."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "blanket", dest / "blanket", ignore=ignore)
    for sub in ("backends", "restore"):
        if (ROOT / sub).is_dir() and not (dest / "blanket" / sub).exists():
            shutil.copytree(ROOT / sub, dest / "blanket" / sub, ignore=ignore)
    return code_hash(dest)


def code_hash(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


class Bench:
    def __init__(self, opts: argparse.Namespace, work: Path) -> None:
        self.opts = opts
        self.work = work
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.runs: list[Run] = []
        self.extra: dict[str, float] = {}
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("BLANKET_", "RESTIC_"))
        }
        self.code_hash = "installed"
        if opts.code:
            self.code_hash = code_hash(Path(opts.code))
            self.env["PYTHONPATH"] = str(Path(opts.code).resolve())
        elif not opts.no_snapshot and not opts.blanket:
            self.code_hash = self.snapshot(work / "code", opts.snapshot_wait)
        self.blanket = find_blanket(opts.blanket, self.env)
        self.gnupghome = Path(tempfile.mkdtemp(prefix="bg", dir="/tmp"))  # short: agent socket
        self.gnupghome.rmdir()
        self.fpr = ""
        self.env.update(
            GNUPGHOME=str(self.gnupghome),
            BLANKET_STATE_DIR=str(work / "blanket-state"),
            RESTIC_PASSWORD="bench",
            RESTIC_CACHE_DIR=str(work / "restic-cache"),
        )
        self.restic = shutil.which("restic") if not opts.no_restic else None
        self.changed: tuple[int, int] | None = None

    def discard(self, path: Path) -> None:
        """Put a restored tree out of the way, to be deleted at the end of the run.

        Deleting tens of thousands of files makes the next restore on the same
        filesystem slow for minutes: ext4 without a journal (this machine's) will not
        reuse an inode freed in the last 60-360 s and checks each candidate's inode
        block when allocating (``recently_deleted`` in fs/ext4/ialloc.c). Right after
        a restored corpus was deleted, creating its 30,000 files took 4-10 s of kernel
        time instead of 0.7 s. So trees are kept until the run ends, unless the disk is
        short of space or inodes for them."""
        if not path.exists():
            return
        vfs = os.statvfs(path)
        room = min(vfs.f_bavail * vfs.f_frsize / max(1, tree_bytes(path)), vfs.f_favail / 1e6)
        if room < 4:
            shutil.rmtree(path, ignore_errors=True)
            return
        trash = self.work / "trash"
        trash.mkdir(exist_ok=True)
        path.rename(trash / f"{len(list(trash.iterdir()))}-{path.name}")

    def empty_trash(self) -> None:
        shutil.rmtree(self.work / "trash", ignore_errors=True)

    def snapshot(self, dest: Path, wait: float) -> str:
        """Snapshot the source; while it does not import (someone is mid-edit), retry."""
        deadline = time.monotonic() + wait
        env = dict(self.env, PYTHONPATH=str(dest))
        py = ROOT / ".venv" / "bin" / "python"
        py = py if py.exists() else Path(sys.executable)
        while True:
            shutil.rmtree(dest, ignore_errors=True)
            digest = snapshot_code(dest)
            check = subprocess.run(
                [str(py), "-m", "blanket", "--help"], env=env, capture_output=True, cwd="/"
            )
            if check.returncode == 0:
                self.env["PYTHONPATH"] = str(dest)
                # as an installed package has them: with PYTHONDONTWRITEBYTECODE set (as on
                # some machines) every command would otherwise compile its modules anew
                subprocess.run([str(py), "-m", "compileall", "-q", str(dest)], check=True)
                return digest
            if time.monotonic() > deadline:
                raise SystemExit(f"the blanket source does not run: {check.stderr[-300:]!r}")
            print("  the blanket source does not import right now; retrying in 20 s", flush=True)
            time.sleep(20)

    def record(self, run: Run) -> Run:
        self.runs.append(run)
        status = f"{run.wall:7.2f} s" if run.ok else "FAILED " + run.note
        mbps = f"  {run.mbps:8.1f} MB/s" if run.mbps else ""
        print(
            f"  {run.tool:9s} {run.step:30s} {status}{mbps}  CPU {run.cpu:6.1f} s  "
            f"RSS {run.maxrss_mib:6.0f} MiB  others {run.others:.2f} cores",
            flush=True,
        )
        return run

    def step(
        self,
        step: str,
        tool: str,
        argv: list[str] | Callable[[int], list[str]],
        *,
        repeat: int = 1,
        env: Callable[[int], dict[str, str]] | None = None,
        before: Callable[[int], None] | None = None,
        after: Callable[[int, Run], None] | None = None,
        **kw: Any,
    ) -> Run:
        """Measure a command ``repeat`` times (``before``/``after`` make each repetition
        start from the same state) and record the fastest successful run."""
        best: Run | None = None
        walls: list[str] = []
        for i in range(repeat):
            if before:
                before(i)
            if self.opts.wait_idle > 0:
                wait_for_idle(self.opts.wait_idle, self.opts.wait_max)
            args = argv(i) if callable(argv) else argv
            r = measure(
                step, tool, args, env(i) if env else self.env, self.logs, cwd=self.work, **kw
            )
            if after:
                after(i, r)
            walls.append(f"{r.wall:.2f}" if r.ok else "failed")
            if best is None or (r.ok and (not best.ok or r.wall < best.wall)):
                best = r
            if not r.ok:
                break
        assert best is not None
        if repeat > 1:
            best.note = (best.note + "; " if best.note else "") + f"best of {' / '.join(walls)} s"
        return self.record(best)

    def bl(self, *args: str) -> list[str]:
        return [*self.blanket, *args]

    def guarded(self, what: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:  # keep going: partial results are still results
            print(f"  !! {what} failed: {exc}", flush=True)
            traceback.print_exc(limit=3)
            self.runs.append(Run(what, "-", "", note=f"failed: {exc}"))

    def setup(self) -> None:
        t0 = time.perf_counter()
        self.fpr = make_key(self.gnupghome)
        print(f"building corpus (scale {self.opts.scale}) in {self.work / 'src'} ...", flush=True)
        self.corpus = build_corpus(self.work / "src", self.opts.scale, self.opts.seed)
        c = self.corpus
        self.extra["corpus_build_s"] = time.perf_counter() - t0
        print(
            f"  {c.files} files, {c.dirs} directories, {c.symlinks} symlinks, "
            f"{c.bytes / 1e6:,.0f} MB apparent ({c.data_bytes / 1e6:,.0f} MB of data), "
            f"built in {self.extra['corpus_build_s']:.0f} s; subtree {c.subtree}: "
            f"{c.subtree_files} files, {c.subtree_bytes / 1e3:,.0f} kB",
            flush=True,
        )
        os.sync()
        # Warm the page cache equally for everyone: all figures are warm-cache figures.
        # (Through cat: GNU tar does not read file contents when it writes to /dev/null.)
        subprocess.run(
            f"tar -cf - -C {shlex.quote(str(c.root))} . | cat > /dev/null", shell=True, check=False
        )

    # (f) the physical reference
    def reference(self) -> None:
        c, n = self.corpus, self.opts.repeat
        src = shlex.quote(str(c.root))
        out = self.work / "reference.tar.zst.gpg"
        gpg = (
            f"gpg --batch --yes --trust-model always --compress-algo none "
            f"--sign --encrypt -r {self.fpr}"
        )

        def sh(cmd: str) -> list[str]:
            return ["bash", "-o", "pipefail", "-c", cmd]

        self.step(
            "stage: tar",
            "reference",
            sh(f"tar -cf - -C {src} . | cat > /dev/null"),
            data_bytes=c.bytes,
            repeat=n,
        )
        self.step(
            "stage: tar | zstd -3",
            "reference",
            sh(f"tar -cf - -C {src} . | zstd -3 -q > /dev/null"),
            data_bytes=c.bytes,
            repeat=n,
        )
        r = self.step(
            "full backup",
            "reference",
            sh(f"tar -cf - -C {src} . | zstd -3 -q | {gpg} -o {out}"),
            data_bytes=c.bytes,
            repeat=n,
        )
        r.repo_bytes = out.stat().st_size if out.exists() else None
        zst = self.work / "reference.tar.zst"
        subprocess.run(f"tar -cf - -C {src} . | zstd -3 -q > {zst}", shell=True, check=True)
        self.step(
            "stage: gpg alone on the .zst",
            "reference",
            sh(f"{gpg} -o /dev/null < {zst}"),
            data_bytes=zst.stat().st_size,
            repeat=n,
        )
        if self.opts.micro:
            self.micro(zst)
        zst.unlink()
        if self.opts.ref_gpg_default:
            self.step(
                "full backup, gpg default compression",
                "reference",
                sh(
                    f"tar -cf - -C {src} . | zstd -3 -q | gpg --batch --yes --trust-model "
                    f"always --sign --encrypt -r {self.fpr} > /dev/null"
                ),
                data_bytes=c.bytes,
                repeat=n,
            )
        dest = self.work / "reference-restore"
        self.step(
            "full restore",
            "reference",
            sh(f"gpg --batch -q -d {out} | zstd -d -q | tar -xf - -C {dest}"),
            data_bytes=c.bytes,
            repeat=n,
            before=lambda i: dest.mkdir(),
            after=lambda i, r: self.discard(dest),
        )
        # "the packed size of the subtree": the subtree alone through the reference
        sub = self.work / "subtree.tar.zst.gpg"
        subprocess.run(
            f"tar -cf - -C {src} {shlex.quote(c.subtree)} | zstd -3 -q | {gpg} -o {sub}",
            shell=True,
            check=True,
            env=self.env,
        )
        self.extra["subtree_packed"] = sub.stat().st_size
        sub.unlink()
        print(
            f"  subtree packed size (tar | zstd -3 | gpg of {c.subtree} alone): "
            f"{self.extra['subtree_packed'] / 1e3:,.1f} kB",
            flush=True,
        )
        out.unlink()

    def ensure_changed(self) -> tuple[int, int]:
        if self.changed is None:
            self.changed = change_one_percent(self.corpus, self.opts.seed)
            self.extra["changed_files"], self.extra["changed_bytes"] = self.changed
        return self.changed

    # (a)-(e) blanket
    def blanket_runs(self) -> None:
        c, n = self.corpus, self.opts.repeat
        repo = self.work / "blanket-repo"
        state = self.work / "blanket-state"

        def fresh(i: int) -> None:  # each full backup starts from nothing
            shutil.rmtree(repo, ignore_errors=True)
            shutil.rmtree(state, ignore_errors=True)
            subprocess.run(
                self.bl("init", "--repo", str(repo), "--key", self.fpr),
                env=self.env,
                check=True,
                capture_output=True,
            )

        backup = self.bl("backup", "--repo", str(repo), "--json", str(c.root))
        r = self.step("full backup", "blanket", backup, data_bytes=c.bytes, repeat=n, before=fresh)
        r.repo_bytes = tree_bytes(repo)
        self.extra["blanket_state_bytes"] = tree_bytes(state)
        r = self.step("no-change rerun", "blanket", backup, data_bytes=c.bytes, repeat=n)
        r.repo_bytes = tree_bytes(repo)
        files, changed = self.ensure_changed()
        r = self.step("rerun after 1% change", "blanket", backup, data_bytes=changed)
        r.repo_bytes = tree_bytes(repo)
        r.note = f"{files} files changed"
        self.restores(
            "blanket",
            repo,
            lambda dest, *paths: self.bl(
                "restore", "--repo", str(repo), "--to", str(dest), "--json", *paths
            ),
            lambda dest: dest,
            "BLANKET_STATE_DIR",
        )

    def restores(
        self,
        tool: str,
        repo: Path,
        cmd: Callable[..., list[str]],
        where: Callable[[Path], Path],
        cache_var: str,
    ) -> None:
        """Full restore, then the subtree with warm and with empty local state/cache."""
        c, n = self.corpus, self.opts.repeat
        dest = self.work / f"{tool}-restore"
        reads: list[StoreReads] = []

        def before(i: int) -> None:
            self.discard(dest)
            reads[:] = [StoreReads(repo)]

        checks: dict[str, str] = {}

        def after_full(i: int, r: Run) -> None:
            r.store_read = reads[0].read()
            if r.ok and i == 0 and not self.opts.no_verify:
                checks["full restore"] = "tree check: " + compare_trees(c.root, where(dest))
            self.discard(dest)

        def noted(r: Run, step: str) -> None:
            if step in checks:
                r.note = checks[step] + ("; " + r.note if r.note else "")

        full = self.step(
            "full restore",
            tool,
            cmd(dest),
            data_bytes=c.bytes,
            repeat=n,
            before=before,
            after=after_full,
        )
        noted(full, "full restore")
        sub_arg = c.subtree if tool == "blanket" else str(c.root / c.subtree)
        for step, empty in (("subtree restore", False), ("subtree restore, empty cache", True)):
            cache = self.work / f"{tool}-empty-cache"

            def env(i: int, empty: bool = empty, cache: Path = cache) -> dict[str, str]:
                return dict(self.env, **{cache_var: str(cache)}) if empty else self.env

            def after_sub(i: int, r: Run, cache: Path = cache) -> None:
                r.store_read = reads[0].read()
                if r.ok and i == 0:
                    checks[r.step] = "tree check: " + compare_trees(
                        c.root / c.subtree, where(dest) / c.subtree, 1
                    )
                self.discard(dest)
                shutil.rmtree(cache, ignore_errors=True)

            r = self.step(
                step,
                tool,
                cmd(dest, sub_arg),
                data_bytes=c.subtree_bytes,
                repeat=n,
                env=env,
                before=before,
                after=after_sub,
            )
            noted(r, step)

    # (g) restic
    def restic_runs(self) -> None:
        c, n = self.corpus, self.opts.repeat
        repo = self.work / "restic-repo"
        cache = self.work / "restic-cache"
        base = [str(self.restic), "-r", str(repo)]

        def fresh(i: int) -> None:
            shutil.rmtree(repo, ignore_errors=True)
            shutil.rmtree(cache, ignore_errors=True)
            subprocess.run(
                [*base, "init", *self.opts.restic_init.split()],
                env=self.env,
                check=True,
                capture_output=True,
            )

        backup = [*base, "backup", "--host", "bench", str(c.root)]
        r = self.step("full backup", "restic", backup, data_bytes=c.bytes, repeat=n, before=fresh)
        r.repo_bytes = tree_bytes(repo)
        r = self.step("no-change rerun", "restic", backup, data_bytes=c.bytes, repeat=n)
        r.repo_bytes = tree_bytes(repo)
        files, changed = self.ensure_changed()
        r = self.step("rerun after 1% change", "restic", backup, data_bytes=changed)
        r.repo_bytes = tree_bytes(repo)
        r.note = f"{files} files changed"
        src_rel = str(c.root).lstrip("/")
        self.restores(
            "restic",
            repo,
            lambda dest, *paths: [
                *base,
                "restore",
                "latest",
                "--target",
                str(dest),
                *(a for p in paths for a in ("--include", p)),
            ],
            lambda dest: dest / src_rel,
            "RESTIC_CACHE_DIR",
        )

    def micro(self, zst: Path) -> None:
        """The pipeline's parts, each alone, with blanket's own libraries."""
        c, n, py = self.corpus, self.opts.repeat, self.blanket[0]
        src = shlex.quote(str(c.root))
        self.step(
            "micro: python-gnupg encrypt_file of the .zst (feeding thread)",
            "reference",
            [py, "-c", MICRO_GNUPG, str(zst), self.fpr],
            data_bytes=zst.stat().st_size,
            repeat=n,
        )
        r = self.step(
            "micro: 20 x python-gnupg encrypt of 100 kB (gpg per object)",
            "reference",
            [py, "-c", MICRO_GNUPG_SMALL, self.fpr, "20"],
            repeat=n,
        )
        r.note = f"{r.wall / 20 * 1000:.0f} ms per object"
        for write, threads in ((16 << 10, 0), (1 << 20, 0), (1 << 20, 2)):
            what = f"{write >> 10} KiB writes" + (f", threads={threads}" if threads else "")
            self.step(
                f"micro: tar | python-zstandard level 3, {what}",
                "reference",
                [
                    "bash",
                    "-o",
                    "pipefail",
                    "-c",
                    f"tar -cf - -C {src} . | {shlex.quote(py)} -c {shlex.quote(MICRO_ZSTD)} "
                    f"{write} {threads}",
                ],
                data_bytes=c.bytes,
                repeat=n,
            )
        out = self.work / "probe.tar.zst.gpg"
        self.step(
            "probe: python tar+sha256 -> zstd process -> gpg process",
            "reference",
            [py, "-c", MICRO_PIPELINE, str(c.root), self.fpr, str(out)],
            data_bytes=c.bytes,
            repeat=n,
        )
        dest = self.work / "probe-restore"
        self.step(
            "probe: gpg -d | zstd -d processes -> python tar reader, temp+rename",
            "reference",
            [py, "-c", MICRO_RESTORE, str(out), str(dest)],
            data_bytes=c.bytes,
            repeat=n,
            before=lambda i: dest.mkdir(),
            after=lambda i, r: self.discard(dest),
        )
        out.unlink(missing_ok=True)
        self.step(
            "micro: python tarfile + sha256 of every file, to a null sink",
            "reference",
            [py, "-c", MICRO_TARFILE, str(c.root)],
            data_bytes=c.bytes,
            repeat=n,
        )

    def sweep(self) -> None:
        """Full backups with other pack sizes (fresh repository each)."""
        c = self.corpus
        for size in [x for x in self.opts.pack_sizes.split(",") if x]:
            repo = self.work / f"blanket-repo-{size}"
            env = dict(self.env, BLANKET_STATE_DIR=str(self.work / f"blanket-state-{size}"))
            subprocess.run(
                self.bl("init", "--repo", str(repo), "--key", self.fpr),
                env=env,
                check=True,
                capture_output=True,
            )

            def same_env(i: int, env: dict[str, str] = env) -> dict[str, str]:
                return env

            r = self.step(
                f"full backup --pack-size {size}",
                "blanket",
                self.bl("backup", "--repo", str(repo), "--pack-size", size, "--json", str(c.root)),
                env=same_env,
                data_bytes=c.bytes,
            )
            r.repo_bytes = tree_bytes(repo)
            r.note = f"{len(list((repo / 'data').glob('*')))} packs"
            dest = self.work / "blanket-subtree"
            reads = StoreReads(repo)
            r = self.step(
                f"subtree restore --pack-size {size}",
                "blanket",
                self.bl("restore", "--repo", str(repo), "--to", str(dest), "--json", c.subtree),
                env=same_env,
                data_bytes=c.subtree_bytes,
            )
            r.store_read = reads.read()
            shutil.rmtree(dest, ignore_errors=True)
            shutil.rmtree(repo, ignore_errors=True)
            shutil.rmtree(self.work / f"blanket-state-{size}", ignore_errors=True)

    def profile(self) -> None:
        """cProfile'd full backup, no-change rerun and full restore (fresh repository),
        after the timed steps."""
        c = self.corpus
        repo = self.work / "blanket-repo-profile"
        dest = self.work / "blanket-restore-profile"
        env = dict(self.env, BLANKET_STATE_DIR=str(self.work / "blanket-state-profile"))
        subprocess.run(
            self.bl("init", "--repo", str(repo), "--key", self.fpr),
            env=env,
            check=True,
            capture_output=True,
        )
        backup = ["backup", "--repo", str(repo), "--json", str(c.root)]
        restore = ["restore", "--repo", str(repo), "--to", str(dest), "--json"]
        for name, args in (
            ("full backup", backup),
            ("no-change rerun", backup),
            ("full restore", restore),
        ):
            prof = self.work / f"{name.replace(' ', '-')}.prof"
            argv = [self.blanket[0], "-m", "cProfile", "-o", str(prof), "-m", "blanket", *args]
            r = self.record(
                measure(
                    f"{name} under cProfile",
                    "blanket",
                    argv,
                    env,
                    self.logs,
                    data_bytes=c.bytes,
                    cwd=self.work,
                )
            )
            if r.ok:
                summarize_profile(prof, r, top=self.opts.profile_top)
                if self.opts.keep:
                    print(f"  profile kept in {prof}")
        shutil.rmtree(dest, ignore_errors=True)
        shutil.rmtree(repo, ignore_errors=True)

    def run(self) -> None:
        self.guarded("setup", self.setup)
        if not hasattr(self, "corpus"):
            return
        print("reference: tar | zstd -3 | gpg", flush=True)
        self.guarded("reference", self.reference)
        print("blanket", flush=True)
        self.guarded("blanket", self.blanket_runs)
        if self.opts.pack_sizes:
            self.guarded("pack-size sweep", self.sweep)
        if self.restic:
            print("restic", flush=True)
            self.guarded("restic", self.restic_runs)
        else:
            print("restic: not installed (or --no-restic); skipped", flush=True)
        if self.opts.profile:
            print("profile", flush=True)
            self.guarded("profile", self.profile)

    def print_versions(self) -> dict[str, str]:
        info = versions(self.blanket, self.env)
        info["blanket code"] = (
            f"snapshot of {ROOT} taken at the start, sha256 of its .py files {self.code_hash}"
            if self.code_hash != "installed"
            else "as installed"
        )
        print("## machine and versions")
        for k, v in info.items():
            print(f"- {k}: {v}")
        return info

    def report(self) -> None:
        c = getattr(self, "corpus", None)
        print()
        info = self.print_versions()
        print(f"- command: {shlex.join([Path(sys.executable).name, *sys.argv])}")
        if c is not None:
            print()
            print(f"## corpus (scale {self.opts.scale}, seed {self.opts.seed})")
            print(
                f"{c.files} regular files, {c.dirs} directories, {c.symlinks} symlinks; "
                f"{c.bytes / 1e6:,.0f} MB apparent, {c.data_bytes / 1e6:,.0f} MB of data; "
                f"subtree {c.subtree}: {c.subtree_files} files, {c.subtree_bytes / 1e3:,.0f} kB, "
                f"packed {self.extra.get('subtree_packed', 0) / 1e3:,.1f} kB; "
                f"1% change: {int(self.extra.get('changed_files', 0))} files, "
                f"{self.extra.get('changed_bytes', 0) / 1e6:,.1f} MB"
            )
        print()
        print(
            "## figures (MB = 10^6 bytes; MiB = 2^20; others' cores: CPU other processes used "
            "during the step, in cores; runq wait: share of the wall time the command's main "
            "thread was runnable but waiting for a CPU)"
        )
        print_runs(self.runs)
        print()
        print("## ratios")
        print_ratios(self.runs, self.extra)
        if "blanket_state_bytes" in self.extra:
            print(
                f"\nblanket local state after the full backup: "
                f"{self.extra['blanket_state_bytes'] / MiB:.1f} MiB"
            )
        results = {
            "versions": info,
            "argv": sys.argv,
            "scale": self.opts.scale,
            "corpus": {k: v for k, v in asdict(c).items() if k not in ("regular", "root")}
            if c
            else None,
            "extra": self.extra,
            "runs": [asdict(r) | {"mbps": r.mbps} for r in self.runs],
        }
        path = Path(self.opts.json_out) if self.opts.json_out else self.work / "results.json"
        path.write_text(json.dumps(results, indent=1))
        print(f"\nresults as JSON: {path}")

    def cleanup(self) -> None:
        subprocess.run(
            ["gpgconf", "--homedir", str(self.gnupghome), "--kill", "all"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(self.gnupghome, ignore_errors=True)
        self.empty_trash()
        if not self.opts.keep:
            shutil.rmtree(self.work, ignore_errors=True)
        else:
            print(f"work directory kept: {self.work}")


def summarize_profile(prof: Path, run: Run, top: int = 30) -> None:
    """Print the top cumulative functions and where the main thread waited.

    cProfile sees only the main thread: the gpg feeding thread (python-gnupg) and gpg
    itself are not in it; main-thread time blocked on the pipe to gpg, on joining the
    encryptor thread and on gpg subprocesses for indexes is what "waiting on gpg" means."""
    import io
    import pstats

    buf = io.StringIO()
    st = pstats.Stats(str(prof), stream=buf)
    st.sort_stats("cumulative").print_stats(top)
    st.sort_stats("tottime").print_stats(top)
    print(buf.getvalue())
    total = max(st.total_tt, 1e-9)  # type: ignore[attr-defined]

    def tt(pred: Callable[[str, str], bool]) -> tuple[float, int]:
        t = n = 0
        for (file, _line, func), (_cc, nc, tottime, _ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
            if pred(file, func):
                t += tottime
                n += nc
        return t, n

    def ct(file_part: str, func: str) -> tuple[float, int]:
        for (file, _line, f), (_cc, nc, _tt, cumtime, _callers) in st.stats.items():  # type: ignore[attr-defined]
            if f == func and file_part in file:
                return cumtime, nc
        return 0.0, 0

    groups = {
        "os.write to gpg's stdin (backup: blocked while gpg catches up)": lambda f, fn: (
            fn == "<built-in method posix.write>"
        ),
        "zstd (compress calls; the work runs on zstd's own thread)": lambda f, fn: (
            "zstd" in fn.lower() and "method" in fn
        ),
        "sha256 (hashlib update)": lambda f, fn: "update' of '_hashlib" in fn,
        "file reads (os.pread/read)": lambda f, fn: (
            fn in ("<built-in method posix.pread>", "<built-in method posix.read>")
        ),
        "fsync": lambda f, fn: fn == "<built-in method posix.fsync>",
        "stat/lstat/fstat": lambda f, fn: (
            fn
            in (
                "<built-in method posix.lstat>",
                "<built-in method posix.stat>",
                "<built-in method posix.fstat>",
            )
        ),
        "xattrs": lambda f, fn: "xattr" in fn,
        "waiting on threads/gpg (lock acquire, join)": lambda f, fn: "acquire' of '_thread" in fn,
        "process spawn (fork_exec)": lambda f, fn: "fork_exec" in fn,
        "tarfile (python)": lambda f, fn: f.endswith("tarfile.py"),
        "blanket python code": lambda f, fn: any(d in f for d in ("/blanket/", "/restore/")),
    }
    print(
        f"main thread, total {total:.1f} s (profiled wall {run.wall:.1f} s; CPU "
        f"{run.cpu_self:.1f} s blanket process, {run.cpu_children:.1f} s gpg children):"
    )
    for name, pred in groups.items():
        t, n = tt(pred)
        print(f"  {name:62s} {t:7.2f} s  {100 * t / total:5.1f}%  ({n} calls)")
    for file_part, func, label in (
        ("crypto.py", "finish", "EncryptProcess.finish (wait for a pack's gpg; commit thread)"),
        ("crypto.py", "encrypt_bytes", "Gpg.encrypt_bytes (one gpg per index, incl. spawn)"),
        ("crypto.py", "decrypt_bytes", "Gpg.decrypt_bytes"),
        ("crypto.py", "decrypt_unchecked", "Gpg.decrypt_unchecked (config)"),
        ("repo.py", "commit", "Repository.commit (upload, index, state)"),
        ("packer.py", "finish", "PackWriter.finish (end the tar and zstd streams)"),
        ("packer.py", "wait", "Sealing.wait (wait for gpg, hash the spool; commit thread)"),
        ("packer.py", "__init__", "PackWriter.__init__ (start gpg)"),
        ("backup.py", "walked", "walk + stat (generator)"),
        ("backup.py", "describe", "entry_for (the join's describe)"),
        ("backup.py", "__iter__", "replay of prior layers (generator)"),
        ("assemble.py", "store_file", "store_file (read, hash, tar header, hand to zstd)"),
    ):
        t, n = ct(file_part, func)
        print(f"  cumulative {label:60s} {t:7.2f} s  ({n} calls)")


# --- the million-file mode ------------------------------------------------------------


def million(opts: argparse.Namespace, work: Path) -> None:
    b = Bench(opts, work)
    n = opts.files
    try:
        b.fpr = make_key(b.gnupghome)
        src = work / "src"
        t0 = time.perf_counter()
        print(f"creating {n:,} tiny files in {src} ...", flush=True)
        per_dir = 1000
        for i in range(n):
            if i % per_dir == 0:
                d = os.path.join(src, f"d{i // per_dir:04d}")
                os.makedirs(d)
            fd = os.open(os.path.join(d, f"f{i % per_dir:04d}"), os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, b"%d\n" % i)
            os.close(fd)
        print(f"  created in {time.perf_counter() - t0:.0f} s", flush=True)
        os.sync()
        size = tree_bytes(src)
        repo = work / "blanket-repo"

        def blanket_part() -> None:
            subprocess.run(
                b.bl("init", "--repo", str(repo), "--key", b.fpr),
                env=b.env,
                check=True,
                capture_output=True,
            )
            backup = b.bl("backup", "--repo", str(repo), "--json", str(src))
            t = opts.step_timeout
            r = b.step(f"backup {n:,} files", "blanket", backup, data_bytes=size, timeout=t)
            r.repo_bytes = tree_bytes(repo)
            b.step(f"no-change rerun {n:,} files", "blanket", backup, timeout=t)
            dest = work / "blanket-restore"
            r = b.step(
                f"restore {n:,} files",
                "blanket",
                b.bl("restore", "--repo", str(repo), "--to", str(dest), "--json"),
                data_bytes=size,
                timeout=t,
            )
            if r.ok:
                got = sum(len(fs) for _, _, fs in os.walk(dest))
                r.note = f"{got:,} files restored"
            b.discard(dest)

        def restic_part() -> None:
            rrepo = work / "restic-repo"
            base = [str(b.restic), "-r", str(rrepo)]
            subprocess.run(
                [*base, "init", *opts.restic_init.split()],
                env=b.env,
                check=True,
                capture_output=True,
            )
            backup = [*base, "backup", "--host", "bench", str(src)]
            t = opts.step_timeout
            r = b.step(f"backup {n:,} files", "restic", backup, data_bytes=size, timeout=t)
            r.repo_bytes = tree_bytes(rrepo)
            b.step(f"no-change rerun {n:,} files", "restic", backup, timeout=t)
            dest = work / "restic-restore"
            b.step(
                f"restore {n:,} files",
                "restic",
                [*base, "restore", "latest", "--target", str(dest)],
                data_bytes=size,
                timeout=t,
            )
            b.discard(dest)

        b.guarded("blanket", blanket_part)
        if b.restic:
            b.guarded("restic", restic_part)
        print()
        info = b.print_versions()
        print(f"- command: {shlex.join([Path(sys.executable).name, *sys.argv])}")
        print(f"\n## {n:,} tiny files ({size / 1e6:.1f} MB)")
        print_runs(b.runs)
        path = Path(opts.json_out) if opts.json_out else work / "results.json"
        path.write_text(
            json.dumps(
                {"versions": info, "files": n, "runs": [asdict(r) for r in b.runs]}, indent=1
            )
        )
        print(f"\nresults as JSON: {path}")
    finally:
        b.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="corpus size factor (1.0: ~1.5 GB)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--million", action="store_true", help="the 1M tiny files mode")
    ap.add_argument("--files", type=int, default=1_000_000, help="files for --million")
    ap.add_argument("--work", help="work directory (default: a new one under /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--no-restic", action="store_true", help="skip restic even if installed")
    ap.add_argument("--no-verify", action="store_true", help="skip the restored-tree checks")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="also run cProfile'd blanket backup, rerun and restore and summarize them",
    )
    ap.add_argument(
        "--ref-gpg-default",
        action="store_true",
        help="also time the reference with gpg's default compression",
    )
    ap.add_argument(
        "--restic-init",
        default="--repository-version 2",
        help="arguments for 'restic init' (default: %(default)s, compressed)",
    )
    ap.add_argument(
        "--blanket", help="command that runs blanket (default: .venv python -m blanket)"
    )
    ap.add_argument("--step-timeout", type=float, default=3600)
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each repeatable step N times and keep the fastest (a shared "
        "machine's noise); the 1%%-change rerun runs once",
    )
    ap.add_argument(
        "--snapshot-wait",
        type=float,
        default=900,
        help="how long to keep retrying to snapshot a source that does not import",
    )
    ap.add_argument(
        "--wait-idle",
        type=float,
        default=0,
        help="before each step wait until this many cores are idle (shared machines)",
    )
    ap.add_argument("--wait-max", type=float, default=120, help="longest wait per step, s")
    ap.add_argument(
        "--micro",
        action="store_true",
        help="also time the pipeline's parts (python-gnupg feeding, zstd write sizes, ...)",
    )
    ap.add_argument(
        "--pack-sizes",
        default="",
        help="also time full backups with these --pack-size values (comma-separated)",
    )
    ap.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run every measured command at this niceness (e.g. -15 as root on a shared "
        "machine, so other processes take little CPU from it)",
    )
    ap.add_argument("--profile-top", type=int, default=25, help="lines per profile listing")
    ap.add_argument("--code", help="run blanket from this source snapshot (PYTHONPATH)")
    ap.add_argument(
        "--no-snapshot",
        action="store_true",
        help="run the installed blanket instead of a snapshot of the source "
        "copied to the work directory at the start",
    )
    ap.add_argument("--json-out", help="write the results here (default: WORK/results.json)")
    opts = ap.parse_args()
    global NICE
    NICE = opts.nice
    if opts.work:
        work = Path(opts.work).resolve()
        if work.exists() and any(work.iterdir()):
            raise SystemExit(f"--work {work} is not empty; give a new or empty directory")
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="blanket-bench-", dir="/tmp"))
    print(f"work directory: {work}", flush=True)
    if opts.million:
        million(opts, work)
        return
    bench = Bench(opts, work)
    try:
        bench.run()
    except KeyboardInterrupt:
        print("\ninterrupted: partial results follow")
    finally:
        try:
            bench.report()
        finally:
            bench.cleanup()


if __name__ == "__main__":
    main()
