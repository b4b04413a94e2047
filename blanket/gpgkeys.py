"""The keys of a gpg keyring: find one, say whether it can do its job, import and export
public keys. With blanket.crypto, the only module that runs gpg.

A key is named by its full fingerprint, a long enough fingerprint suffix (8 hex digits
or more), the fingerprint of one of its subkeys, or a part of a user id; blanket records
the full fingerprint of the *primary* key, which is what gpg reports in a signature's
``VALIDSIG`` line and what ``--recipient`` and ``--local-user`` accept (gpg picks the
usable signing or encryption subkey itself). A key is usable for a job when the primary
key is neither expired nor revoked and the primary or a subkey that is itself neither
has the capability (``s`` sign, ``e`` encrypt) and, for a secret job, its secret part
in the keyring (``gpg --export-secret-subkeys`` leaves the others as stubs, ``#``).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field

from blanket.errors import CryptoError, UsageError, WrongKey

_DEAD = {"e": "expired", "r": "revoked", "d": "disabled", "i": "invalid"}


@dataclass
class Part:
    """The primary key or one subkey: fingerprint, validity, own capabilities, and
    (secret listing) whether its secret is present rather than a stub."""

    fingerprint: str
    validity: str
    caps: str
    secret: bool = False


@dataclass
class Key:
    primary: Part
    subkeys: list[Part] = field(default_factory=list)
    uids: list[str] = field(default_factory=list)

    @property
    def fingerprint(self) -> str:
        return self.primary.fingerprint

    @property
    def dead(self) -> str:
        """'expired', 'revoked'... or '' for a key in force."""
        return _DEAD.get(self.primary.validity, "")

    def can(self, cap: str, *, secret: bool = False, alive: bool = True) -> bool:
        """Whether a part has capability ``cap`` (and its secret, with ``secret``); with
        ``alive`` only parts neither expired nor revoked count (to write; an old key's
        secret still decrypts what was written for it)."""
        if alive and self.dead:
            return False
        return any(
            cap in p.caps and (p.validity not in _DEAD or not alive) and (p.secret or not secret)
            for p in (self.primary, *self.subkeys)
        )

    def names(self, key_id: str) -> bool:
        want = key_id.upper().removeprefix("0X").removesuffix("!")
        if len(want) >= 8 and all(c in "0123456789ABCDEF" for c in want):
            return any(p.fingerprint.endswith(want) for p in (self.primary, *self.subkeys))
        return any(key_id.lower() in uid.lower() for uid in self.uids)


def listing(gnupghome: str | None, *, secret: bool) -> list[Key]:
    """Every key of the keyring (``secret``: the secret keyring), from gpg's colon
    listing."""
    cmd = ["gpg", "--batch", "--with-colons", "--fixed-list-mode", "--with-fingerprint"]
    if gnupghome:
        cmd += ["--homedir", gnupghome]
    cmd.append("--list-secret-keys" if secret else "--list-keys")
    try:
        proc = subprocess.run(cmd, capture_output=True, check=False)
    except OSError as exc:
        raise UsageError(f"cannot run gpg ({exc}); install GnuPG 2 and check --gnupghome") from exc
    keys: list[Key] = []
    last: Part | None = None
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        f = line.split(":")
        if f[0] in ("pub", "sec", "sub", "ssb") and len(f) > 14:
            last = Part("", f[1], f[11], f[0] in ("sec", "ssb") and f[14] != "#")
            if f[0] in ("pub", "sec"):
                keys.append(Key(last))
            elif keys:
                keys[-1].subkeys.append(last)
        elif f[0] == "fpr" and last is not None and len(f) > 9 and not last.fingerprint:
            last.fingerprint = f[9].upper()
        elif f[0] == "uid" and keys and len(f) > 9:
            keys[-1].uids.append(f[9])
    return keys


def find(gnupghome: str | None, key_id: str, *, secret: bool) -> Key | None:
    """The key ``key_id`` names; ``UsageError`` when it names several."""
    matches = [k for k in listing(gnupghome, secret=secret) if k.names(key_id)]
    if len(matches) > 1:
        raise UsageError(f"key {key_id!r} is ambiguous; give the full fingerprint")
    return matches[0] if matches else None


def signing_key(gnupghome: str | None, key_id: str) -> str:
    """The primary fingerprint of ``key_id`` if this keyring can sign with it; else
    ``WrongKey`` with one line saying why."""
    key = find(gnupghome, key_id, secret=True)
    if key is None:
        raise WrongKey(
            f"no secret key {key_id!r} to sign with in the gpg keyring; import it or pass "
            "--gnupghome"
        )
    if key.dead:
        raise WrongKey(
            f"signing key {key.fingerprint} is {key.dead}; extend or replace it "
            "(gpg --quick-set-expire, or 'blanket keys rotate --sign-key NEW')"
        )
    if not key.can("s", secret=True):
        raise WrongKey(
            f"key {key.fingerprint} has no usable signing (sub)key whose secret is in this "
            "keyring (expired, revoked or not exported); import it or pick another key"
        )
    return key.fingerprint


def recipient_key(gnupghome: str | None, key_id: str) -> str:
    """The primary fingerprint of ``key_id`` if this keyring can encrypt to it (its
    public key suffices); else ``WrongKey``."""
    key = find(gnupghome, key_id, secret=False)
    if key is None:
        raise WrongKey(
            f"no key {key_id!r} to encrypt to in the gpg keyring; import its public key "
            "(gpg --import) or pass --gnupghome"
        )
    if key.dead:
        raise WrongKey(f"recipient key {key.fingerprint} is {key.dead}; pick another recipient")
    if not key.can("e"):
        raise WrongKey(
            f"key {key.fingerprint} has no usable encryption (sub)key; pick another recipient"
        )
    return key.fingerprint


def recipient_keys(gnupghome: str | None, fingerprints: tuple[str, ...]) -> None:
    """Raise ``WrongKey`` unless every one of ``fingerprints`` can be encrypted to (one
    listing of the keyring for all)."""
    keys = listing(gnupghome, secret=False)
    for fpr in fingerprints:
        if not any(k.fingerprint == fpr and k.can("e") for k in keys):
            recipient_key(gnupghome, fpr)  # says why, in one line


def decrypting(gnupghome: str | None, fingerprints: tuple[str, ...]) -> list[str]:
    """Those of ``fingerprints`` whose secret encryption (sub)key is in the keyring."""
    held = {k.fingerprint: k for k in listing(gnupghome, secret=True)}
    return [f for f in fingerprints if f in held and held[f].can("e", secret=True, alive=False)]


def export_public(gnupghome: str | None, fingerprint: str) -> str:
    """The armored public key ``fingerprint`` (minimal: no third-party signatures)."""
    cmd = ["gpg", "--batch", "--armor", "--export-options", "export-minimal"]
    if gnupghome:
        cmd += ["--homedir", gnupghome]
    proc = subprocess.run([*cmd, "--export", fingerprint], capture_output=True, check=False)
    text = proc.stdout.decode("ascii", "replace")
    if proc.returncode != 0 or "BEGIN PGP PUBLIC KEY BLOCK" not in text:
        raise CryptoError(f"gpg could not export the public key {fingerprint}")
    return text


def import_public(gnupghome: str | None, armored: str, fingerprint: str) -> bool:
    """Import ``armored`` if it holds exactly the public key ``fingerprint`` and nothing
    else (a block holding other keys is refused); True if that key is now in the
    keyring."""
    data = armored.encode("ascii", "replace")
    shown = subprocess.run(
        ["gpg", "--batch", "--with-colons", "--show-keys"], input=data, capture_output=True
    )
    lines = shown.stdout.decode("utf-8", "replace").splitlines()
    primaries = [
        ln.split(":")[9].upper()
        for prev, ln in zip(["", *lines], lines, strict=False)
        if ln.startswith("fpr:") and prev.startswith("pub:") and len(ln.split(":")) > 9
    ]
    if primaries != [fingerprint]:
        return False
    cmd = ["gpg", "--batch", "--import-options", "import-minimal"]
    if gnupghome:
        cmd += ["--homedir", gnupghome]
    subprocess.run([*cmd, "--import"], input=data, capture_output=True, check=False)
    key = find(gnupghome, fingerprint, secret=False)
    return key is not None and key.fingerprint == fingerprint
