"""gpg, driven through python-gnupg: the only module that talks to gpg.

Every object blanket stores is encrypted and, in public-key mode, signed with the
repository's key. A decrypt counts only when gpg says the decryption is ok *and* (public
key mode) there is exactly one valid signature whose primary-key fingerprint is the
repository's: python-gnupg reports a decrypt as ok whatever the signature says, so this
module checks that itself. In symmetric mode there is no signature; integrity rests on
the passphrase and gpg's modification detection (MDC), which gpg enforces.
"""

from __future__ import annotations

import copy
import errno
import fcntl
import os
import subprocess
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, BinaryIO

import gnupg

from blanket.errors import BlanketError, CryptoError, IntegrityError, UsageError, WrongKey
from blanket.pump import Pump

PUBKEY = "pubkey"
SYMMETRIC = "symmetric"
_CIPHER = "AES256"


class NoSecretKey(WrongKey):
    """The keyring holds the secret key of none of an object's recipients."""


@dataclass(frozen=True)
class KeySpec:
    """How a repository's objects are protected.

    ``fingerprint`` signs everything (public-key mode). Packs are encrypted to
    ``recipients`` (none given: to ``fingerprint`` itself, the one-key set-up of
    ``init --key``); indexes, the config's copies and run records also to ``metadata``,
    the key that lets the machine that backs up read its own indexes (docs/format.md).
    """

    mode: str
    fingerprint: str = ""
    passphrase: str | None = None
    recipients: tuple[str, ...] = ()
    metadata: tuple[str, ...] = ()

    @property
    def content_recipients(self) -> tuple[str, ...]:
        """Who can read the packs."""
        return self.recipients or (self.fingerprint,)

    @property
    def metadata_recipients(self) -> tuple[str, ...]:
        """Who can read the indexes: the pack recipients and the metadata key."""
        return tuple(dict.fromkeys((*self.content_recipients, *self.metadata)))


_PROBED: dict[str | None, Any] = {}  # gnupghome -> a python-gnupg handle made for it


def _gpg(gnupghome: str | None) -> Any:
    """A python-gnupg handle for ``gnupghome``. Making one runs ``gpg --list-config``
    (python-gnupg asks for the version), so each home is probed once per process and
    later handles are copies (their own attributes, such as ``options``)."""
    probed = _PROBED.get(gnupghome)
    if probed is not None:
        return copy.copy(probed)
    try:
        gpg = gnupg.GPG(gnupghome=gnupghome)
    except (OSError, ValueError, RuntimeError) as exc:
        if isinstance(exc, OSError) and exc.errno in OUT_OF:
            raise
        raise UsageError(f"cannot run gpg ({exc}); install GnuPG 2 and check --gnupghome") from exc
    gpg.buffer_size = 1 << 20  # python-gnupg copies data to gpg in chunks of this size
    _PROBED[gnupghome] = copy.copy(gpg)
    return gpg


