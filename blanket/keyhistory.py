"""Key rotation: the ``keys/`` objects, a signed chain of changes to the keys in force.

The config names the first keys (epoch 0: signing key, recipients, metadata key). Each
rotation ``keys/NNNNNNNNNNNN`` (N = 1, 2, ...) is a signed, unencrypted gpg message
(docs/format.md) saying: from commit ``from-commit`` on, this key signs and these
recipients read. It is signed by the signing key of the epoch before it and names the
SHA-256 of the object before it (the config for N = 1), so nobody without the old
signing key can make one, and none can be dropped from the middle, swapped or
reordered. It carries the new signing key's public key, so a machine that trusts the
first key learns each next one from the key before it.

Readers take the epochs in order: commit S must be signed by the signing key of the
last epoch whose ``from-commit`` is <= S. A rotation that fails any check refuses the
repository (``IntegrityError``): a forged rotation never silently changes which key a
reader accepts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

from blanket import gpgkeys
from blanket.backends.base import Backend
from blanket.crypto import Gpg, KeySpec
from blanket.errors import IntegrityError, NotFound

PREFIX = "keys/"
MAGIC = "blanket-keys 1"


def keys_key(number: int) -> str:
    return f"{PREFIX}{number:012d}"


@dataclass(frozen=True)
class Epoch:
    """The keys in force from commit ``from_seq`` on. ``recipients`` empty: the signing
    key itself (a one-key repository's epoch 0)."""

    number: int
    from_seq: int
    sign: str
    recipients: tuple[str, ...]
    metadata: tuple[str, ...]
    created: int
    sign_pubkey: str = ""
    sha256: str = ""  # of the object that introduced it (the config for epoch 0)

    def keyspec(self, mode: str, passphrase: str | None) -> KeySpec:
        return KeySpec(mode, self.sign, passphrase, self.recipients, self.metadata)

    @property
    def readers(self) -> tuple[str, ...]:
        return self.recipients or (self.sign,)

    def render(self, repository: str, prev_sha256: str) -> bytes:
        return (
            f"{MAGIC}\nrepository: {repository}\nnumber: {self.number}\n"
            f"from-commit: {self.from_seq}\nprev-sha256: {prev_sha256}\n"
            f"sign-key: {self.sign}\nencrypt-to: {' '.join(self.readers)}\n"
            f"metadata-key: {' '.join(self.metadata) or 'none'}\ncreated: {self.created}\n"
            f"\n{self.sign_pubkey}"
        ).encode("ascii")


def parse(data: bytes) -> tuple[dict[str, str], str]:
    """The fields of a rotation and the public key block after them."""
    head, _, pubkey = data.decode("ascii").partition("\n\n")
    lines = head.splitlines()
    if not lines or lines[0] != MAGIC:
        raise ValueError("not a blanket key rotation")
    return dict(line.split(": ", 1) for line in lines[1:] if ": " in line), pubkey


def load(
    backend: Backend, gpg: Gpg, gnupghome: str | None, repository: str, first: Epoch
) -> list[Epoch]:
    """Epoch 0 (``first``, from the config) and every rotation on the store, checked in
    order; ``IntegrityError`` names the first one that fails."""
    epochs = [first]
    numbers = sorted(int(o.key[len(PREFIX) :]) for o in backend.list(PREFIX))
    for n in numbers:
        key = keys_key(n)
        prev = epochs[-1]
        if n != prev.number + 1:
            raise IntegrityError(f"{keys_key(prev.number + 1)} is missing before {key}")
        try:
            blob = backend.get(key)
        except NotFound:
            raise IntegrityError(f"{key} vanished while it was read; run again") from None
        epochs.append(_checked(blob, key, gpg, gnupghome, repository, prev))
    return epochs


def _checked(
    blob: bytes, key: str, gpg: Gpg, gnupghome: str | None, repository: str, prev: Epoch
) -> Epoch:
    forged = (
        f"{key} is not a key rotation signed by the key in force before it ({prev.sign}): "
        "a forged or damaged rotation; the repository is refused until it is removed"
    )
    data, result = gpg.decrypt_unchecked(blob)
    try:
        gpg.check(result, key, signer=prev.sign, signed_only=True)
        f, pubkey = parse(data)
        epoch = Epoch(
            int(f["number"]),
            int(f["from-commit"]),
            f["sign-key"].upper(),
            tuple(f["encrypt-to"].split()),
            () if f["metadata-key"] == "none" else tuple(f["metadata-key"].split()),
            int(f["created"]),
            pubkey,
            hashlib.sha256(blob).hexdigest(),
        )
        if (
            f["repository"] != repository
            or epoch.number != prev.number + 1
            or f["prev-sha256"] != prev.sha256
            or epoch.from_seq < prev.from_seq
            or not epoch.recipients
        ):
            raise IntegrityError(forged)
    except (IntegrityError, ValueError, KeyError, UnicodeDecodeError) as exc:
        raise IntegrityError(forged) from exc
    if epoch.sign != prev.sign:  # the next rotation is checked with this key
        gpgkeys.import_public(gnupghome, pubkey, epoch.sign)
    return epoch


def rotation(
    prev: Epoch, *, from_seq: int, sign: str, recipients: tuple[str, ...],
    metadata: tuple[str, ...], created: int, sign_pubkey: str,
) -> Epoch:  # fmt: skip
    """The epoch a rotation after ``prev`` introduces (its hash is set once stored)."""
    return replace(
        prev,
        number=prev.number + 1,
        from_seq=from_seq,
        sign=sign,
        recipients=recipients,
        metadata=metadata,
        created=created,
        sign_pubkey=sign_pubkey,
        sha256="",
    )


def signer_for(epochs: list[Epoch], seq: int) -> str:
    """The signing key commit ``seq`` must carry."""
    signer = epochs[0].sign
    for e in epochs:
        if e.from_seq <= seq:
            signer = e.sign
    return signer
