"""``blanket keys``: the repository's keys and their history (``show``), or a rotation
(``rotate``: a new signing key or recipient set from the next commit on)."""

from __future__ import annotations

import argparse
import time

from blanket.commands.common import open_repo
from blanket.errors import EXIT_OK, UsageError
from blanket.ui import Output
from blanket.units import show_time

HELP = "show the keys and their rotations, or rotate them (keys rotate --sign-key ...)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", choices=["show", "rotate"], default="show")
    p.add_argument("--sign-key", help="rotate: the new signing key (its secret here)")
    p.add_argument(
        "--encrypt-to",
        action="append",
        metavar="FPR",
        help="rotate: the new recipients of the packs (repeat for several)",
    )
    p.add_argument(
        "--metadata-key", metavar="FPR|none", help="rotate: the new metadata key, or none"
    )


def run(args: argparse.Namespace, out: Output) -> int:
    if args.action == "show" and (args.sign_key or args.encrypt_to or args.metadata_key):
        raise UsageError("--sign-key, --encrypt-to and --metadata-key go with 'keys rotate'")
    repo = open_repo(args)
    if args.action == "rotate":
        from blanket.rotate import Change, rotate_keys

        change = Change(
            args.sign_key,
            tuple(args.encrypt_to) if args.encrypt_to else None,
            args.metadata_key,
        )
        epoch = rotate_keys(repo, change, now=time.time_ns())
        out.summary(
            f"from commit {epoch.from_seq} on: signing key {epoch.sign}, packs encrypted to "
            f"{', '.join(epoch.readers)}, "
            + (
                f"indexes also to metadata key {', '.join(epoch.metadata)}"
                if epoch.metadata
                else "no metadata key"
            )
            + f" (rotation {epoch.number}, signed by the key before)",
            rotation=epoch.number,
            from_commit=epoch.from_seq,
            sign_key=epoch.sign,
            encrypt_to=list(epoch.readers),
            metadata_key=list(epoch.metadata),
        )
        return EXIT_OK
    if repo.config.mode != "pubkey":
        out.line("this repository is protected by a passphrase: it has no keys")
        return EXIT_OK
    from blanket import gpgkeys

    home = repo.gnupghome
    rows = []
    secrets = gpgkeys.listing(home, secret=True)
    for e in repo.epochs:
        here = [
            role
            for role, held in (
                ("sign", any(k.names(e.sign) and k.can("s", secret=True) for k in secrets)),
                ("indexes", bool(gpgkeys.decrypting(home, e.metadata))),
                ("content", bool(gpgkeys.decrypting(home, e.readers))),
            )
            if held
        ]
        rows.append(
            {
                "rotation": e.number,
                "from_commit": e.from_seq,
                "created": show_time(e.created),
                "sign_key": e.sign,
                "encrypt_to": list(e.readers) if out.json else " ".join(e.readers),
                "metadata_key": list(e.metadata) if out.json else " ".join(e.metadata) or "none",
                "here": here if out.json else ",".join(here) or "-",
            }
        )
    columns = ["rotation", "from_commit", "created", "sign_key", "encrypt_to", "metadata_key"]
    out.table(rows, [*columns, "here"])
    return EXIT_OK
