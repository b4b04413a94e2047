"""One module per command; each has ``HELP``, ``add_arguments(parser)`` and
``run(args, out) -> exit code``. ``COMMANDS`` lists them in the order ``--help`` shows;
``ALIASES`` maps other names to them."""

from __future__ import annotations

from types import ModuleType

from blanket.commands import (
    backup,
    cat,
    configfile,
    diff,
    gc,
    init,
    layers,
    ls,
    restore,
    status,
    sync,
    verify,
)

COMMANDS: dict[str, ModuleType] = {
    "init": init,
    "backup": backup,
    "status": status,
    "layers": layers,
    "ls": ls,
    "diff": diff,
    "cat": cat,
    "restore": restore,
    "verify": verify,
    "gc": gc,
    "sync": sync,
    "config": configfile,
}

ALIASES: dict[str, str] = {"changes": "diff"}