def read_passphrase_file(path: str) -> str:
    """The first line of a passphrase file (a trailing newline is not part of it)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.readline().rstrip("\r\n")
    except OSError as exc:
        raise UsageError(f"cannot read passphrase file {path}: {exc.strerror}") from exc
    if not text:
        raise UsageError(f"passphrase file {path} is empty; put the passphrase on its first line")
    return text


def find_secret_key(gnupghome: str | None, key_id: str) -> str:
    """The full primary fingerprint of the secret key that ``key_id`` names.

    Raises ``WrongKey`` when the keyring holds no such secret key, ``UsageError`` when the
    name is ambiguous.
    """
    matches = [k for k in _gpg(gnupghome).list_keys(secret=True) if _names(k, key_id)]
    if not matches:
        raise WrongKey(
            f"no secret key {key_id!r} in the gpg keyring; import it or pass --gnupghome"
        )
    if len(matches) > 1:
        raise UsageError(f"key {key_id!r} is ambiguous; give the full fingerprint")
    return str(matches[0]["fingerprint"]).upper()


def _names(key: dict[str, Any], key_id: str) -> bool:
    want = key_id.upper().removeprefix("0X")
    fpr = str(key["fingerprint"]).upper()
    if fpr.endswith(want) and len(want) >= 8:
        return True
    return any(key_id.lower() in str(uid).lower() for uid in key.get("uids", []))


def generate_key(gnupghome: str, name: str = "blanket throwaway key") -> str:
    """Create an unprotected ed25519/cv25519 key (for demos and tests); return its fpr."""
    gpg = _gpg(gnupghome)
    params = gpg.gen_key_input(
        key_type="EDDSA",
        key_curve="ed25519",
        key_usage="sign",
        subkey_type="ECDH",
        subkey_curve="cv25519",
        subkey_usage="encrypt",
        name_real=name,
        name_email="blanket@localhost",
        expire_date=0,
        no_protection=True,
    )
    result = gpg.gen_key(params)
    if not result.fingerprint:
        raise CryptoError(f"gpg could not create a key: {result.stderr.strip()[-200:]}")
    return str(result.fingerprint).upper()


class Gpg:
    """Encrypt and decrypt repository objects with one repository's key."""

    def __init__(self, gnupghome: str | None, key: KeySpec) -> None:
        self.key = key
        self._gpg = _gpg(gnupghome)
        # the signing keys whose signatures count where no one key is asked for (packs,
        # records): every key the repository's rotations name (blanket.keyhistory)
        self.accepted: tuple[str, ...] = (key.fingerprint.upper(),)

    @property
    def raw(self) -> Any:
        """The python-gnupg handle (for its command line: home, keyring, options)."""
        return self._gpg

    def _encrypt_args(self) -> dict[str, Any]:
        if self.key.mode == SYMMETRIC:
            return {"recipients": None, "symmetric": _CIPHER, "passphrase": self.key.passphrase}
        # --local-user, never --default-key: gpg falls back to another secret key when
        # the --default-key one is unusable (expired, revoked)
        return {
            "recipients": list(self.key.metadata_recipients),
            "sign": True,
            "extra_args": ["--local-user", self.key.fingerprint, "--digest-algo", "SHA256"],
            "always_trust": True,
            "passphrase": self.key.passphrase,
        }

    def encrypt_bytes(self, data: bytes) -> bytes:
        """Encrypt (to the metadata recipients) and sign an index, config or record."""
        result = self._gpg.encrypt(data, armor=False, **self._encrypt_args())
        if not result.ok:
            _raise_key_trouble(str(result.stderr), self.key)
            raise CryptoError(f"gpg could not encrypt: {_reason(result)}")
        return bytes(result.data)

    def sign_bytes(self, data: bytes) -> bytes:
        """A signed, unencrypted gpg message holding ``data`` (the config of a repository
        with separate keys, which every machine must read: it holds no secret)."""
        result = self._gpg.sign(
            data,
            binary=True,
            passphrase=self.key.passphrase,
            extra_args=["--local-user", self.key.fingerprint, "--digest-algo", "SHA256"],
        )
        if not result.data or "SIG_CREATED" not in str(result.stderr):
            _raise_key_trouble(str(result.stderr), self.key)
            raise CryptoError(f"gpg could not sign: {_reason(result)}")
        return bytes(result.data)

    def decrypt_to_file(self, src_path: str | BinaryIO, out_path: str, what: str) -> None:
        """Decrypt the file ``src_path`` (a path, or a file open for reading at its start)
        into ``out_path`` and check its signature.

        gpg reads the file itself (as its stdin): nothing is copied through Python. On any
        failure ``out_path`` is removed before the error is raised, so no unverified
        plaintext is left to be used.
        """
        args = ["--decrypt", "--yes", "--trust-model", "always", "--output", out_path]
        try:
            with ExitStack() as stack:
                src = src_path
                if isinstance(src, str):
                    src = stack.enter_context(open(src, "rb"))  # noqa: SIM115
                status = stack.enter_context(tempfile.TemporaryFile())
                code = self._run(args, src, status)
                status.seek(0)
                text = status.read().decode("utf-8", "replace")
            result = self._gpg.result_map["crypt"](self._gpg)
            for line in text.splitlines():
                if line.startswith("[GNUPG:] "):
                    keyword, _, value = line[9:].rstrip().partition(" ")
                    result.handle_status(keyword, value)
            result.stderr, result.returncode = text, code
            self.check(result, what)
        except BaseException:
            _remove(out_path)
            raise

    def _run(self, args: list[str], stdin: BinaryIO, status: BinaryIO) -> int:
        """Run gpg with ``args`` on ``stdin``, its status lines (and messages) to
        ``status``; the passphrase, if any, goes by a pipe of its own."""
        fds: tuple[int, ...] = ()
        if self.key.passphrase is not None:
            read_end, write_end = os.pipe()
            with os.fdopen(write_end, "wb") as w:  # a passphrase fits in a pipe's buffer
                w.write(self.key.passphrase.encode("utf-8") + b"\n")
            fds = (read_end,)
            args = ["--pinentry-mode", "loopback", "--passphrase-fd", str(read_end), *args]
        try:
            proc = subprocess.Popen(
                self._gpg.make_args(args, False),
                stdin=stdin,
                stdout=subprocess.DEVNULL,
                stderr=status,
                pass_fds=fds,
            )
        except OSError as exc:
            raise _not_run(exc) from exc
        finally:
            for fd in fds:
                os.close(fd)
        try:
            return proc.wait()
        except BaseException:  # interrupted: leave no gpg behind
            proc.kill()
            proc.wait()
            raise

    def decrypt_unchecked(self, data: bytes) -> tuple[bytes, Any]:
        """Decrypt without judging the result; pass the result to :meth:`check` before
        trusting the bytes."""
        result = self._gpg.decrypt(data, passphrase=self.key.passphrase, always_trust=True)
        return bytes(result.data), result

    def decrypt_bytes(self, data: bytes, what: str, *, signer: str | None = None) -> bytes:
        result = self._gpg.decrypt(data, passphrase=self.key.passphrase, always_trust=True)
        self.check(result, what, signer=signer)
        return bytes(result.data)

    def check(
        self, result: Any, what: str, *, signer: str | None = None, signed_only: bool = False
    ) -> None:
        """Judge a decrypt: raise unless it decrypted and (public-key mode) carries one
        valid signature by ``signer`` (default: any key in ``accepted``).
        ``signed_only``: a message that was signed but never encrypted."""
        status = _status_lines(result)
        if signed_only:
            if any(s.startswith("BEGIN_DECRYPTION") for s in status) or not any(
                s.startswith("PLAINTEXT") for s in status
            ):
                raise IntegrityError(f"{what} is not the signed message it should be")
        elif not result.ok:
            reason = _reason(result)
            text = str(result.stderr).lower()
            if any(m in text for m in ("inappropriate ioctl", "no pinentry")):
                raise WrongKey(
                    f"cannot decrypt {what}: the secret key is passphrase-protected and "
                    "gpg-agent has no passphrase for it; unlock it once or preset it "
                    "(docs/guide.md)"
                )
            if any(s.startswith("NO_SECKEY") for s in status) and not any(
                s.startswith("BAD_PASSPHRASE") for s in status
            ):
                raise NoSecretKey(
                    f"cannot decrypt {what}: this keyring holds the secret key of none of "
                    "its recipients; import one (a recovery key) or pass --gnupghome"
                )
            if any(s.startswith("BAD_PASSPHRASE") for s in status) or "Bad session key" in reason:
                raise WrongKey(f"cannot decrypt {what}: {_reason(result)}")
            raise IntegrityError(f"cannot decrypt {what}: {_reason(result)} (damaged or forged)")
        if self.key.mode == SYMMETRIC:
            if "GOODMDC" not in status or any(s.startswith(("BADMDC", "ERRSIG")) for s in status):
                raise IntegrityError(f"{what} failed its integrity check")
            return
        validsigs = [s for s in status if s.startswith("VALIDSIG ")]
        # a signature made by a key that has expired or been revoked since still counts
        # (EXPKEYSIG, REVKEYSIG with VALIDSIG): old backups stay restorable; writing
        # refuses such a key (blanket.gpgkeys), and a rotation names the key in force
        bad = [s for s in status if s.startswith(("BADSIG", "ERRSIG", "EXPSIG"))]
        late = any(s.startswith(("EXPKEYSIG", "REVKEYSIG")) for s in status)
        if bad or len(validsigs) != 1 or not (result.valid or late):
            raise IntegrityError(
                f"{what} is not validly signed ({result.status or 'no signature'})"
            )
        wanted = (signer.upper(),) if signer else self.accepted
        primary = validsigs[0].split()[-1].upper()
        if primary not in wanted or str(result.pubkey_fingerprint or "").upper() != primary:
            raise IntegrityError(f"{what} is signed by key {primary}, not the repository's key")


