"""A fleet in one bucket: eight laptops back up at once into one SeaweedFS bucket while a
ninth, trusted machine runs gc on every repository.

Each laptop has its own host name (its own UTS namespace: ``unshare --uts``), state
directory, source tree, repository prefix ``fleet/laptop-N`` and credentials: SeaweedFS
user ``fleet-N`` may Read, Write and List only under that prefix, and a bucket policy
denies it every delete. So a laptop that read, listed or wrote another's prefix would be
refused and its run would fail; the test also checks every key and every lease. One
laptop is killed (SIGKILL) midway and resumed. The gc machine (admin credentials, delete
rights) loops over the repositories while the laptops write: it must respect their leases
(exit 11 while one is held) and never break a repository. At the end every laptop's
latest state restores exactly, and gc runs to completion on every repository.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seaweed import FLEET, FLEET_BUCKET, Seaweed, fleet_key
from treeutil import assert_same_tree, snapshot

KILLED = 3  # the laptop whose first backup is killed midway
GC_HOST = "trusted-gc"
POLLS = 4800  # rounds of looking at the laptops (0.05 s apart) before giving up


def as_host(host: str, args: list[str]) -> list[str]:
    """``blanket ARGS`` run under host name ``host`` (a UTS namespace of its own)."""
    script = 'hostname "$0" && exec "$@"'
    return ["unshare", "--uts", "sh", "-c", script, host, sys.executable, "-m", "blanket", *args]


@dataclass
class Laptop:
    n: int
    src: Path
    env: dict[str, str]

    @property
    def host(self) -> str:
        return f"laptop-{self.n}"

    @property
    def prefix(self) -> str:
        return f"laptop-{self.n}"

    @property
    def url(self) -> str:
        return f"s3://{FLEET_BUCKET}/{self.prefix}"

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            as_host(self.host, list(args)),
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run(self, *args: str) -> tuple[int, str, str]:
        proc = self.start(*args)
        out, err = proc.communicate(timeout=300)
        return proc.returncode, out, err

    def backup(self) -> subprocess.Popen[str]:
        # Small packs and a slow link: each backup takes a few seconds, so they overlap
        # with each other and with gc.
        limit = "96K" if self.n == KILLED else "256K"
        return self.start(
            "backup", "--repo", self.url, "--pack-size", "64K", "--limit-upload", limit,
            str(self.src),
        )  # fmt: skip


def make_tree(root: Path, n: int) -> None:
    rng = random.Random(n)
    files = 24 if n == KILLED else 10
    for i in range(files):
        p = root / f"docs-{n}" / f"part{i % 3}" / f"note{i:03d}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(30_000 + 97 * i))
    (root / "same-name-everywhere.txt").write_text(f"laptop {n}\n")


class TrustedGc(threading.Thread):
    """gc over every repository, round after round, until told to stop."""

    def __init__(self, laptops: list[Laptop], env: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.laptops = laptops
        self.env = env
        self.stop = threading.Event()
        self.codes: dict[int, list[int]] = {lap.n: [] for lap in laptops}
        self.failures: list[str] = []

    def start_gc(self, lap: Laptop) -> subprocess.Popen[str]:
        return subprocess.Popen(
            as_host(GC_HOST, ["gc", "--repo", lap.url]),
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def gc(self, lap: Laptop) -> int:
        proc = self.start_gc(lap)
        _, err = proc.communicate(timeout=300)
        if proc.returncode not in (0, 11) or "Traceback" in err:
            self.failures.append(f"gc of {lap.url}: exit {proc.returncode}: {err}")
        self.codes[lap.n].append(proc.returncode)
        return proc.returncode

    def run(self) -> None:
        while not self.stop.is_set():  # whole rounds: every repository as often
            for lap in self.laptops:
                self.gc(lap)


def commits(store: Seaweed, lap: Laptop) -> int:
    return len(store.keys(FLEET_BUCKET, f"{lap.prefix}/index/"))


def test_eight_laptops_and_a_trusted_gc_share_one_bucket(
    keyring: Any, seaweedfs: Seaweed, seaweed_env: dict[str, str], tmp_path: Path
) -> None:
    assert shutil.which("unshare"), "util-linux's unshare is needed to give each laptop a host"
    seaweedfs.bucket(FLEET_BUCKET, versioned=True)
    seaweedfs.deny_deletes(FLEET_BUCKET, tuple(f"fleet-{n}" for n in range(1, FLEET + 1)))
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    laptops = []
    for n in range(1, FLEET + 1):
        src = tmp_path / f"home-{n}"
        make_tree(src, n)
        key = fleet_key(n)
        env = {
            **base,
            **seaweedfs.env(key),
            "GNUPGHOME": keyring.home,
            "BLANKET_STATE_DIR": str(tmp_path / f"state-{n}"),
        }
        laptops.append(Laptop(n, src, env))
    gc_env = {
        **base,
        **seaweed_env,
        "GNUPGHOME": keyring.home,
        "BLANKET_STATE_DIR": str(tmp_path / "state-gc"),
    }

    inits = [lap.start("init", "--repo", lap.url, "--key", keyring.fingerprint) for lap in laptops]
    for lap, proc in zip(laptops, inits, strict=True):
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, (lap.n, err)

    killed = laptops[KILLED - 1]
    before = commits(seaweedfs, killed)
    gc = TrustedGc(laptops, gc_env)
    gc.start()
    runs = {lap.n: lap.backup() for lap in laptops}
    done: dict[int, int] = {}
    met_gc = 0
    polls = 0  # rounds of looking at the laptops, bounded (the sleep below: about 240 s)
    while len(done) < len(laptops):
        polls += 1
        assert polls < POLLS, f"the laptops did not finish: {sorted(done)}"
        for lap in laptops:
            proc = runs[lap.n]
            if lap.n in done:
                continue
            if lap.n == KILLED and commits(seaweedfs, lap) >= before + 2 and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.communicate()
                done[lap.n] = -signal.SIGKILL
                continue
            if proc.poll() is None:
                continue
            _, err = proc.communicate()
            if proc.returncode == 11 and f"locked by a run on {GC_HOST}" in err:
                met_gc += 1  # gc holds it: the laptop tries again later, as cron would
                runs[lap.n] = lap.backup()
                continue
            assert proc.returncode == 0, (lap.n, err)
            assert lap.n != KILLED, "the backup to kill finished first"
            done[lap.n] = 0
        time.sleep(0.05)
    # Laptop 3 comes back and finishes, gc still going round.
    while True:
        code, _, err = killed.run(
            "backup", "--repo", killed.url, "--pack-size", "64K", str(killed.src)
        )
        if code == 11 and f"locked by a run on {GC_HOST}" in err:
            met_gc += 1
            continue
        assert code == 0, err
        break
    gc.stop.set()
    gc.join(timeout=300)
    assert gc.failures == []
    print(f"gc exit codes while the laptops wrote: {gc.codes}; laptops that met gc: {met_gc}")

    # Everything done: gc runs through on every repository (the killed run's lease was
    # released by its laptop's next run), and every laptop's latest state, restored with
    # its own credentials, is exact.
    finals = [gc.start_gc(lap) for lap in laptops]
    restores = [
        lap.start("restore", "--repo", lap.url, "--to", str(tmp_path / f"restored-{lap.n}"))
        for lap in laptops
    ]
    for lap, proc in zip(laptops, finals, strict=True):
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, (lap.n, err)
    for lap, proc in zip(laptops, restores, strict=True):
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, (lap.n, err)
        assert_same_tree(snapshot(lap.src), snapshot(tmp_path / f"restored-{lap.n}"))

    # The looking commands work with credentials confined to one prefix too.
    first = laptops[0]
    for args in (["status"], ["layers"], ["ls"], ["verify"]):
        code, _, err = first.run(*args, "--repo", first.url)
        assert code == 0, (args, err)

    # Keys: each repository under its own prefix; no lease names a host (issue 17).
    s3 = seaweedfs.client()
    keys = seaweedfs.keys(FLEET_BUCKET)
    prefixes = {k.split("/", 1)[0] for k in keys}
    assert prefixes == {lap.prefix for lap in laptops}
    for lap in laptops:
        for key in seaweedfs.keys(FLEET_BUCKET, f"{lap.prefix}/locks/"):
            if key.endswith("-released"):
                continue
            body = s3.get_object(Bucket=FLEET_BUCKET, Key=key)["Body"].read()
            assert set(json.loads(body)) == {"run", "origin", "started", "expires"}, key
            assert lap.host.encode() not in body and GC_HOST.encode() not in body, key
