"""One module per command; each has ``HELP``, ``add_arguments(parser)`` and
``run(args, out) -> exit code``. ``COMMANDS`` lists them in the order ``--help`` shows,
importing a command's module only when it is first looked up (start-up stays cheap: a
run imports the one command it runs); ``ALIASES`` maps other names to them."""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from types import ModuleType

# name -> the module's HELP, so that ``blanket --help`` imports no command module
# (tests/test_rerun_startup.py checks these against the modules)
HELPS: dict[str, str] = {
    "init": "create a repository",
    "backup": "continue the file clock from its pointer",
    "status": "show the last commit, coverage, size and last errors (a monitoring check)",
    "layers": "list the layers",
    "ls": "list the tree as replay gives it",
    "diff": "list what was added, changed and deleted between two points",
    "cat": "write one file's content to stdout",
    "restore": "restore all or some of the tree (--to - writes a tar stream to stdout)",
    "verify": "check every committed object (--deep: also read and decrypt every pack)",
    "gc": "plan and apply expiry within the cap (no downloads unless --keep-history)",
    "sync": "copy the committed objects a second store lacks (it becomes a replica)",
    "keys": "show the keys and their rotations, or rotate them (keys rotate --sign-key ...)",
    "config": "check the config file (check) or show its profiles (show)",
}
NAMES = tuple(HELPS)
_MODULE_OF = {"config": "configfile"}


class _Commands(Mapping[str, ModuleType]):
    """Command name -> its module, imported on first lookup."""

    def __getitem__(self, name: str) -> ModuleType:
        if name not in NAMES:
            raise KeyError(name)
        return importlib.import_module(f"blanket.commands.{_MODULE_OF.get(name, name)}")

    def __iter__(self) -> Iterator[str]:
        return iter(NAMES)

    def __len__(self) -> int:
        return len(NAMES)


COMMANDS: Mapping[str, ModuleType] = _Commands()

ALIASES: dict[str, str] = {"changes": "diff"}