def _raise_key_trouble(stderr: str, key: KeySpec) -> None:
    """Raise ``WrongKey`` with one line if gpg's output says a key was the trouble
    (unusable signer or recipient, no passphrase for a protected key); else return."""
    status = [ln[9:] for ln in stderr.splitlines() if ln.startswith("[GNUPG:] ")]
    text = stderr.lower()
    bad_recp = [s.split()[-1] for s in status if s.startswith("INV_RECP ")]
    if bad_recp:
        raise WrongKey(
            f"cannot encrypt to key {bad_recp[0]}: it is missing, expired or revoked in this "
            "keyring; import a valid public key or rotate the recipients ('blanket keys rotate')"
        )
    if any(s.startswith(("INV_SGNR ", "NO_SGNR")) for s in status) or "no secret key" in text:
        raise WrongKey(
            f"cannot sign with key {key.fingerprint}: its secret key is missing, expired or "
            "revoked in this keyring; import it, extend it, or rotate ('blanket keys rotate')"
        )
    if any(s.startswith(("BAD_PASSPHRASE", "MISSING_PASSPHRASE")) for s in status) or any(
        m in text for m in ("no pinentry", "inappropriate ioctl", "operation cancelled")
    ):
        raise WrongKey(
            f"the signing key {key.fingerprint} is passphrase-protected and gpg-agent has no "
            "passphrase for it; preset it with gpg-preset-passphrase (docs/guide.md)"
        )


