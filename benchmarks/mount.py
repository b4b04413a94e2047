"""``blanket mount`` side by side with ``restic mount`` on the benchmark corpus.

Builds the corpus of benchmarks/bench.py (``--scale``) plus one large incompressible
file (``--big-mib``, 200 MiB by default), backs it up twice with each tool (the second
time after ~1% of the files changed: blanket's layers 0 and 1, restic's two snapshots),
then, for each tool and each operation, mounts the repository afresh (empty caches:
blanket's frame cache is per mount, restic gets a new cache folder) and measures:

* ``find`` over the latest tree;
* ``cat`` of the large file to /dev/null;
* ``diff -r`` of one folder of small files between the two points in time;
* the bytes the operation made the mount read from the store: blanket's own count of
  the bytes its stores returned (its ``--json`` summary), and, for both tools, the sizes
  of the store objects whose atime moved (whole objects: an upper bound for ranged
  reads) and the mount process's ``rchar`` (store and local caches together).

Each operation's wall time is from the mount being up to the command's end; the time
to mount (to the mount point answering) is shown apart. Run it nice'd on a shared
machine; figures go to docs/performance.md.

    .venv/bin/python benchmarks/mount.py [--scale 0.05] [--big-mib 200] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import build_corpus, change_one_percent, find_blanket, make_key  # noqa: E402

MiB = 1 << 20
WAIT = 600.0


@dataclass
class Result:
    tool: str
    op: str
    mount_s: float
    wall_s: float
    store_bytes: int | None  # the tool's own count (blanket)
    objects_bytes: int  # store objects whose atime moved, whole
    rchar: int
    ok: bool


def mounted(point: Path) -> bool:
    with open("/proc/mounts") as f:
        return any(line.split()[1] == str(point) for line in f)


def reset_atimes(store: Path) -> dict[str, float]:
    """Set every store object's atime to long ago; their paths -> that atime."""
    old = 1_000_000_000.0
    times = {}
    for d, _, files in os.walk(store):
        for name in files:
            p = os.path.join(d, name)
            st = os.stat(p)
            os.utime(p, (old, st.st_mtime))
            times[p] = old
    return times


def read_objects(before: dict[str, float]) -> int:
    return sum(os.path.getsize(p) for p, t in before.items() if os.stat(p).st_atime != t)


