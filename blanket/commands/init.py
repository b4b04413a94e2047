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


def run(args: argparse.Namespace, out: Output) -> int:
    urls = repo_urls(args)  # first: it may choose the default profile
    secret = passphrase(args)
    key = args.key or (None if secret else setting(args, "key"))
    if bool(key) == bool(secret):
        raise UsageError("init needs exactly one of --key FINGERPRINT or --passphrase-file FILE")
    spec = KeySpec(SYMMETRIC, "", secret) if secret else KeySpec(PUBKEY, str(key))
    for url in urls:
        args.invocation.begin(url)
        backend = backend_for(args, url)
        if len(urls) > 1 and _holds_repository(backend):
            out.line(f"{url} already holds a blanket repository; left as it is")
            continue
        config = init_repository(backend, gnupghome(args), spec, now=time.time_ns())
        out.summary(
            f"created repository {config.id} at {url} ({config.mode}"
            + (f", key {config.fingerprint})" if config.fingerprint else ")"),
            repository=config.id,
            url=url,
            mode=config.mode,
            key=config.fingerprint,
        )
    return EXIT_OK


def _holds_repository(backend: Backend) -> bool:
    if not backend.exists():
        return False
    try:
        backend.head(CONFIG_KEY)
    except NotFound:
        return False
    return True
