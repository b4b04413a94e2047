"""Copy a repository's committed objects to another store, in commit order.

The destination becomes (or stays) a replica: the same repository id, the same objects,
byte for byte. Each commit is copied data first (downloaded, checked against the SHA-256
its index records, uploaded, checked again on the destination), then its index, written
only if absent; so at every moment the destination is a consistent prefix of the source,
and an interrupted sync simply goes on where it stopped. A destination holding commits the
source lacks, or other versions of them, is refused: it is not a replica of this source.
The backup runs' records (``log/``) follow the commits, copied as they are: nothing
restores from them, but ``status`` on the replica then knows the last backup.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass

from blanket.backends.base import Backend, download_to
from blanket.chain import index_key
from blanket.errors import AlreadyExists, BlanketError, IntegrityError
from blanket.indexfmt import IndexHeader
from blanket.keyhistory import PREFIX as KEYS_PREFIX
from blanket.oplog import LOG_PREFIX
from blanket.packread import HashingSink
from blanket.repo import CONFIG_KEY, Repository, put_index
from blanket.verify import check_object


@dataclass
class SyncResult:
    commits_copied: int = 0
    data_repaired: int = 0
    bytes_copied: int = 0
    created: bool = False
    logs_copied: int = 0


def _adopt(src: Repository, dst: Backend) -> bool:
    """Make ``dst`` hold ``src``'s config; True if it was empty or missing."""
    config = src.backend.get(CONFIG_KEY)
    if not dst.exists():
        dst.create()
    try:
        dst.put(CONFIG_KEY, config, if_absent=True)
        return True
    except AlreadyExists:
        if dst.get(CONFIG_KEY) != config:
            raise BlanketError(
                f"{dst.describe()} holds another repository; sync only to an empty store "
                "or to a replica of this one"
            ) from None
        return False


def _same_index(src: Repository, store: Backend, seq: int) -> bytes | None:
    """The index object ``seq`` on ``store`` if it says what the source's verified index
    says (checked by its ciphertext hash, else decrypted and compared), else None."""
    cipher = store.get(index_key(seq))
    if hashlib.sha256(cipher).hexdigest() == src.state.cipher_sha(seq):
        return cipher
    try:
        plain = src.gpg.decrypt_bytes(cipher, f"{store.describe()} {index_key(seq)}")
    except IntegrityError:
        return None
    return cipher if plain == src.state.index_path(seq).read_bytes() else None


def _copy_data(src: Repository, dst: Backend, h: IndexHeader, workdir: str) -> int:
    fd, tmp = tempfile.mkstemp(prefix="sync-", dir=workdir)
    try:
        with os.fdopen(fd, "wb") as f:
            hashing = HashingSink(f)
            size = download_to(src.backend, h.data_key, hashing)  # type: ignore[arg-type]
        if size != h.data_size or hashing.digest.hexdigest() != h.data_sha256:
            raise IntegrityError(
                f"{h.data_key} on {src.backend.describe()} does not match its index; "
                "run 'blanket verify' there"
            )
        with open(tmp, "rb") as f:
            dst.put(h.data_key, f)
        trouble = check_object(dst, h)
        if trouble:
            raise IntegrityError(f"{h.data_key} on {dst.describe()} {trouble} after copying")
        return size
    finally:
        os.unlink(tmp)


def sync(src: Repository, dst: Backend) -> SyncResult:
    """Copy what ``dst`` lacks of ``src``'s committed objects, in commit order."""
    result = SyncResult()
    src.refresh(strict=True)
    result.created = _adopt(src, dst)
    _copy_rotations(src, dst)
    have = sorted(int(o.key.split("/", 1)[1]) for o in dst.list("index/"))
    if have and (have != list(range(len(have))) or have[-1] >= len(src.headers)):
        raise BlanketError(
            f"{dst.describe()} holds commits that are not a prefix of {src.backend.describe()}; "
            "it is not a replica of this source"
        )
    with tempfile.TemporaryDirectory(prefix="sync-", dir=src.state.dir) as workdir:
        for h in src.headers:
            if h.seq < len(have):
                if _same_index(src, dst, h.seq) is None:
                    raise BlanketError(
                        f"{dst.describe()} {index_key(h.seq)} differs from the source's: "
                        "the stores have diverged"
                    )
                if check_object(dst, h) is not None:  # damaged or missing on the replica
                    result.bytes_copied += _copy_data(src, dst, h, workdir)
                    result.data_repaired += 1
                continue
            result.bytes_copied += _copy_data(src, dst, h, workdir)
            cipher = _same_index(src, src.backend, h.seq)
            if cipher is None:
                raise IntegrityError(
                    f"{index_key(h.seq)} on {src.backend.describe()} changed since it was "
                    "verified; run 'blanket verify' there"
                )
            put_index(dst, index_key(h.seq), cipher)
            result.commits_copied += 1
    _copy_logs(src, dst, result)
    return result


def _copy_rotations(src: Repository, dst: Backend) -> None:
    """Copy the key rotations (``keys/``, checked when ``src`` was opened) before the
    commits they sign: byte for byte, only if absent; a different one there means the
    stores have diverged."""
    for info in src.backend.list(KEYS_PREFIX):
        blob = src.backend.get(info.key)
        try:
            dst.put(info.key, blob, if_absent=True)
        except AlreadyExists:
            if dst.get(info.key) != blob:
                raise BlanketError(
                    f"{dst.describe()} {info.key} differs from the source's: the stores "
                    "have diverged"
                ) from None


def _copy_logs(src: Repository, dst: Backend, result: SyncResult) -> None:
    """Copy the run records the destination lacks, byte for byte and only if absent (a
    record is never replaced). Whoever reads one checks its signature, as for every
    object, so a damaged one is skipped there, never trusted."""
    have = {info.key for info in dst.list(LOG_PREFIX)}
    for info in src.backend.list(LOG_PREFIX):
        if info.key in have:
            continue
        record = src.backend.get(info.key)
        try:
            dst.put(info.key, record, if_absent=True)
        except AlreadyExists:
            continue
        result.logs_copied += 1
        result.bytes_copied += len(record)