def rchar(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/io") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("rchar"))
    except (OSError, StopIteration):
        return 0


class Bench:
    def __init__(self, work: Path, opts: argparse.Namespace) -> None:
        self.work, self.opts = work, opts
        self.env = dict(os.environ, RESTIC_PASSWORD="bench", BLANKET_STATE_DIR=str(work / "state"))
        self.blanket = find_blanket(None, self.env)
        self.results: list[Result] = []

    def run(self, argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, env=self.env, check=True, capture_output=True, text=True, timeout=WAIT, **kw
        )  # type: ignore[call-overload,no-any-return]

    def prepare(self) -> None:
        src = self.work / "src"
        corpus = build_corpus(src, self.opts.scale, 1)
        big = src / "big"
        big.mkdir()
        with open(big / "video.bin", "wb") as f:
            for _ in range(self.opts.big_mib):
                f.write(os.urandom(MiB))
        self.subtree = corpus.subtree
        self.env["GNUPGHOME"] = str(self.work / "gnupg")
        fpr = make_key(self.work / "gnupg")
        self.brepo, self.rrepo = self.work / "blanket-repo", self.work / "restic-repo"
        self.run([*self.blanket, "init", "--repo", str(self.brepo), "--key", fpr, "-q"])
        self.run(["restic", "-r", str(self.rrepo), "init", "-q"])
        for round_ in range(2):
            if round_:
                change_one_percent(corpus, 1)
                (src / corpus.subtree / "added-in-layer-1.txt").write_text("new\n")
            self.run([*self.blanket, "backup", "--repo", str(self.brepo), str(src), "-q"])
            self.run(["restic", "-r", str(self.rrepo), "backup", "-q", "--host", "b", str(src)])
        self.src = src
        snaps = json.loads(
            self.run(["restic", "-r", str(self.rrepo), "snapshots", "--json"]).stdout
        )
        self.snaps = [s["short_id"] for s in sorted(snaps, key=lambda s: s["time"])]

    def paths(self, tool: str, point: Path) -> dict[str, list[str]]:
        rel = str(self.src).lstrip("/")  # restic keeps the absolute path of the source
        if tool == "blanket":
            latest, old, new = point / "latest", point / "layers/0", point / "layers/1"
        else:
            latest = point / "snapshots/latest" / rel
            old, new = (point / "ids" / s / rel for s in self.snaps)
        return {
            "find latest": ["find", str(latest)],
            f"cat {self.opts.big_mib} MiB file": ["cat", str(latest / "big/video.bin")],
            "diff -r one folder, two points": [
                "diff",
                "-r",
                str(old / self.subtree),
                str(new / self.subtree),
            ],
        }

    def measure(self, tool: str, op: str) -> None:
        point = self.work / f"mnt-{tool}"
        point.mkdir(exist_ok=True)
        store = self.brepo if tool == "blanket" else self.rrepo
        if tool == "blanket":
            argv = [*self.blanket, "mount", "--json", "--repo", str(store), str(point)]
        else:
            cache = self.work / "restic-cache"
            shutil.rmtree(cache, ignore_errors=True)
            argv = ["restic", "-r", str(store), "--cache-dir", str(cache), "mount", str(point)]
        before = reset_atimes(store)
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, env=self.env, stdout=subprocess.PIPE, text=True)
        probe = point / ("latest" if tool == "blanket" else "snapshots")
        while not (mounted(point) and probe.exists()):
            assert proc.poll() is None, f"{tool} mount ended early"
            time.sleep(0.02)
        mount_s = time.perf_counter() - t0
        r0 = rchar(proc.pid)
        cmd = self.paths(tool, point)[op]
        t1 = time.perf_counter()
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=WAIT)
        wall = time.perf_counter() - t1
        used = rchar(proc.pid) - r0
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=WAIT)
        if mounted(point):
            subprocess.run(["fusermount3", "-u", str(point)], check=False)
        own = None
        for line in out.splitlines():
            if line.startswith("{") and json.loads(line).get("type") == "summary":
                own = int(json.loads(line)["bytes_fetched"])
        ok = done.returncode in (0, 1) if op.startswith("diff") else done.returncode == 0
        objects = read_objects(before)
        self.results.append(Result(tool, op, mount_s, wall, own, objects, used, ok))

    def report(self) -> None:
        print(
            f"\n{'operation':34} {'tool':8} {'mount s':>8} {'op s':>8} "
            f"{'own MiB':>8} {'objects MiB':>11} {'rchar MiB':>9} ok"
        )
        for r in self.results:
            own = "-" if r.store_bytes is None else f"{r.store_bytes / MiB:.1f}"
            print(
                f"{r.op:34} {r.tool:8} {r.mount_s:8.2f} {r.wall_s:8.2f} {own:>8} "
                f"{r.objects_bytes / MiB:11.1f} {r.rchar / MiB:9.1f} {'yes' if r.ok else 'NO'}"
            )
        for repo in (self.brepo, self.rrepo):
            size = sum(
                os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(repo) for f in fs
            )
            print(f"{repo.name}: {size / MiB:.1f} MiB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=float, default=0.05, help="corpus scale (bench.py's)")
    p.add_argument("--big-mib", type=int, default=200, help="size of the large file")
    p.add_argument("--work", default=None, help="work folder (default: a new one in /tmp)")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--no-restic", action="store_true")
    opts = p.parse_args()
    work = Path(opts.work or tempfile.mkdtemp(prefix="bench-mount-", dir="/tmp"))
    try:
        b = Bench(work, opts)
        t = time.perf_counter()
        b.prepare()
        print(f"prepared in {time.perf_counter() - t:.0f} s: {b.src}")
        tools = ["blanket"] + ([] if opts.no_restic or not shutil.which("restic") else ["restic"])
        for op in b.paths("blanket", work):
            for tool in tools:
                b.measure(tool, op)
        b.report()
    finally:
        if not opts.keep:
            for point in work.glob("mnt-*"):
                if mounted(point):
                    subprocess.run(["fusermount3", "-uz", str(point)], check=False)
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
