"""``blanket init``: create a repository (or every repository of a profile)."""

from __future__ import annotations

import argparse
import time

from blanket.backends.base import Backend
from blanket.commands.common import backend_for, gnupghome, passphrase, repo_urls, setting
from blanket.crypto import PUBKEY, SYMMETRIC, KeySpec
from blanket.errors import EXIT_OK, NotFound, UsageError
from blanket.repo import CONFIG_KEY, init_repository
from blanket.ui import Output

HELP = "create a repository"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key", help="fingerprint (or user id) of the gpg key to encrypt and sign with")
    p.add_argument(
        "--sign-key", help="the key that signs (its secret on this machine); with --encrypt-to"
    )
    p.add_argument(
        "--encrypt-to",
        action="append",
        metavar="FPR",
        help="a recipient of the packs (public key suffices; repeat for several)",
    )
    p.add_argument(
        "--metadata-key",
        metavar="FPR|none",
        help="a key kept on this machine that also reads the indexes (default: the signing "
        "key; none: from the local cache only)",
    )


def run(args: argparse.Namespace, out: Output) -> int:
    urls = repo_urls(args)  # first: it may choose the default profile
    secret = passphrase(args)
    spec = _keyspec(args, secret)
    metadata = setting(args, "metadata_key")
    for url in urls:
        args.invocation.begin(url)
        backend = backend_for(args, url)
        if len(urls) > 1 and _holds_repository(backend):
            out.line(f"{url} already holds a blanket repository; left as it is")
            continue
        config = init_repository(
            backend, gnupghome(args), spec, now=time.time_ns(), metadata=metadata
        )
        keys = f", key {config.fingerprint}" if config.fingerprint else ""
        if config.separate:
            keys = (
                f", signing key {config.fingerprint}, packs encrypted to "
                f"{', '.join(config.recipients)}, "
                + (
                    f"indexes also to metadata key {', '.join(config.metadata)}"
                    if config.metadata
                    else "no metadata key"
                )
            )
            if not config.metadata:
                out.line(
                    "note: no metadata key, so this machine reads the indexes from its local "
                    "cache only; if the cache is lost, backups need the metadata key or a "
                    "recipient's key (docs/guide.md)"
                )
        out.summary(
            f"created repository {config.id} at {url} ({config.mode}{keys})",
            repository=config.id,
            url=url,
            mode=config.mode,
            key=config.fingerprint,
            encrypt_to=list(config.recipients),
            metadata_key=list(config.metadata),
        )
    return EXIT_OK


def _keyspec(args: argparse.Namespace, secret: str | None) -> KeySpec:
    """The keys the command line (else the profile) names: ``--key`` (one key signs and
    decrypts), ``--sign-key`` with ``--encrypt-to`` (separate), or a passphrase."""
    if secret:
        if args.key or args.sign_key or args.encrypt_to:
            raise UsageError(
                "--passphrase-file leaves no room for --key, --sign-key or --encrypt-to"
            )
        return KeySpec(SYMMETRIC, "", secret)
    key = args.key
    sign, recipients = args.sign_key, list(args.encrypt_to or [])
    if not (key or sign or recipients):  # nothing on the command line: the profile
        sign = setting(args, "sign_key")
        recipients = list(setting(args, "encrypt_to") or [])
        # separate keys in a profile win over a `key` it inherits from [defaults]
        key = None if sign or recipients else setting(args, "key")
    if key and (sign or recipients):
        raise UsageError(
            "--key means one key that signs and decrypts; for separate keys pass "
            "--sign-key FPR --encrypt-to FPR instead"
        )
    if key:
        return KeySpec(PUBKEY, str(key))
    if sign and recipients:
        return KeySpec(PUBKEY, str(sign), None, tuple(str(r) for r in recipients))
    if sign or recipients:
        raise UsageError("separate keys need both --sign-key FPR and at least one --encrypt-to FPR")
    raise UsageError(
        "init needs --key FINGERPRINT, --sign-key FPR --encrypt-to FPR, or --passphrase-file FILE"
    )


def _holds_repository(backend: Backend) -> bool:
    if not backend.exists():
        return False
    try:
        backend.head(CONFIG_KEY)
    except NotFound:
        return False
    return True
