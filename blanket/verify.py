"""Check a repository on its store and name every object that is wrong.

Quick (no pack data downloaded): every index is fetched again and checked (signature,
repository, commit number, chain; an index whose ciphertext is the one this machine
verified before is not decrypted twice), the store is not behind this machine's newest
commit, and every data object an index names exists with the size and SHA-256 that index
records: the store's own checksum where it keeps one, the object hashed where reading it
is cheap (a local disk), its size alone otherwise. The report counts the data objects
checked each way, so a store (or an object another tool rewrote) without SHA-256 shows.

Deep: every pack (or a rotating sample) is also downloaded, its hash and signature
checked, decrypted, and every member hashed against the index; the index stored inside
the pack must match the index object.
"""

from __future__ import annotations

import hashlib
import math
import os
import tarfile
import tempfile
from collections import Counter
from dataclasses import dataclass, field

import zstandard

from blanket import model
from blanket.backends.base import Backend, download_to
from blanket.errors import IntegrityError, NotFound, StoreError
from blanket.indexfmt import Frame, IndexHeader
from blanket.members import INDEX_MEMBER, inner_index, member_name, part_member_name
from blanket.packread import HashingSink, fetch_plaintext, members
from blanket.repo import Repository


@dataclass
class VerifyReport:
    commits: int = 0
    objects: int = 0
    packs_read: int = 0
    leftovers: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)
    # Data objects checked against the store's own SHA-256, downloaded and hashed, or
    # (the store keeps no SHA-256 for them) by size only.
    checked: Counter[str] = field(default_factory=Counter)


def check_object(backend: Backend, h: IndexHeader, tally: Counter[str] | None = None) -> str | None:
    """What is wrong with the data object of ``h`` on ``backend``, or None. ``tally``
    counts how it was checked: ``"checksum"``, ``"hashed"`` or ``"size"``."""
    tally = Counter() if tally is None else tally
    try:
        info = backend.head(h.data_key)
    except NotFound:
        return "is missing"
    except StoreError as exc:
        return f"cannot be checked: {exc}"
    if info.size != h.data_size:
        return f"is {info.size} bytes but its index records {h.data_size} (truncated or replaced)"
    if info.checksum_sha256 is not None:
        tally["checksum"] += 1
        if info.checksum_sha256 != h.data_sha256:
            return "has another SHA-256 than its index records (damaged or swapped)"
    elif backend.cheap_reads:
        tally["hashed"] += 1
        hasher = HashingSink()
        download_to(backend, h.data_key, hasher)  # type: ignore[arg-type]
        if hasher.digest.hexdigest() != h.data_sha256:
            return "has another SHA-256 than its index records (damaged or swapped)"
    else:
        tally["size"] += 1
    return None


def _sample(repo: Repository, fraction: float | None) -> list[IndexHeader]:
    """The packs a deep check reads: all, or the next slice of a rotating sample."""
    headers = repo.headers
    if fraction is None or not headers:
        return headers
    count = max(1, math.ceil(len(headers) * fraction))
    progress = repo.state.load()
    start = progress.verify_cursor % len(headers)
    chosen = [headers[(start + i) % len(headers)] for i in range(min(count, len(headers)))]
    progress.verify_cursor = (start + count) % len(headers)
    repo.state.save(progress)
    return chosen


def deep_check(repo: Repository, h: IndexHeader, workdir: str) -> list[str]:
    """Problems found by reading the whole pack of ``h`` (hash, signature, members)."""
    zst = fetch_plaintext(repo.backend, repo.gpg, h, workdir)
    found = frame_troubles(zst, h.frames)
    wanted: dict[bytes, str] = {}
    for e in repo.entries(h.seq):
        if e.kind == model.FILE and not e.parts:
            wanted[os.fsencode(member_name(e.path))] = e.sha256
        elif e.kind == model.PART:
            wanted[os.fsencode(part_member_name(e.path, e.offset))] = e.sha256
    own_index = b""
    try:
        for m in members(zst):
            if m.name == INDEX_MEMBER.encode():
                own_index = b"".join(m.chunks())
            elif m.name in wanted:
                digest = hashlib.sha256()
                for chunk in m.chunks():
                    digest.update(chunk)
                if digest.hexdigest() != wanted.pop(m.name):
                    found.append(f"member {os.fsdecode(m.name)!r} does not match its index")
    except (tarfile.TarError, zstandard.ZstdError, EOFError) as exc:
        found.append(f"cannot be read: {exc}")
    finally:
        os.unlink(zst)
    found += [f"lacks member {os.fsdecode(n)!r} its index lists" for n in wanted]
    if inner_index(own_index) != inner_index(repo.state.index_path(h.seq).read_bytes()):
        found.append("holds an index.txt that differs from its index object")
    return found


def frame_troubles(zst: str, frames: tuple[Frame, ...]) -> list[str]:
    """Whether the frames an index lists cut the pack's zstd stream (the file ``zst``)
    exactly, each with its SHA-256 (what a restore of part of the pack relies on)."""
    if not frames:
        return []
    found = []
    with open(zst, "rb") as f:
        for k, frame in enumerate(frames):
            digest, left = hashlib.sha256(), frame.size
            while left > 0 and (block := f.read(min(left, 1 << 20))):
                digest.update(block)
                left -= len(block)
            if left or digest.hexdigest() != frame.sha256:
                found.append(f"frame {k} does not match the frames its index lists")
                break
        if not found and f.read(1):
            found.append("holds more than the frames its index lists")
    return found


def verify(repo: Repository, *, deep: bool = False, subset: float | None = None) -> VerifyReport:
    """Check the repository; ``subset`` (0..1) makes a deep check read only that share
    of the packs, the next share on the next run."""
    report = VerifyReport()
    repo.refresh(strict=False, fresh=True)
    report.problems += repo.problems
    report.commits = len(repo.headers)
    named = {h.data_key for h in repo.headers}
    for h in repo.headers:
        report.objects += 2
        trouble = check_object(repo.backend, h, report.checked)
        if trouble:
            report.problems.append((h.data_key, trouble))
    report.leftovers = sum(1 for o in repo.backend.list("data/") if o.key not in named)
    if deep or subset is not None:
        bad = {key for key, _ in report.problems}
        with tempfile.TemporaryDirectory(prefix="verify-", dir=repo.state.dir) as workdir:
            for h in _sample(repo, subset):
                if h.data_key in bad:
                    continue
                report.packs_read += 1
                try:
                    troubles = deep_check(repo, h, workdir)
                except (IntegrityError, StoreError) as exc:
                    troubles = [str(exc)]
                report.problems += [(h.data_key, t) for t in troubles]
    return report
