"""One module per command; each has ``HELP``, ``add_arguments(parser)`` and
``run(args, out) -> exit code``. ``COMMANDS`` lists them in the order ``--help`` shows."""

from __future__ import annotations

from types import ModuleType

from blanket.commands import backup, init, layers, ls, restore

COMMANDS: dict[str, ModuleType] = {
    "init": init,
    "backup": backup,
    "layers": layers,
    "ls": ls,
    "restore": restore,
}
