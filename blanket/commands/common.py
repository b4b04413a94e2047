"""What every command shares: the common options, the profile in force, opening the
repository, ``--at``.

A value comes from the command line, else the environment (``BLANKET_REPO``,
``GNUPGHOME``, ``BLANKET_PASSPHRASE_FILE``, ``AWS_ENDPOINT_URL``), else the profile in
force: the one ``--profile`` names, or the config's ``default`` when the command line
leaves out what the command needs (a repository, a source).
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any, cast

from blanket.errors import UsageError

if TYPE_CHECKING:  # imported where used: parsing the command line needs none of them
    from blanket import config
    from blanket.backends.base import Backend
    from blanket.repo import Repository

_NO_PROFILE = object()


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors raised as ``UsageError`` (exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


def common_options() -> Parser:
    """The options every command takes, accepted after the command name."""
    p = Parser(add_help=False)
    p.add_argument("--repo", "-r", action="append", help="repository URL (or BLANKET_REPO)")
    p.add_argument("--gnupghome", help="gpg home directory holding the key (or GNUPGHOME)")
    p.add_argument("--passphrase-file", help="file whose first line is the passphrase")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint (or AWS_ENDPOINT_URL)")
    p.add_argument("--config", help="config file (or BLANKET_CONFIG)")
    p.add_argument("--profile", "-p", help="use this profile of the config file")
    p.add_argument("--json", action="store_true", help="one JSON object per line on stdout")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing on success")
    return p


def profile(args: argparse.Namespace, *, needed: bool = True) -> config.Profile | None:
    """The profile in force: ``--profile NAME``, else (when ``needed``) the default one.
    Cached on ``args``."""
    cached = getattr(args, "_profile", _NO_PROFILE)
    if cached is not _NO_PROFILE and (cached is not None or not needed):
        return cast("config.Profile | None", cached)
    from blanket import config

    path, named = config.find(getattr(args, "config", None))
    chosen: config.Profile | None = None
    name = getattr(args, "profile", None)
    if name or needed:
        if not path.exists():
            if named:
                raise UsageError(f"config file {path} does not exist; fix --config/BLANKET_CONFIG")
            if name:
                raise UsageError(
                    f"--profile {name}: there is no config file at {path}; "
                    "write one (see examples/config.toml) or pass --config FILE"
                )
        else:
            cfg = config.load(path)
            if name:
                chosen = cfg.profile(name)
            elif cfg.default:
                chosen = cfg.profiles[cfg.default]
    args._profile = chosen
    return chosen


def setting(args: argparse.Namespace, name: str) -> Any:
    """A setting from the command line, else the profile in force (if any)."""
    value = getattr(args, name, None)
    if value is not None and value != []:
        return value
    chosen = profile(args, needed=False)
    return chosen.get(name) if chosen is not None else None


def repo_urls(args: argparse.Namespace) -> list[str]:
    urls = args.repo or ([os.environ["BLANKET_REPO"]] if os.environ.get("BLANKET_REPO") else [])
    if not urls:
        chosen = profile(args)
        urls = chosen.repositories if chosen is not None else []
    if not urls:
        raise UsageError(
            "no repository given; pass --repo URL, set BLANKET_REPO, or name one in a "
            "profile of the config file (--profile NAME)"
        )
    return [str(u) for u in urls]


def repo_url(args: argparse.Namespace) -> str:
    urls = repo_urls(args)
    if len(urls) > 1:
        raise UsageError(
            f"this command reads one repository, not {len(urls)}; pick one with --repo URL"
        )
    return urls[0]


def gnupghome(args: argparse.Namespace) -> str | None:
    home = args.gnupghome or os.environ.get("GNUPGHOME") or setting(args, "gnupghome")
    return str(home) if home else None


def passphrase(args: argparse.Namespace) -> str | None:
    path = (
        args.passphrase_file
        or os.environ.get("BLANKET_PASSPHRASE_FILE")
        or setting(args, "passphrase_file")
    )
    from blanket.crypto import read_passphrase_file

    return read_passphrase_file(path) if path else None


def backend_for(args: argparse.Namespace, url: str) -> Backend:
    """The store at ``url``, with the endpoint and rate limits in force."""
    from blanket.backends import open_backend

    endpoint = setting(args, "endpoint_url") if url.lower().startswith("s3://") else None
    return open_backend(
        url,
        endpoint_url=endpoint,
        limit_upload=setting(args, "limit_upload"),
        limit_download=setting(args, "limit_download"),
    )


def open_repo(
    args: argparse.Namespace,
    url: str | None = None,
    *,
    signs: bool = False,
    reads: str | None = None,
) -> Repository:
    """Open the repository (``url``, else the one in force) and tell the operation log.

    ``signs``: the command commits, so the keyring must be able to sign; ``reads``: the
    command (so named in the error) reads pack content, so the keyring must hold a
    recipient's secret key. Either missing is ``WrongKey`` (exit 12) before any work."""
    from blanket.repo import Repository

    url = url or repo_url(args)
    invocation = getattr(args, "invocation", None)
    if invocation is not None and invocation.current.url != url:
        invocation.begin(url)
    repo = Repository.open(backend_for(args, url), gnupghome(args), passphrase(args))
    if invocation is not None:
        invocation.bind(repo, url)
    if reads:
        repo.require_content_key(reads)
    if signs:
        repo.require_signing()
    return repo


def at(text: str | None) -> tuple[int | None, int | None]:
    """``--at``: ``(layer, None)``, ``(None, time_ns)`` or ``(None, None)``."""
    from blanket.units import parse_at

    return parse_at(text) if text else (None, None)
