"""``blanket keys rotate``: put a new signing key or recipient set in force from the next
commit on (blanket.keyhistory has the format and the checks).

Under the repository lock, so no commit slips in between: the rotation takes effect at
the commit number the next commit will get. The old signing key signs it; the new one
must be usable here too, since it signs every commit from then on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

from blanket import gpgkeys, keyhistory
from blanket.crypto import PUBKEY, Gpg
from blanket.errors import AlreadyExists, RepositoryLocked, UsageError
from blanket.lock import RepoLock
from blanket.repo import Repository


@dataclass(frozen=True)
class Change:
    """What the user asked to change; ``None``: keep as it is."""

    sign: str | None = None
    recipients: tuple[str, ...] | None = None
    metadata: str | None = None  # a key, or "none"


def plan(repo: Repository, change: Change, *, from_seq: int, now: int) -> keyhistory.Epoch:
    """The epoch the change makes (keys looked up and checked in this keyring)."""
    home = repo.gnupghome
    prev = repo.epochs[-1]
    sign = gpgkeys.signing_key(home, change.sign) if change.sign else prev.sign
    recipients = (
        tuple(dict.fromkeys(gpgkeys.recipient_key(home, r) for r in change.recipients))
        if change.recipients
        else prev.readers
    )
    if change.metadata is not None:
        metadata = _metadata(home, change.metadata)
    elif prev.metadata == (prev.sign,) and sign != prev.sign:  # it followed the signing key
        if not gpgkeys.decrypting(home, (sign,)):
            raise UsageError(
                f"the metadata key was the old signing key; the new one ({sign}) cannot "
                "decrypt here, so pass --metadata-key FPR or --metadata-key none"
            )
        metadata = (sign,)
    else:
        metadata = prev.metadata
    if (sign, recipients, metadata) == (prev.sign, prev.readers, prev.metadata):
        raise UsageError(
            "that changes nothing; name a new --sign-key, --encrypt-to or --metadata-key"
        )
    pubkey = gpgkeys.export_public(home, sign)
    return keyhistory.rotation(
        prev, from_seq=from_seq, sign=sign, recipients=recipients, metadata=metadata,
        created=now, sign_pubkey=pubkey,
    )  # fmt: skip


def _metadata(home: str | None, text: str) -> tuple[str, ...]:
    if text.lower() == "none":
        return ()
    return (gpgkeys.recipient_key(home, text),)


def rotate_keys(repo: Repository, change: Change, *, now: int) -> keyhistory.Epoch:
    """Write the rotation; returns the new epoch. Needs the old signing key's secret (it
    signs the rotation) and the new one's (it signs what follows)."""
    if repo.config.mode != PUBKEY:
        raise UsageError("a passphrase repository has no keys to rotate")
    repo.require_signing()
    with RepoLock(repo.backend, repo.state.dir):
        repo.refresh(strict=True)
        prev = repo.epochs[-1]
        epoch = plan(repo, change, from_seq=repo.next_seq(), now=now)
        for fpr in (*epoch.readers, *epoch.metadata):  # all usable before it is in force
            gpgkeys.recipient_key(repo.gnupghome, fpr)
        blob = repo.gpg.sign_bytes(epoch.render(repo.config.id, prev.sha256))
        try:
            repo.backend.put(keyhistory.keys_key(epoch.number), blob, if_absent=True)
        except AlreadyExists:
            raise RepositoryLocked(
                f"another run wrote {keyhistory.keys_key(epoch.number)} at the same time; "
                "run 'blanket keys' to see it"
            ) from None
        epoch = replace(epoch, sha256=hashlib.sha256(blob).hexdigest())
        repo.epochs.append(epoch)
        passphrase = repo.gpg.key.passphrase
        repo.gpg = Gpg(repo.gnupghome, epoch.keyspec(repo.config.mode, passphrase))
        repo.gpg.accepted = tuple(dict.fromkeys(e.sign for e in repo.epochs))
    return epoch
