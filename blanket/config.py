"""The configuration file: named profiles, each backing up one or more sources.

The file is ``--config FILE``, else ``$BLANKET_CONFIG``, else
``$XDG_CONFIG_HOME/blanket/config.toml`` (``~/.config/blanket/config.toml``)::

    default = "home"              # the profile used when a command names none

    [defaults]                    # settings every profile inherits
    gnupghome = "~/.gnupg"

    [profiles.home]               # one source, one repository
    source = "~"
    repository = "/media/usb/blanket-home"
    excludes = [".cache/"]

    [[profiles.work.sources]]     # several sources: one repository each (or a list)
    source = "~/work"
    repository = ["/media/usb/work", "s3://bucket/work"]

A profile's value wins over ``[defaults]``; a command-line flag wins over both. Excludes
add up (defaults, profile, source). Every error names the file and the line.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blanket.errors import UsageError
from blanket.units import parse_duration, parse_size

SIZES = ("cap", "pack_size", "max_bytes", "limit_upload", "limit_download")
DURATIONS = ("pack_time", "if_older_than", "max_time")
PATHS = ("gnupghome", "passphrase_file", "prometheus_file")
TEXTS = ("key", "sign_key", "metadata_key", "endpoint_url")
FLAGS = ("keep_history",)
SETTINGS = (*SIZES, *DURATIONS, *PATHS, *TEXTS, *FLAGS, "excludes", "encrypt_to")
PROFILE_KEYS = (*SETTINGS, "source", "repository", "sources")
SOURCE_KEYS = ("source", "repository", "excludes")
TOP_KEYS = ("default", "defaults", "profiles")

Where = tuple[str | int, ...]


@dataclass
class Target:
    """One source and the repository it is backed up into."""

    source: str
    repository: str
    excludes: list[str] = field(default_factory=list)
    where: Where = ()  # where in the file it is defined


@dataclass
class Profile:
    name: str
    targets: list[Target] = field(default_factory=list)
    repositories: list[str] = field(default_factory=list)  # in order, no repeats
    values: dict[str, Any] = field(default_factory=dict)  # parsed settings

    def get(self, name: str) -> Any:
        return self.values.get(name)


@dataclass
class Config:
    path: Path
    default: str | None = None
    profiles: dict[str, Profile] = field(default_factory=dict)

    def profile(self, name: str) -> Profile:
        if name not in self.profiles:
            known = ", ".join(sorted(self.profiles)) or "none"
            raise UsageError(f"no profile {name!r} in {self.path} (profiles: {known})")
        return self.profiles[name]


def find(explicit: str | None) -> tuple[Path, bool]:
    """The config file to read, and whether it was named (so must exist)."""
    named = explicit or os.environ.get("BLANKET_CONFIG")
    if named:
        return Path(os.path.expanduser(named)), True
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "blanket" / "config.toml", False


def load(path: Path) -> Config:
    """Read and check ``path``; raise UsageError with the first problem."""
    config, problems = check(path)
    if problems:
        more = (
            f" (and {len(problems) - 1} more: 'blanket config check')" if len(problems) > 1 else ""
        )
        raise UsageError(problems[0] + more)
    assert config is not None
    return config


def check(path: Path) -> tuple[Config | None, list[str]]:
    """Every problem of ``path``, one line each as ``FILE:LINE: what; the fix``."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        return None, [f"{path}: cannot read the config file: {reason}"]
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        what = re.sub(r"\s*\(at line.*\)", "", str(exc))
        where = f"{path}:{m.group(1)}" if m else str(path)
        col = f" at column {m.group(2)}" if m else ""
        return None, [f"{where}: not valid TOML: {what}{col}"]
    found: list[tuple[Where, str]] = []
    config = _build(path, raw, lambda w, msg: found.append((w, msg)))
    located = sorted(((locate(text, w) or 0, w, m) for w, m in found), key=lambda x: x[0])
    problems = [
        f"{f'{path}:{line}' if line else path}: {_dotted(where)}: {message}"
        for line, where, message in located
    ]
    return (None if problems else config), problems


