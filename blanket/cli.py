"""The ``blanket`` command: parse arguments, run the command, render, log, exit with the
contract's code (0 ok, 1 fatal, 2 usage, 3 some files not backed up or restored,
10 repository missing, 11 locked, 12 wrong key). The commands live in
``blanket.commands``, one module each. Every run is recorded in the operation log
(``blanket.oplog``); with ``--prometheus-file`` its metrics are written too.

Start-up stays cheap: ``blanket --help`` and ``--version`` import argparse and the
command table, nothing else; the op log, the terminal UI and the command's own module
are imported once the command line has been parsed (tests/test_startup.py counts)."""

from __future__ import annotations

import argparse
import errno
import os
import resource
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from blanket import __version__
from blanket.commands import ALIASES, COMMANDS, HELPS
from blanket.commands.common import Parser, common_options, setting
from blanket.errors import EXIT_FATAL, EXIT_USAGE, BlanketError

if TYPE_CHECKING:
    from blanket import oplog
    from blanket.ui import Output


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser for a command line naming command ``only`` (None: none or an
    unknown one). Only that command's module is imported and only its arguments are
    known; the others are listed with their help (all ``blanket --help`` shows)."""
    common = common_options()
    parser = Parser(prog="blanket", description="Backups restorable from the first commit.")
    parser.add_argument("--version", action="version", version=f"blanket {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name in COMMANDS:
        aliases = [a for a, target in ALIASES.items() if target == name]
        if name != only:
            sub.add_parser(name, aliases=aliases, help=HELPS[name])
            continue
        module = COMMANDS[name]
        p = sub.add_parser(
            name, aliases=aliases, parents=[common], help=module.HELP, description=module.HELP
        )
        module.add_arguments(p)
    return parser


def _command_name(raw: list[str]) -> str:
    for word in raw:
        if not word.startswith("-"):
            return ALIASES.get(word, word) if word in COMMANDS or word in ALIASES else "blanket"
    return "blanket"


def parser_for(raw: list[str]) -> argparse.ArgumentParser:
    """The parser for the command line ``raw`` (knowing only the command it names)."""
    name = _command_name(raw)
    return build_parser(name if name in COMMANDS else None)


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    parsed: argparse.Namespace | BlanketError
    try:  # before anything heavy is imported: --help and --version end here
        parsed = parser_for(raw).parse_args(raw)
    except SystemExit as exc:  # --help, --version
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    except BlanketError as exc:  # a usage error: reported and logged like any other
        parsed = exc
    return _run(raw, parsed)


def _run(raw: list[str], parsed: argparse.Namespace | BlanketError) -> int:
    from blanket import oplog
    from blanket.ui import Output

    out = Output(json_mode="--json" in raw, quiet="--quiet" in raw or "-q" in raw)
    invocation = oplog.Invocation(_command_name(raw), raw)
    out.record = invocation
    args: argparse.Namespace | None = None
    code, error = EXIT_FATAL, None
    try:
        if isinstance(parsed, BlanketError):
            raise parsed
        args = parsed
        args.command = ALIASES.get(args.command, args.command)
        args.invocation = invocation
        out = Output(json_mode=args.json, quiet=args.quiet)
        out.record = invocation
        code = int(COMMANDS[args.command].run(args, out))
    except BlanketError as exc:
        code, error = exc.exit_code, " ".join(str(exc).split())
        out.error(error, code)
    except KeyboardInterrupt:
        code, error = 130, "interrupted"
        out.error(error, code)
    except (OSError, MemoryError) as exc:
        if not _out_of_resources(exc):
            raise
        code, error = EXIT_FATAL, _resource_message(exc)
        out.error(error, code)
    except BrokenPipeError:  # the reader of our stdout went away (| head): not our failure
        code = 0
        _silence_stdout()
    except SystemExit as exc:  # a command's own exit
        code = int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
        return code
    finally:
        out.stop_live()
    _finish(invocation, args, out, code, error)
    return code


def _finish(
    invocation: oplog.Invocation,
    args: argparse.Namespace | None,
    out: Output,
    code: int,
    error: str | None,
) -> None:
    """Log the run; write the Prometheus file when asked. Trouble here is reported on
    stderr and never changes the exit code."""
    invocation.finish(code, error)
    path = getattr(args, "prometheus_file", None) if args is not None else None
    if args is not None and path is None and getattr(args, "command", "") in ("backup", "status"):
        try:
            path = setting(args, "prometheus_file")
        except BlanketError:
            path = None
    if not path:
        return
    from blanket import prometheus

    units = invocation.units
    codes = [u.exit_code if u.exit_code is not None else code for u in units]
    try:
        cap = setting(args, "cap") if args is not None else None
    except BlanketError:
        cap = None
    try:
        prometheus.write(path, units, codes, [cap] * len(units))
    except OSError as exc:
        out.error(f"cannot write the Prometheus file {path}: {exc.strerror}", code)


def _out_of_resources(exc: BaseException) -> bool:
    """Whether ``exc`` says the machine or the process ran out of something."""
    limits = (errno.EMFILE, errno.ENFILE, errno.ENOMEM)
    return isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno in limits)


def _resource_message(exc: BaseException) -> str:
    """One line for running out of open files, memory or processes, and what to do."""
    if isinstance(exc, OSError) and exc.errno == errno.EMFILE:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        return (
            f"too many open files (this process may open {soft}); raise the limit "
            "('ulimit -n 4096', or LimitNOFILE= in a systemd unit) and run again"
        )
    if isinstance(exc, OSError) and exc.errno == errno.ENFILE:
        return "the system has too many open files; close some programs and run again"
    return "out of memory; close some programs (or raise 'ulimit -v') and run again"


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


def entry_point() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