def _status_lines(result: Any) -> list[str]:
    prefix = "[GNUPG:] "
    return [
        line[len(prefix) :] for line in str(result.stderr).splitlines() if line.startswith(prefix)
    ]


def _reason(result: Any) -> str:
    messages = [
        line.removeprefix("gpg: ")
        for line in str(result.stderr).splitlines()
        if line.startswith("gpg: ") and "WARNING" not in line
    ]
    return (messages[-1] if messages else str(result.status or "unknown gpg error")).strip()


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class EncryptProcess:
    """One gpg process that encrypts (and signs) what is written to ``fd`` into the file
    ``out_path``.

    The bytes go by ``os.write`` from a feeding thread (:class:`blanket.pump.Pump`) to
    gpg's stdin, so neither the interpreter nor zstd waits while gpg catches up. ``write``
    the plaintext, then ``finish()``: it waits for gpg and raises if gpg did not report a
    finished encryption (and, in public-key mode, a signature). ``abort()`` stops gpg and
    removes the output.
    """

    def __init__(self, gpg: Gpg, out_path: str) -> None:
        self.out_path = out_path
        key = self._key = gpg.key
        self.symmetric = key.mode == SYMMETRIC
        # SHA-256 for the signature: hardware-assisted on most CPUs, where gpg's default
        # for an ed25519 key (SHA-512) costs about 70% more CPU per byte here
        args = ["--yes", "--compress-algo", "none", "--digest-algo", "SHA256", "--output", out_path]
        if self.symmetric:
            args = ["--symmetric", "--cipher-algo", _CIPHER, *args]
        else:
            recipients = [a for r in key.content_recipients for a in ("--recipient", r)]
            args = ["--encrypt", *recipients, "--sign", "--local-user", key.fingerprint,
                    "--trust-model", "always", *args]  # fmt: skip
        cmd = gpg.raw.make_args(args, key.passphrase is not None)
        # gpg's status lines go to a file (never a pipe that could fill); closed in
        # finish() or abort()
        self._status = tempfile.TemporaryFile()  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._status
            )
        except OSError as exc:
            self._status.close()
            raise _not_run(exc) from exc
        assert self._proc.stdin is not None
        self.fd = self._proc.stdin.fileno()
        _widen_pipe(self.fd)
        self._pump = Pump(self.fd, name="blanket-gpg-feed")
        if key.passphrase is not None:  # --passphrase-fd 0: the first line, then the data
            self.write(key.passphrase.encode("utf-8") + b"\n")

    def write(self, data: bytes | memoryview) -> None:
        """Queue ``data`` for gpg (a feeding thread writes it; see blanket.pump)."""
        try:
            self._pump.put(data)
        except OSError as exc:
            raise self._failure(exc) from None

    def finish(self) -> None:
        assert self._proc.stdin is not None
        try:
            self._pump.close()
        except OSError as exc:
            self.abort()
            raise self._failure(exc) from None
        try:
            self._proc.stdin.close()
        except BrokenPipeError:
            pass
        code = self._proc.wait()
        self._status.seek(0)
        text = self._status.read().decode("utf-8", "replace")
        self._status.close()
        status = [ln[9:] for ln in text.splitlines() if ln.startswith("[GNUPG:] ")]
        signed = any(s.startswith("SIG_CREATED ") for s in status)
        if code != 0 or "END_ENCRYPTION" not in status or not (signed or self.symmetric):
            _remove(self.out_path)
            _raise_key_trouble(text, self._key)
            raise CryptoError(f"gpg could not encrypt: {_last_message(text, code)}")

    def _failure(self, exc: OSError) -> BlanketError:
        """Why gpg stopped reading: a key problem (``WrongKey``) or another."""
        if self._status.closed:
            return CryptoError(f"gpg stopped while encrypting: {exc.strerror or exc}")
        code = self._proc.wait()
        self._status.seek(0)
        text = self._status.read().decode("utf-8", "replace")
        try:
            _raise_key_trouble(text, self._key)
        except WrongKey as wrong:
            return wrong
        return CryptoError(f"gpg stopped while encrypting: {_last_message(text, code)}")

    def abort(self) -> None:
        self._pump.abandon()
        self._proc.kill()
        try:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
        except OSError:
            pass
        self._proc.wait()
        if not self._status.closed:
            self._status.close()
        _remove(self.out_path)


def _last_message(stderr: str, code: int) -> str:
    lines = [ln.removeprefix("gpg: ") for ln in stderr.splitlines() if ln.startswith("gpg: ")]
    return lines[-1].strip() if lines else f"exit status {code}"


def _widen_pipe(fd: int) -> None:
    """Give a pipe a buffer of up to 1 MiB (Linux; 64 KiB by default), so a burst of
    compressed output does not hold the writer while gpg is reading the one before."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)
    if set_size is None:
        return
    for size in (1 << 20, 256 << 10):
        try:
            fcntl.fcntl(fd, set_size, size)
            return
        except OSError:  # above /proc/sys/fs/pipe-max-size, or the user's pipe quota
            continue


OUT_OF = (errno.EMFILE, errno.ENFILE, errno.ENOMEM)  # limits, not a missing gpg


def _not_run(exc: OSError) -> OSError | CryptoError:
    """The error for a gpg that could not be started: the limit that stopped it, as it
    is (the command line reports it), or a missing gpg."""
    if exc.errno in OUT_OF:
        return exc
    return CryptoError(f"cannot run gpg ({exc}); install GnuPG 2")
