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
import fcntl
import os
import subprocess
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, BinaryIO

import gnupg

from blanket.errors import CryptoError, IntegrityError, UsageError, WrongKey
from blanket.pump import Pump

PUBKEY = "pubkey"
SYMMETRIC = "symmetric"
_CIPHER = "AES256"


@dataclass(frozen=True)
class KeySpec:
    """How a repository's objects are protected."""

    mode: str
    fingerprint: str = ""
    passphrase: str | None = None


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

    @property
    def raw(self) -> Any:
        """The python-gnupg handle (for its command line: home, keyring, options)."""
        return self._gpg

    def _encrypt_args(self) -> dict[str, Any]:
        if self.key.mode == SYMMETRIC:
            return {"recipients": None, "symmetric": _CIPHER, "passphrase": self.key.passphrase}
        return {
            "recipients": [self.key.fingerprint],
            "sign": self.key.fingerprint,
            "always_trust": True,
            "passphrase": self.key.passphrase,
        }

    def encrypt_bytes(self, data: bytes) -> bytes:
        result = self._gpg.encrypt(data, armor=False, **self._encrypt_args())
        if not result.ok:
            raise CryptoError(f"gpg could not encrypt: {_reason(result)}")
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
            raise CryptoError(f"cannot run gpg ({exc}); install GnuPG 2") from exc
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

    def decrypt_bytes(self, data: bytes, what: str) -> bytes:
        result = self._gpg.decrypt(data, passphrase=self.key.passphrase, always_trust=True)
        self.check(result, what)
        return bytes(result.data)

    def check(self, result: Any, what: str) -> None:
        status = _status_lines(result)
        if not result.ok:
            reason = _reason(result)
            if any(s.startswith(("NO_SECKEY", "BAD_PASSPHRASE")) for s in status) or (
                "Bad session key" in reason
            ):
                raise WrongKey(f"cannot decrypt {what}: {_reason(result)}")
            raise IntegrityError(f"cannot decrypt {what}: {_reason(result)} (damaged or forged)")
        if self.key.mode == SYMMETRIC:
            if "GOODMDC" not in status or any(s.startswith(("BADMDC", "ERRSIG")) for s in status):
                raise IntegrityError(f"{what} failed its integrity check")
            return
        validsigs = [s for s in status if s.startswith("VALIDSIG ")]
        bad = [s for s in status if s.startswith(("BADSIG", "ERRSIG", "EXPKEYSIG", "REVKEYSIG"))]
        if bad or len(validsigs) != 1 or not result.valid:
            raise IntegrityError(
                f"{what} is not validly signed ({result.status or 'no signature'})"
            )
        primary = validsigs[0].split()[-1].upper()
        if primary != self.key.fingerprint.upper() or (
            str(result.pubkey_fingerprint or "").upper() != self.key.fingerprint.upper()
        ):
            raise IntegrityError(f"{what} is signed by key {primary}, not the repository's key")


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
        key = gpg.key
        self.symmetric = key.mode == SYMMETRIC
        # SHA-256 for the signature: hardware-assisted on most CPUs, where gpg's default
        # for an ed25519 key (SHA-512) costs about 70% more CPU per byte here
        args = ["--yes", "--compress-algo", "none", "--digest-algo", "SHA256", "--output", out_path]
        if self.symmetric:
            args = ["--symmetric", "--cipher-algo", _CIPHER, *args]
        else:
            args = ["--encrypt", "--recipient", key.fingerprint, "--sign", "--default-key",
                    key.fingerprint, "--trust-model", "always", *args]  # fmt: skip
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
            raise CryptoError(f"cannot run gpg ({exc}); install GnuPG 2") from exc
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
            raise CryptoError(f"gpg stopped while encrypting: {self._reason(exc)}") from None

    def finish(self) -> None:
        assert self._proc.stdin is not None
        try:
            self._pump.close()
        except OSError as exc:
            self.abort()
            raise CryptoError(f"gpg stopped while encrypting: {self._reason(exc)}") from None
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
            raise CryptoError(f"gpg could not encrypt: {_last_message(text, code)}")

    def _reason(self, exc: OSError) -> str:
        if self._status.closed:
            return exc.strerror or str(exc)
        code = self._proc.wait()
        self._status.seek(0)
        return _last_message(self._status.read().decode("utf-8", "replace"), code)

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
