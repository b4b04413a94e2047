"""The ``config`` object: a repository's id, protection mode and keys (docs/format.md),
creating it (``init``), and pinning the signing key a machine first saw.

One key (``init --key``): a ``blanket-repository 1`` config, encrypted to and signed by
that key. Separate keys (``--sign-key``, ``--encrypt-to``): ``blanket-repository 2``,
signed and not encrypted (every machine must read it; it holds no secret), carrying the
signing key's public key for machines that hold only a recipient's key.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from blanket import gpgkeys, keyhistory
from blanket.backends.base import Backend
from blanket.crypto import PUBKEY, Gpg, KeySpec
from blanket.errors import AlreadyExists, BlanketError, IntegrityError, UsageError
from blanket.state import LocalState, atomic_write

CONFIG_KEY = "config"
CONFIG_MAGIC = "blanket-repository 1"
CONFIG_MAGIC_KEYS = "blanket-repository 2"  # separate signing key and recipients


@dataclass(frozen=True)
class RepoConfig:
    """The ``config`` object (docs/format.md). ``fingerprint`` is the signing key; with
    ``recipients`` (a ``blanket-repository 2`` config) packs are encrypted to those and
    indexes also to ``metadata``; without, to ``fingerprint`` alone (``init --key``)."""

    id: str
    mode: str
    fingerprint: str
    created: int
    recipients: tuple[str, ...] = ()
    metadata: tuple[str, ...] = ()
    sign_pubkey: str = ""  # the signing key's armored public key (separate keys only)

    @property
    def separate(self) -> bool:
        """Signing and encryption keys separate (write-only backups)."""
        return bool(self.recipients)

    def keyspec(self, passphrase: str | None = None) -> KeySpec:
        return KeySpec(self.mode, self.fingerprint, passphrase, self.recipients, self.metadata)

    def epoch(self, sha256: str) -> keyhistory.Epoch:
        """The keys the config puts in force from commit 0 (epoch 0 of the rotations)."""
        return keyhistory.Epoch(
            0, 0, self.fingerprint, self.recipients, self.metadata, self.created,
            self.sign_pubkey, sha256,
        )  # fmt: skip

    def render(self) -> bytes:
        if not self.separate:
            return (
                f"{CONFIG_MAGIC}\nid: {self.id}\nmode: {self.mode}\n"
                f"key: {self.fingerprint or '-'}\ncreated: {self.created}\n"
            ).encode("ascii")
        return (
            f"{CONFIG_MAGIC_KEYS}\nid: {self.id}\nmode: {self.mode}\n"
            f"sign-key: {self.fingerprint}\nencrypt-to: {' '.join(self.recipients)}\n"
            f"metadata-key: {' '.join(self.metadata) or 'none'}\ncreated: {self.created}\n"
            f"\n{self.sign_pubkey}"
        ).encode("ascii")

    @classmethod
    def parse(cls, data: bytes) -> RepoConfig:
        head, _, pubkey = data.decode("ascii").partition("\n\n")
        lines = head.splitlines()
        if not lines or lines[0] not in (CONFIG_MAGIC, CONFIG_MAGIC_KEYS):
            raise IntegrityError("the repository config is not a blanket config")
        f = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        if lines[0] == CONFIG_MAGIC:
            key = f.get("key", "-")
            return cls(f["id"], f["mode"], "" if key == "-" else key, int(f["created"]))
        meta = f.get("metadata-key", "none")
        config = cls(
            f["id"],
            f["mode"],
            f["sign-key"],
            int(f["created"]),
            tuple(f["encrypt-to"].split()),
            () if meta == "none" else tuple(meta.split()),
            pubkey,
        )
        if not config.recipients or config.mode != PUBKEY:
            raise IntegrityError("the repository config names no recipients")
        return config


def init_repository(
    backend: Backend,
    gnupghome: str | None,
    key: KeySpec,
    *,
    now: int,
    metadata: str | None = None,
) -> RepoConfig:
    """Create a repository on an empty store; refuse a store that already holds one.

    ``key.recipients`` set: separate keys; ``metadata`` names the metadata key
    (``"none"``: none; omitted: the signing key if its encryption secret is here, else
    none)."""
    if key.mode == PUBKEY:
        sign = gpgkeys.signing_key(gnupghome, key.fingerprint)
        recipients = tuple(
            dict.fromkeys(gpgkeys.recipient_key(gnupghome, r) for r in key.recipients)
        )
        meta = _metadata_key(gnupghome, sign, metadata) if recipients else ()
        key = KeySpec(PUBKEY, sign, key.passphrase, recipients, meta)
    elif key.recipients or metadata:
        raise UsageError("a passphrase repository has no signing key or recipients")
    pubkey = gpgkeys.export_public(gnupghome, key.fingerprint) if key.recipients else ""
    config = RepoConfig(
        uuid.uuid4().hex, key.mode, key.fingerprint, now, key.recipients, key.metadata, pubkey
    )
    gpg = Gpg(gnupghome, key)
    blob = (
        gpg.sign_bytes(config.render()) if config.separate else gpg.encrypt_bytes(config.render())
    )
    backend.create()
    try:
        backend.put(CONFIG_KEY, blob, if_absent=True)
    except AlreadyExists:
        raise BlanketError(
            f"{backend.describe()} already holds a blanket repository; use it or pick another URL"
        ) from None
    return config


def _metadata_key(gnupghome: str | None, sign: str, metadata: str | None) -> tuple[str, ...]:
    if metadata and metadata.lower() == "none":
        return ()
    if metadata:
        return (gpgkeys.recipient_key(gnupghome, metadata),)
    if gpgkeys.decrypting(gnupghome, (sign,)):  # it can encrypt, and decrypt here
        return (sign,)
    return ()  # a signing key that cannot decrypt here: the local cache only


def pin_signing_key(state: LocalState, fingerprint: str) -> None:
    """Remember the first signing key this machine saw for the repository; a config
    naming another one under the same id is a forgery (configs are never rewritten)."""
    pin = state.dir / "signing-key"
    try:
        known = pin.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        atomic_write(pin, fingerprint.encode("ascii") + b"\n")
        return
    if known and known != fingerprint:
        raise IntegrityError(
            f"the repository config names signing key {fingerprint}, but this machine "
            f"knows the repository as signed by {known}: the config was replaced (forged); "
            f"if you really re-created it, delete {state.dir}"
        )


def is_signed_only(result: Any) -> bool:
    """A gpg message that was signed but not encrypted (it has a plaintext and no
    encryption layer)."""
    status = str(result.stderr)
    return "[GNUPG:] PLAINTEXT" in status and "[GNUPG:] BEGIN_DECRYPTION" not in status
