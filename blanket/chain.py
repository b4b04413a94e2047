"""Load and check the signed chain of indexes, from the local cache and the stores.

An index counts when gpg verifies it (signed by the repository key, or, with a
passphrase, intact), it names this repository and the commit number its object name
says, and its ``prev-index-sha256`` is the SHA-256 of the previous index's plaintext.
Each also has to be where it belongs: a gap, a chain break, or a store whose last commit
is older than the newest commit this machine made (a rollback) is a problem. Commits that
an authentic gc record lists as removed are no gap: their objects were deleted on purpose
(and whatever of them is left is ignored).

``strict`` (backups) raises at the first problem. Otherwise (restore, verify) every
problem is collected with the object it concerns and every authentic index is kept, so
a restore can still use what is good. With ``fresh`` the store's copies are checked even
where the cache has one (verify): an object that no longer is the ciphertext this machine
verified before is decrypted and checked again.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from blanket import indexfmt
from blanket.backends.base import Backend
from blanket.crypto import Gpg, NoSecretKey
from blanket.errors import BlanketError, IntegrityError, NotFound, WrongKey
from blanket.headercache import HeaderCache
from blanket.indexfmt import IndexHeader
from blanket.state import LocalState

HEADERS_FILE = "headers.msgpack"  # blanket.headercache, in the state folder


def index_key(seq: int) -> str:
    return f"index/{seq:012d}"


@dataclass(frozen=True)
class Sources:
    """What loading the chain reads: the stores (a mesh), gpg, the local cache, the
    repository id every index must name, the signing key each commit must carry (key
    rotations: ``signer_for(seq)``) and whether signing and encryption keys are separate
    (then a keyring that cannot decrypt an index is told what it lacks). (The repository
    passes its own; the chain never reaches into it.)"""

    backends: list[Backend]
    gpg: Gpg
    state: LocalState
    repository_id: str
    signer_for: Callable[[int], str]
    separate_keys: bool


@dataclass
class Chain:
    headers: list[IndexHeader] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_checked(
    repository_id: str, seq: int, plain: bytes, *, entries: bool = False
) -> IndexHeader:
    """The header of an index plaintext, if it is this repository's commit ``seq``; with
    ``entries``, every entry line is parsed too (unsafe paths are refused), as is done
    once for each index that comes from a store, before it is cached."""
    try:
        header, lines = indexfmt.split_index(plain)
        if entries:
            for line in lines:
                indexfmt.parse_entry(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"malformed ({exc})") from exc
    if header.repository != repository_id:
        raise IntegrityError("belongs to another repository")
    if header.seq != seq:
        raise IntegrityError(f"is commit {header.seq} put in the place of commit {seq}")
    return header


def _from_stores(src: Sources, seq: int, *, fresh: bool) -> tuple[IndexHeader, bytes]:
    """An authentic copy of index ``seq`` from the first store that has one."""
    key = index_key(seq)
    reasons = []
    cached_cipher = src.state.cipher_sha(seq)
    for backend in src.backends:
        try:
            cipher = backend.get(key)
        except NotFound:
            reasons.append(f"missing from {backend.describe()}")
            continue
        if fresh and cached_cipher and _sha(cipher) == cached_cipher:
            plain = src.state.index_path(seq).read_bytes()
            return parse_checked(src.repository_id, seq, plain), plain
        try:
            plain = src.gpg.decrypt_bytes(cipher, key, signer=src.signer_for(seq))
            header = parse_checked(src.repository_id, seq, plain, entries=True)
        except NoSecretKey:
            if not src.separate_keys:
                raise
            raise WrongKey(
                f"cannot read {key}: this machine's index cache lacks it and this keyring "
                "holds neither the metadata key nor a recipient's key; restore the cache "
                f"({src.state.dir}) or import the metadata key (docs/guide.md)"
            ) from None
        except WrongKey:
            raise
        except BlanketError as exc:
            reasons.append(f"{exc} on {backend.describe()}")
            continue
        src.state.store_index(seq, plain, _sha(cipher))
        return header, plain
    raise IntegrityError("; ".join(reasons) or "not on any store")


def _from_cache(src: Sources, seq: int, headers: HeaderCache) -> tuple[IndexHeader, str] | None:
    """The header and plaintext hash of the cached copy of index ``seq``: from the header
    cache while the file is unchanged, else read and hashed (``None``: damaged or gone,
    so the store's copy is fetched)."""
    try:
        with open(src.state.index_path(seq), "rb") as f:
            st = os.fstat(f.fileno())
            hit = headers.get(seq, st)
            if hit is not None and hit[0].repository == src.repository_id and hit[0].seq == seq:
                return hit
            plain = f.read()
    except OSError:
        return None
    try:
        header = parse_checked(src.repository_id, seq, plain)
    except IntegrityError:
        return None
    digest = _sha(plain)
    headers.put(seq, st, header, digest)
    return header, digest


def removed_by_gc(headers: Iterable[IndexHeader]) -> set[int]:
    """Commits whose objects authentic gc records say were deleted."""
    removed: set[int] = set()
    for h in headers:
        for first, last in h.removed:
            removed.update(range(first, last + 1))
    return removed


def load_chain(src: Sources, *, strict: bool, fresh: bool = False) -> Chain:
    chain = Chain()

    def problem(key: str, message: str) -> None:
        if strict:
            raise IntegrityError(f"{key} {message}")
        chain.problems.append((key, message))

    on_store: set[int] = set()
    for backend in src.backends:
        on_store.update(int(o.key.split("/", 1)[1]) for o in backend.list("index/"))
    newest = max(on_store, default=-1)
    progress = src.state.load()
    if newest < progress.last_seq:
        problem(
            index_key(progress.last_seq),
            f"is gone: the store ends at commit {newest} but this machine committed up to "
            f"{progress.last_seq} (the store has rolled back)",
        )
    cached = set(src.state.cached_seqs())
    headers = HeaderCache(src.state.dir / HEADERS_FILE)
    found: dict[int, tuple[IndexHeader, str]] = {}  # header and plaintext hash, not text
    for seq in sorted(on_store):
        got = _from_cache(src, seq, headers) if seq in cached and not fresh else None
        if got is None:
            try:
                header, plain = _from_stores(src, seq, fresh=fresh)
            except IntegrityError as exc:
                problem(index_key(seq), str(exc))
                continue
            got = header, _sha(plain)
            try:
                headers.put(seq, src.state.index_path(seq).stat(), *got)
            except OSError:
                pass  # not cached (a read-only state folder): read again next time
        found[seq] = got
    headers.keep_only(set(found))
    headers.save()
    removed = removed_by_gc(h for h, _ in found.values())
    for seq in removed & cached:
        src.state.drop_index(seq)
    prev: tuple[int, str] | None = None
    for seq in range(newest + 1):
        if seq in removed:
            continue
        if seq not in found:
            if seq not in on_store:
                problem(index_key(seq), "is missing from the store")
            continue
        header, digest = found[seq]
        if prev is not None and prev[0] == seq - 1 and header.prev_index_sha256 != prev[1]:
            problem(index_key(seq), f"does not chain to {index_key(seq - 1)} (replaced or forked)")
        if seq == 0 and header.prev_index_sha256:
            problem(index_key(seq), "claims a predecessor but is the first commit")
        chain.headers.append(header)
        prev = (seq, digest)
    last = progress.last_seq
    known = last in {h.seq for h in chain.headers}
    if known and _sha(src.state.index_path(last).read_bytes()) != progress.last_index_sha256:
        problem(index_key(last), "differs from the one this machine committed")
    return chain
