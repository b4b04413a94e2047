"""blanket at scale, side by side with restic: a repository of 10,000+ packs and 1M entries.

Builds (untimed) a tree of ``--files`` tiny files in folders of ``--per-dir``, backs it
up into a blanket repository of about ``--packs`` packs (one backup pass whose packs hold
files/packs entries each: small packs are the cheap way to many commits) and into a
restic repository, and a second blanket repository of the same tree in 10 commits. Then,
every command under ``ulimit -n`` ``--nofile`` (1,024 by default, what a shell and cron
give), it measures for each tool:

* full restore, subtree restore (one folder), listing the whole tree and one folder,
  quick verify (``restic check`` without reading data), and a no-change backup;
* wall time, peak RSS (``ru_maxrss`` of the largest process), and open files: the most
  file descriptors the command's own process held at once (``/proc/PID/fd``, sampled
  every 5 ms) and the most its whole process tree held;
* for blanket's subtree restore, the same restore in the 10-commit repository: the time
  ratio (target <= 1.5x) and the bytes the command read (``/proc/PID/io`` ``rchar``:
  local index cache and packs alike). The folder restored holds ``--per-dir`` files
  (100), about one pack's worth in the many-pack repository, so both restores read about
  one pack and the ratio shows what the other 9,990 commits cost: their indexes.

Every restore is compared with the source (every file's size and content).

    .venv/bin/python benchmarks/scale.py [--files 1000000] [--packs 10000] [--work DIR]
                                         [--no-restic] [--keep]

restic runs when it is installed (``apt-get install restic``: Debian 12 has 0.14);
``--no-restic`` leaves it out. The work directory (default /var/tmp/blanket-scale) needs
about 3x the tree's size in blocks (tiny files take a block each): about 12 GB at 1M
files. docs/performance.md has the figures and the exact command.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEY_UID = "blanket scale bench <scale@localhost>"
PASSWORD = "scale-bench"

# Start the command with the open-file limit, sample its descriptors, reap it with wait4.
LAUNCHER = r"""
import json, os, resource, sys, time
out, nofile, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
def fds(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return 0
def tree(pid):
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for t in os.listdir("/proc/%d/task" % p):
                with open("/proc/%d/task/%s/children" % (p, t)) as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return pids
t0 = time.perf_counter()
pid = os.posix_spawnp(argv[0], argv, os.environ)
own = total = 0
while True:
    got = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
    if got is not None:
        break
    own = max(own, fds(pid))
    total = max(total, sum(fds(p) for p in tree(pid)))
    time.sleep(0.005)
wall = time.perf_counter() - t0
try:
    io = dict((k.strip(), int(v)) for k, v in (l.split(":") for l in open("/proc/%d/io" % pid)))
except OSError:
    io = {}
_, status, ru = os.wait4(pid, 0)
with open(out, "w") as f:
    json.dump({"rc": os.waitstatus_to_exitcode(status), "wall": wall,
               "maxrss_kib": ru.ru_maxrss, "fds": own, "tree_fds": total,
               "rchar": io.get("rchar", 0)}, f)
"""

BUILD = r"""
import sys
from blanket.backends import open_backend
from blanket.backup import BackupOptions, run_backup
from blanket.repo import Repository
url, home, src, per_pack = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
repo = Repository.open(open_backend(url), home)
r = run_backup(repo, src, BackupOptions(pack_entries=per_pack, pack_seconds=1e9,
                                        pack_size=1 << 40))
print(r.packs, "packs", r.files, "files")
"""


@dataclass
class Result:
    tool: str
    step: str
    ok: bool
    wall: float = 0.0
    rss_mib: float = 0.0
    fds: int = 0
    tree_fds: int = 0
    rchar: int = 0
    note: str = ""


class Scale:
    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        self.work = Path(opts.work)
        self.src = self.work / "src"
        self.logs = self.work / "logs"
        self.home = self.work / "gnupg"
        self.results: list[Result] = []
        py = ROOT / ".venv" / "bin" / "python"
        self.python = str(py if py.exists() else Path(sys.executable))
        self.env = dict(
            os.environ,
            GNUPGHOME=str(self.home),
            BLANKET_STATE_DIR=str(self.work / "state"),
            RESTIC_PASSWORD=PASSWORD,
            RESTIC_CACHE_DIR=str(self.work / "restic-cache"),
        )

    # --- building (untimed) -------------------------------------------------------------

    def build_tree(self) -> None:
        n, per = self.opts.files, self.opts.per_dir
        for d in range(math.ceil(n / per)):
            folder = self.src / f"dir{d:05d}"
            folder.mkdir(parents=True)
            for i in range(min(per, n - d * per)):
                (folder / f"file{i:05d}.txt").write_bytes(b"%d/%d\n" % (d, i) * (1 + i % 7))

    def make_key(self) -> str:
        self.home.mkdir(mode=0o700)
        gen = ["gpg", "--batch", "--passphrase", "", "--quick-gen-key", KEY_UID]
        subprocess.run([*gen, "future-default", "default", "never"], env=self.env, check=True)
        out = subprocess.run(
            ["gpg", "--batch", "--with-colons", "--list-secret-keys", KEY_UID],
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))

    def build_blanket(self, name: str, key: str, packs: int) -> str:
        url = str(self.work / name)
        self.blanket("init", "--repo", url, "--key", key)
        per_pack = max(1, math.ceil(self.opts.files / packs))
        t0 = time.perf_counter()
        built = subprocess.run(
            [self.python, "-c", BUILD, url, str(self.home), str(self.src), str(per_pack)],
            env=self.env,
            capture_output=True,
            text=True,
        )
        if built.returncode:
            raise SystemExit(f"building {name} failed:\n{built.stderr[-3000:]}")
        out = built.stdout.strip()
        print(f"built {name}: {out} in {time.perf_counter() - t0:.0f} s", flush=True)
        return url

    def blanket(self, *args: str) -> None:
        subprocess.run([self.python, "-m", "blanket", *args], env=self.env, check=True)

    # --- measuring ----------------------------------------------------------------------

    def measure(self, tool: str, step: str, argv: list[str], stdout: Path | None = None) -> Result:
        self.logs.mkdir(exist_ok=True)
        slug = f"{tool}-{step}".replace(" ", "_").replace("/", "_")
        result = self.logs / f"{slug}.json"
        with (
            open(stdout or self.logs / f"{slug}.out", "wb") as out,
            open(self.logs / f"{slug}.err", "wb") as err,
        ):
            launcher = [sys.executable, "-I", "-S", "-c", LAUNCHER, str(result)]
            subprocess.run(
                [*launcher, str(self.opts.nofile), *argv],
                env=self.env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        got = json.loads(result.read_text())
        r = Result(
            tool,
            step,
            got["rc"] == 0,
            got["wall"],
            got["maxrss_kib"] / 1024,
            got["fds"],
            got["tree_fds"],
            got["rchar"],
        )
        if not r.ok:
            tail = (self.logs / f"{slug}.err").read_text(errors="replace").strip()
            r.note = f"exit {got['rc']}: {tail.splitlines()[-1] if tail else ''}"[:200]
        self.results.append(r)
        print(
            f"{tool:8} {step:34} {'ok' if r.ok else 'FAILED':6} {r.wall:8.2f} s "
            f"{r.rss_mib:7.1f} MiB  fds {r.fds:4} (tree {r.tree_fds:4})  "
            f"read {r.rchar / 1e6:9.1f} MB {r.note}",
            flush=True,
        )
        return r

    def check_restore(self, restored: Path, top: str | None) -> str:
        """Compare every file below ``top`` (or all) with the source; ``restored`` holds
        the tree's contents (``restored/dir00003/...``)."""
        bad = n = 0
        for folder, _, files in os.walk(self.src / top if top else self.src):
            rel = Path(folder).relative_to(self.src)
            for name in files:
                n += 1
                try:
                    same = (restored / rel / name).read_bytes() == Path(folder, name).read_bytes()
                except OSError:
                    same = False
                bad += not same
        return f"{n - bad}/{n} files equal" if bad else f"all {n} files equal"

    def run(self) -> None:
        opts = self.opts
        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        t0 = time.perf_counter()
        self.build_tree()
        print(f"tree: {opts.files} files in {time.perf_counter() - t0:.0f} s", flush=True)
        key = self.make_key()
        many = self.build_blanket("repo-many", key, opts.packs)
        few = self.build_blanket("repo-few", key, 10)
        bl = [self.python, "-m", "blanket"]
        top = "dir00003"  # --per-dir files: a pack or two of the many-pack repository
        checks = []
        for name, url in (("10,000-pack", many), ("10-pack", few)):
            tag = "" if url == many else " (10 commits)"
            if url == many:
                out = self.work / "restore-full"
                self.measure(
                    "blanket", "full restore", [*bl, "restore", "--repo", url, "--to", str(out)]
                )
                checks.append(("blanket full restore", self.check_restore(out, None)))
                shutil.rmtree(out)
            out = self.work / f"restore-sub-{name}"
            self.measure(
                "blanket",
                "subtree restore" + tag,
                [*bl, "restore", "--repo", url, "--to", str(out), top],
            )
            checks.append((f"blanket subtree restore{tag}", self.check_restore(out, top)))
            if url == many:
                self.measure("blanket", "ls (whole tree)", [*bl, "ls", "--repo", url])
                self.measure("blanket", "ls (one folder)", [*bl, "ls", "--repo", url, top])
                self.measure("blanket", "quick verify", [*bl, "verify", "--repo", url])
                self.measure(
                    "blanket", "no-change backup", [*bl, "backup", "--repo", url, str(self.src)]
                )
        if not opts.no_restic and shutil.which("restic"):
            self.restic_runs(top, checks)
        self.report(checks)

    def restic_runs(self, top: str, checks: list[tuple[str, str]]) -> None:
        repo = str(self.work / "restic")
        rs = (
            ["restic", "--repo", repo, "--no-cache"]
            if self.opts.restic_no_cache
            else [
                "restic",
                "--repo",
                repo,
            ]
        )
        subprocess.run([*rs, "init"], env=self.env, check=True, capture_output=True)
        t0 = time.perf_counter()
        subprocess.run(
            [*rs, "backup", str(self.src)], env=self.env, check=True, capture_output=True
        )
        print(f"built restic repository in {time.perf_counter() - t0:.0f} s", flush=True)
        out = self.work / "restic-full"
        self.measure("restic", "full restore", [*rs, "restore", "latest", "--target", str(out)])
        checks.append(
            ("restic full restore", self.check_restore(out / self.src.relative_to("/"), None))
        )
        shutil.rmtree(out)
        out = self.work / "restic-sub"
        self.measure(
            "restic",
            "subtree restore",
            [*rs, "restore", "latest", "--target", str(out), "--include", str(self.src / top)],
        )
        checks.append(
            ("restic subtree restore", self.check_restore(out / self.src.relative_to("/"), top))
        )
        self.measure("restic", "ls (whole tree)", [*rs, "ls", "latest"])
        self.measure("restic", "ls (one folder)", [*rs, "ls", "latest", str(self.src / top)])
        self.measure("restic", "quick verify", [*rs, "check"])
        self.measure("restic", "no-change backup", [*rs, "backup", str(self.src)])

    def report(self, checks: list[tuple[str, str]]) -> None:
        print("\n## Restores compared with the source")
        for what, verdict in checks:
            print(f"- {what}: {verdict}")
        print(f"\n## Figures (ulimit -n {self.opts.nofile}; {self.opts.files} files)\n")
        print("| tool | step | ok | wall s | peak RSS MiB | open files (own / tree) | read MB |")
        print("|---|---|---|---:|---:|---:|---:|")
        for r in self.results:
            print(
                f"| {r.tool} | {r.step} | {'yes' if r.ok else 'NO: ' + r.note} | {r.wall:.2f} "
                f"| {r.rss_mib:.1f} | {r.fds} / {r.tree_fds} | {r.rchar / 1e6:.1f} |"
            )
        by = {(r.tool, r.step): r for r in self.results}
        many = by.get(("blanket", "subtree restore"))
        few = by.get(("blanket", "subtree restore (10 commits)"))
        if many and few and few.wall:
            print(
                f"\nsubtree restore, 10,000-pack / 10-pack repository: "
                f"{many.wall / few.wall:.2f}x the time (target <= 1.5), "
                f"read {many.rchar / 1e6:.1f} MB against {few.rchar / 1e6:.1f} MB"
            )
        for step in (
            "full restore",
            "subtree restore",
            "ls (whole tree)",
            "ls (one folder)",
            "quick verify",
            "no-change backup",
        ):
            b, r = by.get(("blanket", step)), by.get(("restic", step))
            if b and r and r.wall and b.ok and r.ok:
                print(
                    f"{step}: blanket / restic time {b.wall / r.wall:.2f}, "
                    f"peak RSS {b.rss_mib:.0f} / {r.rss_mib:.0f} MiB"
                )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=1_000_000)
    p.add_argument("--packs", type=int, default=10_000)
    p.add_argument(
        "--per-dir",
        type=int,
        default=100,
        help="files per folder; the subtree restored is one folder (keep it about "
        "files/packs, so the folder fills a pack or two in the many-pack repository)",
    )
    p.add_argument("--nofile", type=int, default=1024, help="open-file limit of every command")
    p.add_argument("--work", default="/var/tmp/blanket-scale")
    p.add_argument("--no-restic", action="store_true")
    p.add_argument("--restic-no-cache", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    opts = p.parse_args()
    bench = Scale(opts)
    try:
        bench.run()
    finally:
        if not opts.keep:
            shutil.rmtree(opts.work, ignore_errors=True)


if __name__ == "__main__":
    main()