# --- building and checking ------------------------------------------------------------

Report = Callable[[Where, str], None]


def _dotted(where: Where) -> str:
    return ".".join(f"[{p}]" if isinstance(p, int) else p for p in where).replace(".[", "[")


def _unknown(key: str, allowed: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(allowed)}"
    return f"unknown setting; {hint}"


def _settings(table: dict[str, Any], where: Where, report: Report) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key in SETTINGS:
        if key not in table:
            continue
        value, at = table[key], (*where, key)
        if key == "excludes":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                report(at, 'must be a list of patterns, like [".cache/", "*.tmp"]')
                continue
            values[key] = list(value)
        elif key == "encrypt_to":
            listed = [value] if isinstance(value, str) else value
            if (
                not isinstance(listed, list)
                or not listed
                or not all(isinstance(v, str) for v in listed)
            ):
                report(at, 'must be a fingerprint or a list of them, like ["0xABCD...", "..."]')
                continue
            values[key] = list(listed)
        elif key in FLAGS:
            if not isinstance(value, bool):
                report(at, f"must be true or false, like {key} = true")
                continue
            values[key] = value
        elif not isinstance(value, str):
            report(at, f'must be a string, like {key} = "..."')
        elif key in SIZES:
            try:
                values[key] = parse_size(value, _dotted(at))
            except UsageError:
                report(at, f"{value!r} is not a size; write e.g. 512K, 32M, 2G or plain bytes")
        elif key in DURATIONS:
            try:
                values[key] = parse_duration(value, _dotted(at))
            except UsageError:
                report(at, f"{value!r} is not a duration; write e.g. 90s, 10m, 6h or 2d")
        else:
            values[key] = os.path.expanduser(value) if key in PATHS else value
    return values


def _repositories(value: Any, at: Where, report: Report) -> list[str]:
    repos = [value] if isinstance(value, str) else value
    if not isinstance(repos, list) or not repos or not all(isinstance(r, str) and r for r in repos):
        report(at, 'must be a URL or a list of URLs, like "/media/usb/blanket" or "s3://b/p"')
        return []
    return [r if "://" in r else os.path.expanduser(r) for r in repos]


def _profile(name: str, table: Any, defaults: dict[str, Any], report: Report) -> Profile:
    where: Where = ("profiles", name)
    profile = Profile(name)
    if not isinstance(table, dict):
        report(where, "must be a table: [profiles.NAME]")
        return profile
    for key in table:
        if key not in PROFILE_KEYS:
            report((*where, key), _unknown(key, PROFILE_KEYS))
    own = _settings(table, where, report)
    profile.values = {**defaults, **own}
    profile.values["excludes"] = defaults.get("excludes", []) + own.get("excludes", [])
    entries: list[tuple[Where, dict[str, Any]]] = []
    if "sources" in table:
        if "source" in table:
            report((*where, "source"), "give either source (with repository) or sources, not both")
        if not isinstance(table["sources"], list):
            report((*where, "sources"), "must be a list of tables: [[profiles.NAME.sources]]")
        else:
            entries = [((*where, "sources", i), t) for i, t in enumerate(table["sources"])]
    elif "source" in table or "repository" in table:
        entries = [(where, {k: table[k] for k in ("source", "repository") if k in table})]
    for at, entry in entries:
        _target(profile, at, entry, report)
    return profile


