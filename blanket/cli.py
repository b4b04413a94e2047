"""The ``blanket`` command: parse arguments, run the command, render, exit with the
contract's code (0 ok, 1 fatal, 2 usage, 3 some files not backed up or restored,
10 repository missing, 11 locked, 12 wrong key). The commands live in
``blanket.commands``, one module each."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from blanket.commands import COMMANDS
from blanket.commands.common import Parser, common_options
from blanket.errors import EXIT_USAGE, BlanketError
from blanket.ui import Output


def build_parser() -> argparse.ArgumentParser:
    common = common_options()
    parser = Parser(prog="blanket", description="Backups restorable from the first commit.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, module in COMMANDS.items():
        p = sub.add_parser(name, parents=[common], help=module.HELP, description=module.HELP)
        module.add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    out = Output(json_mode="--json" in raw, quiet="--quiet" in raw or "-q" in raw)
    try:
        args = build_parser().parse_args(raw)
        if args.gnupghome is None:
            args.gnupghome = os.environ.get("GNUPGHOME") or None
        out = Output(json_mode=args.json, quiet=args.quiet)
        return int(COMMANDS[args.command].run(args, out))
    except BlanketError as exc:
        out.error(str(exc), exc.exit_code)
        return exc.exit_code
    except KeyboardInterrupt:
        out.error("interrupted", 130)
        return 130
    except SystemExit as exc:  # --help
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    finally:
        out.stop_live()


def entry_point() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
