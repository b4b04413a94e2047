"""``blanket config check``: validate the config file; ``blanket config show``: the
profiles as blanket reads them (sources, repositories, settings)."""

from __future__ import annotations

import argparse

from blanket import config
from blanket.errors import EXIT_OK, EXIT_USAGE, UsageError
from blanket.ui import Output
from blanket.units import human_size

HELP = "check the config file (check) or show its profiles (show)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["check", "show"], help="check or show")


def run(args: argparse.Namespace, out: Output) -> int:
    path, named = config.find(args.config)
    if not path.exists():
        if named:
            raise UsageError(f"config file {path} does not exist; fix --config/BLANKET_CONFIG")
        raise UsageError(
            f"there is no config file at {path}; write one (see examples/config.toml) "
            "or pass --config FILE"
        )
    loaded, problems = config.check(path)
    if problems:
        for problem in problems:
            out.error(problem, EXIT_USAGE)
        if not out.json:
            out.line(f"{path}: {len(problems)} problem(s)")
        return EXIT_USAGE
    assert loaded is not None
    if args.action == "show" or out.json:
        for p in loaded.profiles.values():
            _show(out, p, p.name == loaded.default)
    names = ", ".join(
        f"{p.name} ({len(p.targets)} source(s))"
        + (" [default]" if p.name == loaded.default else "")
        for p in loaded.profiles.values()
    )
    out.summary(
        f"{path}: OK; profiles: {names or 'none'}",
        path=str(path),
        ok=True,
        default=loaded.default,
        profiles=sorted(loaded.profiles),
    )
    return EXIT_OK


def _show(out: Output, p: config.Profile, default: bool) -> None:
    values = {k: v for k, v in p.values.items() if v not in (None, [])}
    if out.json:
        out.emit(
            "profile",
            name=p.name,
            default=default,
            targets=[{"source": t.source, "repository": t.repository} for t in p.targets],
            repositories=p.repositories,
            settings=values,
        )
        return
    out.line(f"[{p.name}]" + (" (default)" if default else ""))
    for t in p.targets:
        out.line(f"  {t.source} -> {t.repository}")
    for url in p.repositories:
        if not any(t.repository == url for t in p.targets):
            out.line(f"  (no source) -> {url}")
    for key, value in sorted(values.items()):
        shown = human_size(value) if key in config.SIZES else value
        out.line(f"  {key} = {shown}")