def _target(profile: Profile, at: Where, entry: Any, report: Report) -> None:
    if not isinstance(entry, dict):
        report(at, "must be a table with source and repository")
        return
    if at[-1] != profile.name:  # an item of sources: only these keys
        for key in entry:
            if key not in SOURCE_KEYS:
                report((*at, key), _unknown(key, SOURCE_KEYS))
    if "repository" not in entry:
        report(at, "names no repository; add repository = URL")
        return
    repos = _repositories(entry["repository"], (*at, "repository"), report)
    for repo in repos:
        if repo not in profile.repositories:
            profile.repositories.append(repo)
    if "source" not in entry:
        return  # a profile for reading only (restore on a new machine)
    source = entry["source"]
    if not isinstance(source, str) or not source:
        report((*at, "source"), 'must be a folder, like source = "~/Documents"')
        return
    extra = entry.get("excludes", []) if at[-1] != profile.name else []
    if not isinstance(extra, list) or not all(isinstance(x, str) for x in extra):
        report((*at, "excludes"), 'must be a list of patterns, like [".cache/", "*.tmp"]')
        extra = []
    folder = os.path.expanduser(source)
    excludes = profile.values["excludes"] + list(extra)
    at_repo = (*at, "repository")
    profile.targets += [Target(folder, repo, excludes, at_repo) for repo in repos]


def _build(path: Path, raw: dict[str, Any], report: Report) -> Config:
    config = Config(path)
    for key in raw:
        if key not in TOP_KEYS:
            report((key,), _unknown(key, TOP_KEYS))
    defaults: dict[str, Any] = {}
    if "defaults" in raw:
        table = raw["defaults"]
        if isinstance(table, dict):
            for key in table:
                if key not in SETTINGS:
                    report(("defaults", key), _unknown(key, SETTINGS))
            defaults = _settings(table, ("defaults",), report)
        else:
            report(("defaults",), "must be a table: [defaults]")
    profiles = raw.get("profiles", {})
    if not isinstance(profiles, dict):
        report(("profiles",), "must hold tables: [profiles.NAME]")
        profiles = {}
    for name, table in profiles.items():
        config.profiles[name] = _profile(name, table, defaults, report)
    default = raw.get("default")
    if default is not None:
        if not isinstance(default, str) or default not in config.profiles:
            known = ", ".join(sorted(config.profiles)) or "none defined"
            report(("default",), f"names no profile (profiles: {known})")
        else:
            config.default = default
    _one_source_per_repository(config, report)
    return config


def _one_source_per_repository(config: Config, report: Report) -> None:
    owner: dict[str, tuple[str, str]] = {}
    for profile in config.profiles.values():
        for t in profile.targets:
            source = os.path.realpath(t.source)
            first = owner.setdefault(t.repository, (source, profile.name))
            if first[0] != source:
                report(
                    t.where,
                    f"repository {t.repository} already backs up {first[0]} (profile "
                    f"{first[1]}); one repository backs up one source: give it its own",
                )


# --- finding the line of a key ---------------------------------------------------------

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\[\]]+?)\s*\]\]?\s*(?:#.*)?$")
_KEY = re.compile(r"^\s*((?:\"[^\"]*\"|'[^']*'|[A-Za-z0-9_\-. ])+?)\s*=")


def _names(dotted: str) -> tuple[str, ...]:
    parts = re.findall(r"\"([^\"]*)\"|'([^']*)'|([^.\s]+)", dotted)
    return tuple(a or b or c for a, b, c in parts)


def locate(text: str, where: Where) -> int | None:
    """The line (from 1) that best matches ``where``: the key itself, else the nearest
    table or key above it in the path."""
    table: Where = ()
    arrays: dict[Where, int] = {}
    best: tuple[int, int] | None = None  # (matched length, line)
    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        if header:
            names: Where = _names(header.group(2))
            if header.group(1) == "[[":
                arrays[names] = arrays.get(names, -1) + 1
                names = (*names, arrays[names])
            table, full = names, names
        else:
            key = _KEY.match(line)
            if not key:
                continue
            full = (*table, *_names(key.group(1)))
        if full == where[: len(full)] or where == full[: len(where)]:
            matched = min(len(full), len(where))
            if best is None or matched > best[0]:
                best = (matched, number)
    return best[1] if best else None
