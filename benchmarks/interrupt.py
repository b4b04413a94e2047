"""How much work do interruptions waste? Kill a backup again and again, then compare.

Builds a corpus of random (incompressible) files, backs it up once without interruption,
then backs the same corpus up into a second repository with ``blanket backup`` killed by
SIGKILL at random moments until a run completes. Prints, for both: bytes written to the
store (committed packs plus what killed runs left behind), bytes read from the source, and
CPU seconds; and the ratios interrupted / uninterrupted. The goal is a ratio under 1.05.

    .venv/bin/python benchmarks/interrupt.py [--mib 300] [--pack-size 4M] [--seed 1]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_corpus(root: Path, mib: int, rng: random.Random) -> None:
    remaining = mib << 20
    i = 0
    while remaining > 0:
        size = min(remaining, rng.choice([4 << 10, 64 << 10, 512 << 10, 3 << 20]))
        p = root / f"d{i % 11}" / f"f{i:05d}"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(size))
        remaining -= size
        i += 1


def store_bytes(repo: Path) -> int:
    return sum(p.stat().st_size for p in repo.rglob("*") if p.is_file())


def wasted_bytes(repo: Path) -> int:
    """What a killed run left that no commit uses: unfinished temp files, and data objects
    whose commit has no index (the next run deletes them)."""
    committed = {p.name for p in (repo / "index").glob("*")}
    waste = 0
    for p in repo.rglob("*"):
        if not p.is_file():
            continue
        orphan = p.parent.name == "data" and p.name.split("-", 1)[0] not in committed
        if p.name.startswith(".tmp-") or orphan:
            waste += p.stat().st_size
    return waste


def blanket(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "blanket", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=300)
    ap.add_argument("--pack-size", default="4M")
    ap.add_argument("--seed", type=int, default=1)
    opts = ap.parse_args()
    rng = random.Random(opts.seed)
    work = Path(tempfile.mkdtemp(prefix="bint", dir="/tmp"))
    try:
        env = dict(os.environ, GNUPGHOME=str(work / "g"), BLANKET_STATE_DIR=str(work / "state"))
        os.mkdir(work / "g", 0o700)
        subprocess.run(
            ["gpg", "--batch", "--passphrase", "", "--quick-gen-key", "bench <b@x>",
             "future-default", "default", "never"],
            env=env, check=True, capture_output=True,
        )  # fmt: skip
        make_corpus(work / "src", opts.mib, rng)
        results = {}
        for name, killing in (("uninterrupted", False), ("killed", True)):
            repo = work / f"repo-{name}"
            subprocess.run(
                [sys.executable, "-m", "blanket", "init", "--repo", str(repo), "--key", "b@x"],
                env=env, check=True, capture_output=True,
            )  # fmt: skip
            wasted = 0
            kills = 0
            cpu0 = children_cpu()
            t0 = time.monotonic()
            while True:
                proc = blanket(
                    [
                        "backup",
                        "--repo",
                        str(repo),
                        "--pack-size",
                        opts.pack_size,
                        str(work / "src"),
                    ],
                    env,
                )
                if killing:
                    try:
                        proc.wait(timeout=rng.uniform(0.5, 4.0))
                    except subprocess.TimeoutExpired:
                        proc.send_signal(signal.SIGKILL)
                        proc.wait()
                        kills += 1
                        wasted += wasted_bytes(repo)
                        continue
                proc.wait()
                assert proc.returncode == 0, proc.returncode
                break
            written = store_bytes(repo) + wasted
            results[name] = (written, children_cpu() - cpu0, time.monotonic() - t0, kills)
        base_w, base_cpu, base_wall, _ = results["uninterrupted"]
        w, cpu, wall, kills = results["killed"]
        print(f"corpus: {opts.mib} MiB of random files, pack size {opts.pack_size}")
        print(
            f"uninterrupted: {base_w / 2**20:.1f} MiB written, "
            f"{base_cpu:.1f} s CPU, {base_wall:.1f} s"
        )
        print(f"killed {kills} times: {w / 2**20:.1f} MiB written, {cpu:.1f} s CPU, {wall:.1f} s")
        print(f"ratio written: {w / base_w:.3f}   ratio CPU: {cpu / base_cpu:.3f}")
    finally:
        subprocess.run(["gpgconf", "--homedir", str(work / "g"), "--kill", "all"], check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
