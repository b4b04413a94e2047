"""A repository on a store: its config, the signed chain of indexes, the commit protocol.

Objects (all gpg-encrypted, signed in public-key mode; docs/format.md):

* ``config``: repository id, protection mode, keys (blanket.repoconfig);
* ``keys/NNNNNNNNNNNN``: key rotations (blanket.keyhistory);
* ``data/NNNNNNNNNNNN-HHHHHHHHHHHHHHHH``: the pack of commit N (H: its SHA-256 prefix);
* ``index/NNNNNNNNNNNN``: the index of commit N, naming the data object's size and hash
  and the hash of index N-1.

A commit is the index object: data first, then index (written only if absent). Readers
list ``index/`` and ignore data objects that no index names.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from blanket import gpgkeys, indexfmt, keyhistory, model
from blanket.backends.base import Backend
from blanket.chain import Sources, index_key, load_chain
from blanket.crypto import PUBKEY, SYMMETRIC, Gpg, KeySpec, find_secret_key
from blanket.errors import (
    AlreadyExists,
    IntegrityError,
    NotFound,
    PermissionDenied,
    RepositoryLocked,
    RepositoryMissing,
    UsageError,
    WrongKey,
)
from blanket.indexfmt import IndexHeader
from blanket.merge import Located, replay
from blanket.model import LOST, PART, Entry
from blanket.packer import SealedPack
from blanket.reach import may_hold, reach_of
from blanket.repoconfig import CONFIG_KEY as CONFIG_KEY
from blanket.repoconfig import RepoConfig as RepoConfig
from blanket.repoconfig import init_repository as init_repository
from blanket.repoconfig import is_signed_only, pin_signing_key
from blanket.state import LocalState


def data_key(seq: int, sha256: str) -> str:
    return f"data/{seq:012d}-{sha256[:16]}"


class Repository:
    """An opened repository: verified config, index cache, commits."""

    def __init__(self, backend: Backend, gpg: Gpg, config: RepoConfig, state: LocalState) -> None:
        self.backends = [backend]
        self.gpg = gpg
        self.config = config
        self.state = state
        self.headers: list[IndexHeader] = []
        self.by_seq: dict[int, IndexHeader] = {}
        self.problems: list[tuple[str, str]] = []
        self.gnupghome: str | None = None
        self.epochs: list[keyhistory.Epoch] = []

    @classmethod
    def open(
        cls,
        backend: Backend,
        gnupghome: str | None,
        passphrase: str | None = None,
        *,
        state_root: Any = None,
    ) -> Repository:
        """Open and authenticate the repository; raises RepositoryMissing or WrongKey."""
        if not backend.exists():
            raise RepositoryMissing(_missing(backend))
        try:
            blob = backend.get(CONFIG_KEY)
        except NotFound:
            raise RepositoryMissing(_missing(backend)) from None
        probe = Gpg(gnupghome, KeySpec(SYMMETRIC if passphrase else PUBKEY, "", passphrase))
        data, result = probe.decrypt_unchecked(blob)
        signed_only = is_signed_only(result)
        if signed_only:
            config = RepoConfig.parse(data)
            if not config.separate:
                raise IntegrityError("the repository config is signed but not encrypted")
            if "NO_PUBKEY" in str(result.stderr) and gpgkeys.import_public(
                gnupghome, config.sign_pubkey, config.fingerprint
            ):
                data, result = probe.decrypt_unchecked(blob)  # check it with the key now
        elif not result.ok:
            hint = (
                "check --passphrase-file"
                if passphrase
                else "import the repository's secret key, pass --gnupghome, "
                "or pass --passphrase-file for a passphrase repository"
            )
            raise WrongKey(f"cannot open the repository at {backend.describe()}: {hint}")
        config = RepoConfig.parse(data)
        if config.mode == PUBKEY and not config.separate:
            find_secret_key(gnupghome, config.fingerprint)
        elif config.mode == SYMMETRIC and not passphrase:
            raise WrongKey("this repository is protected by a passphrase; pass --passphrase-file")
        gpg = Gpg(gnupghome, config.keyspec(passphrase))
        gpg.check(result, "the repository config", signed_only=signed_only)
        epochs = [config.epoch(hashlib.sha256(blob).hexdigest())]
        if config.mode == PUBKEY:
            epochs = keyhistory.load(backend, gpg, gnupghome, config.id, epochs[0])
            gpg = Gpg(gnupghome, epochs[-1].keyspec(config.mode, passphrase))
            gpg.accepted = tuple(dict.fromkeys(e.sign for e in epochs))
        repo = cls(backend, gpg, config, LocalState(config.id, state_root))
        if config.mode == PUBKEY:
            pin_signing_key(repo.state, config.fingerprint)
        repo.gnupghome = gnupghome
        repo.epochs = epochs
        return repo

    def signer_for(self, seq: int) -> str:
        """The signing key commit ``seq`` must carry (the rotations in force)."""
        return keyhistory.signer_for(self.epochs, seq)

    def require_signing(self) -> None:
        """Raise ``WrongKey`` (one line) unless this keyring can sign commits and encrypt
        to every recipient in force (none expired, revoked or missing)."""
        if self.config.mode == PUBKEY:
            gpgkeys.signing_key(self.gnupghome, self.gpg.key.fingerprint)
            gpgkeys.recipient_keys(self.gnupghome, self.gpg.key.metadata_recipients)

    def require_content_key(self, what: str) -> None:
        """Raise ``WrongKey`` unless this keyring holds the secret key of a recipient of
        the packs (``what`` needs to read their content: restore, cat, deep verify...)."""
        if self.config.mode != PUBKEY:
            return
        recipients = tuple(dict.fromkeys(r for e in self.epochs for r in e.readers))
        if not gpgkeys.decrypting(self.gnupghome, recipients):
            raise WrongKey(
                f"{what} needs the secret key of one of the repository's recipients "
                f"({', '.join(r[-16:] for r in recipients)}); this keyring holds none: "
                "import the recovery key or pass --gnupghome"
            )

    # --- the chain -------------------------------------------------------------------

    @property
    def backend(self) -> Backend:
        """The store this repository writes to (the first one given)."""
        return self.backends[0]

    def add_mirror(self, backend: Backend) -> None:
        """Another store holding (part of) the same repository, for reading."""
        self.backends.append(backend)

    @property
    def packs(self) -> list[IndexHeader]:
        """The commits that are packs of a layer (not gc records), in commit order."""
        return [h for h in self.headers if not h.gc_record]

    def layer_end(self, layer: int) -> int:
        """When layer ``layer`` was last written: the time ``--at LAYER`` restores."""
        times = [h.created for h in self.packs if h.layer == layer]
        if not times:
            raise UsageError(f"layer {layer} is not in the repository; see 'blanket layers'")
        return max(times)

    def tree(
        self,
        *,
        layer: int | None = None,
        when: int | None = None,
        within: Iterable[bytes] = (),
    ) -> Iterator[Located]:
        """The replayed tree: latest, as of time ``when`` (ns), or as of the end of
        ``layer`` (the since rule, which also finds versions refreshed into later
        layers). With ``within`` (paths), only the commits that can hold those subtrees
        or their ancestors are read: the rest of the tree may be missing."""
        if layer is not None:
            when = self.layer_end(layer)
        return replay(self.layer_streams(at=when, within=within), at=when)

    def lost_versions(self) -> Iterator[Entry]:
        """The versions gc records as removed with expired layers (``L`` entries)."""
        for h in self.headers:
            if h.gc_record:
                yield from (e for e in self.entries(h.seq) if e.kind == LOST)

    def history_stream(self, h: IndexHeader, at: int | None = None) -> Iterator[Located]:
        """The old versions gc record ``h`` kept (``gc --keep-history``), clock-sorted:
        all of them, or (``at``) only those current at time ``at`` (``since`` <= at <
        ``until``). Never part of the latest state."""
        for e in self.entries(h.seq):
            if e.kind in (PART, LOST):
                continue
            if at is None or e.since <= at < (e.until or 1 << 63):
                yield Located(e, h.seq, h.layer)

    def refresh(self, *, strict: bool = True, fresh: bool = False) -> list[IndexHeader]:
        """Bring the local index cache up to date with the stores and check the chain.

        ``strict`` raises ``IntegrityError`` at the first problem; otherwise problems
        are kept in ``self.problems`` and every authentic index is used (blanket.chain).
        """
        sources = Sources(
            self.backends,
            self.gpg,
            self.state,
            self.config.id,
            self.signer_for,
            self.config.separate,
        )
        chain = load_chain(sources, strict=strict, fresh=fresh)
        self.headers = chain.headers
        self.problems = chain.problems
        self.by_seq = {h.seq: h for h in chain.headers}
        return self.headers

    def clean_leftovers(self) -> int:
        """Delete what crashed runs left (data objects no index names, incomplete
        uploads). Needs delete permission: without it the leftovers stay, harmless,
        for gc. Call only while holding the repository lock. Returns objects removed."""
        named = {h.data_key for h in self.headers}
        removed = 0
        try:
            for info in list(self.backend.list("data/")):
                if info.key not in named:
                    self.backend.delete(info.key)
                    removed += 1
            removed += self.backend.discard_incomplete()
        except PermissionDenied:
            pass  # no delete permission: leftovers are ignored by readers and left to gc
        return removed

    def next_seq(self) -> int:
        """The number the next commit gets (gc may have removed older ones)."""
        return self.headers[-1].seq + 1 if self.headers else 0

    def last_hash(self) -> str:
        if not self.headers:
            return ""
        return hashlib.sha256(self.state.index_path(self.headers[-1].seq).read_bytes()).hexdigest()

    def entries(self, seq: int) -> Iterator[Entry]:
        """The entries of cached index ``seq`` (checked when it came from the store).
        The file is read and closed before the first entry comes, so a replay of many
        layers holds no file open per layer."""
        try:
            yield from self.state.entries(seq)
        except (ValueError, UnicodeDecodeError) as exc:
            raise IntegrityError(
                f"the cached copy of {index_key(seq)} is unreadable ({exc}); delete "
                f"{self.state.index_path(seq)} to fetch it again"
            ) from exc

    def layer_streams(
        self,
        *,
        up_to_layer: int | None = None,
        at: int | None = None,
        within: Iterable[bytes] = (),
    ) -> list[Iterator[Located]]:
        """One clock-sorted stream per layer, for :func:`blanket.merge.replay`; with
        ``at`` (a replay as of that time), also one per gc record holding versions that
        gc kept, filtered to those current at ``at``. The latest state (no ``at``) never
        sees kept versions. With ``within`` (paths), only the commits whose clock range
        can hold those subtrees or their ancestors (``blanket.reach``) are read, and of
        them only the paths within the subtrees or ancestors of them are streamed: a
        path's replay depends on its own entries and its ancestors' alone, so the replay
        of them is right for the subtrees."""
        within = list(within)
        reach = reach_of(within)
        by_layer: dict[int, list[IndexHeader]] = {}
        for h in self.headers:
            if (up_to_layer is None or h.layer <= up_to_layer) and may_hold(h, reach):
                by_layer.setdefault(h.layer, []).append(h)
        near = _near(within) if reach is not None else None
        streams = [self._layer_stream(hs, near) for _, hs in sorted(by_layer.items())]
        if at is not None:
            streams += [self.history_stream(h, at) for h in self.headers if h.gc_record]
        return streams

    def _layer_stream(
        self, headers: list[IndexHeader], near: Callable[[bytes], bool] | None = None
    ) -> Iterator[Located]:
        for h in headers:
            if h.gc_record:
                continue
            for e in self.entries(h.seq):
                if e.kind != PART and (near is None or near(e.path)):
                    yield Located(e, h.seq, h.layer)

    def parts_of(self, seq: int, e: Entry) -> list[tuple[int, Entry]]:
        """The parts of split file ``e`` whose entry commit ``seq`` holds: ``(seq, part)``
        in offset order, looked up backwards through the commits of its layer."""
        layer = self.by_seq[seq].layer
        found: dict[int, tuple[int, Entry]] = {}
        s = seq
        while s >= 0 and len(found) < e.parts:
            h = self.by_seq.get(s)
            if h is None or h.layer != layer:
                break
            for p in self.entries(s):
                if p.kind == PART and p.path == e.path and p.since == e.since:
                    found.setdefault(p.offset, (s, p))
            s -= 1
        return [found[o] for o in sorted(found)]

    # --- committing ------------------------------------------------------------------

    def _store_data(self, key: str, sealed: SealedPack, attempts: int = 2) -> None:
        """Upload a pack and check that the store kept exactly that (size, and checksum
        where the store reports one); a store that lies about a put never gets an index
        pointing at a bad object."""
        problem = ""
        for _ in range(attempts):
            self.backend.put_file(key, sealed.path)
            try:
                info = self.backend.head(key)
            except NotFound:
                problem = "the store does not have it after a successful upload"
                continue
            if info.size != sealed.size:
                problem = f"the store kept {info.size} of {sealed.size} bytes"
            elif info.checksum_sha256 and info.checksum_sha256 != sealed.sha256:
                problem = "the store's checksum differs from the uploaded bytes"
            else:
                return
        raise IntegrityError(f"cannot store {key}: {problem}; nothing was committed")

    def commit(
        self,
        sealed: SealedPack,
        header: IndexHeader,
        entries: list[Entry],
        *,
        scan: tuple[int, str] | None = None,
        before_state: Callable[[], None] | None = None,
    ) -> IndexHeader:
        """Store the pack, then its index: the commit point. Returns the final header.
        ``scan`` (a backup pass's layer and escaped clock pointer) is recorded in the
        same write of the local state as the commit; ``before_state`` runs just before
        that write (after the commit point)."""
        seq = self.next_seq()
        dkey = data_key(seq, sealed.sha256)
        final = _with_data(header, seq, self.last_hash(), dkey, sealed)
        self._store_data(dkey, sealed)
        plain = indexfmt.render_index(final, entries)
        cipher = self.gpg.encrypt_bytes(plain)
        put_index(self.backend, index_key(seq), cipher)
        self.state.store_index(seq, plain, hashlib.sha256(cipher).hexdigest())
        if before_state is not None:
            before_state()
        progress = self.state.load()
        progress.last_seq = seq
        progress.last_index_sha256 = hashlib.sha256(plain).hexdigest()
        if scan is not None:
            progress.scan_layer, progress.scan_pointer = scan
        self.state.save(progress)
        self.headers.append(final)
        self.by_seq[seq] = final
        os.unlink(sealed.path)
        return final


def put_index(backend: Backend, key: str, blob: bytes) -> None:
    """Write an index only if absent, then read it back: a store that dropped or cut
    short our write gets it again (it is ours: the caller holds the lock); anything else
    there means another run committed meanwhile (``RepositoryLocked``)."""
    try:
        backend.put(key, blob, if_absent=True)
    except AlreadyExists:
        raise RepositoryLocked(
            f"another run committed {key} at the same time; run again later"
        ) from None
    for _ in range(2):
        try:
            stored = backend.get(key)
        except NotFound:
            stored = b""
        if stored == blob:
            return
        if stored != blob[: len(stored)]:
            raise RepositoryLocked(f"another run wrote {key} at the same time; run again later")
        backend.put(key, blob)  # ours, cut short or never kept: write it again
    raise IntegrityError(f"cannot store {key}: the store does not keep it; nothing was committed")


def _with_data(h: IndexHeader, seq: int, prev: str, dkey: str, sealed: SealedPack) -> IndexHeader:
    from dataclasses import replace

    return replace(
        h,
        seq=seq,
        prev_index_sha256=prev,
        data_key=dkey,
        data_size=sealed.size,
        data_sha256=sealed.sha256,
        frames=sealed.frames,
    )


def _missing(backend: Backend) -> str:
    return (
        f"no blanket repository at {backend.describe()}; "
        "create one with 'blanket init --repo URL --key FINGERPRINT'"
    )


def _near(tops: list[bytes]) -> Callable[[bytes], bool] | None:
    """Whether a path lies within one of ``tops`` or is an ancestor of one (None: all do)."""
    if any(t == model.ROOT for t in tops):
        return None
    exact, prefixes = set(tops), tuple(t + b"/" for t in tops)
    for top in tops:
        p = top
        while p != model.ROOT:
            p = model.parent_of(p)
            exact.add(p)
    exact.add(model.ROOT)
    return lambda path: path in exact or path.startswith(prefixes)
