"""``blanket status``: last commit, coverage of the pass, size against cap, last errors.

With ``--warn-age`` or ``--crit-age`` it is a monitoring check: the first line is
``BLANKET OK - ...`` (or ``WARNING``, ``CRITICAL``, ``UNKNOWN``) with performance data,
and the exit code is Nagios's (0, 1, 2, 3) instead of blanket's usual ones.
"""

from __future__ import annotations

import argparse
from typing import Any

from blanket import status
from blanket.commands.backup import duration_arg, size_arg
from blanket.commands.common import open_repo, repo_urls, setting
from blanket.errors import EXIT_OK, BlanketError, UsageError
from blanket.status import Status
from blanket.ui import Output
from blanket.units import human_size, show_time

HELP = "show the last commit, coverage, size and last errors (a monitoring check)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--warn-age",
        type=duration_arg("--warn-age"),
        metavar="DURATION",
        help="check: WARNING when the last commit is older than this",
    )
    p.add_argument(
        "--crit-age",
        type=duration_arg("--crit-age"),
        metavar="DURATION",
        help="check: CRITICAL when the last commit is older than this",
    )
    p.add_argument("--cap", type=size_arg("--cap"), help="the size the repository must stay under")
    p.add_argument("--prometheus-file", metavar="PATH", help="write metrics here")


def run(args: argparse.Namespace, out: Output) -> int:
    checking = args.warn_age is not None or args.crit_age is not None
    try:
        urls = repo_urls(args)
        cap = setting(args, "cap")
    except UsageError as exc:
        if not checking:
            raise
        return _verdict(out, status.UNKNOWN, str(exc), "", [])
    found: list[Status] = []
    for url in urls:
        try:
            repo = open_repo(args, url)
            repo.refresh(strict=False)
            s = status.gather(repo, url, cap)
            for key, problem in repo.problems:
                s.errors.insert(0, {"command": "status", "error": f"{key}: {problem}"})
        except BlanketError as exc:
            if not checking and len(urls) == 1:
                raise
            s = Status(url, error=" ".join(str(exc).split()))
        found.append(s)
    if checking:
        verdicts = [status.check(s, args.warn_age, args.crit_age) for s in found]
        code = max(c for c, _ in verdicts)
        text = "; ".join(t for _, t in verdicts)
        several = len(found) > 1
        perf = " ".join(
            p for s in found if (p := status.perfdata(s, args.warn_age, args.crit_age, several))
        )
        return _verdict(out, code, text, perf, found)
    for s in found:
        _show(out, s)
    return EXIT_OK if all(s.error is None for s in found) else 1


def _verdict(out: Output, code: int, text: str, perf: str, found: list[Status]) -> int:
    state = status.STATES[code]
    line = f"BLANKET {state} - {text}" + (f" | {perf}" if perf else "")
    if out.json:
        for s in found:
            out.emit("status", **s.to_json())
        out.summary(line, check=state, exit_code=code, detail=text)
    else:
        out.summary(line, check=state, exit_code=code)  # the first line, even with --quiet
        if out.quiet:
            print(line)
        for s in found:
            _show(out, s)
    return code


def _row(label: str, value: Any) -> str:
    return f"{label:<12}{value}"


def _show(out: Output, s: Status) -> None:
    if out.json:
        out.emit("status", **s.to_json())
        return
    lines = [_row("repository", f"{s.repository or '?'} at {s.url}")]
    if s.error is not None:
        lines.append(_row("error", s.error))
    if s.source:
        lines.append(_row("source", s.source))
    if s.last_commit_time is not None and s.age_seconds is not None:
        when = show_time(int(s.last_commit_time * 1e9))
        lines.append(
            _row(
                "last commit",
                f"{when} ({status.human_age(s.age_seconds)} ago), "
                f"commit {s.commits - 1}, layer {s.current_layer}",
            )
        )
        if s.pass_complete:
            cover = "complete"
        elif s.coverage is None:
            cover = "first pass under way (no earlier pass to measure against)"
        else:
            cover = f"about {s.coverage:.0%} covered"
        lines.append(_row("pass", f"layer {s.current_layer} {cover}; clock at {s.clock}"))
    elif s.error is None:
        lines.append(_row("last commit", "none yet; run 'blanket backup'"))
    if s.error is None:
        lines.append(_row("layers", f"{s.layers} ({s.complete_layers} complete)"))
        cap = f" of {human_size(s.cap)} cap ({s.size / s.cap:.0%})" if s.cap else ""
        lines.append(_row("size", f"{human_size(s.size)}{cap}"))
    if s.last_backup is not None:
        b, f = s.last_backup, s.last_backup.get("figures", {})
        lines.append(
            _row(
                "last backup",
                f"{b.get('end')} on {b.get('host')}: {b.get('outcome')}, "
                f"{f.get('files', 0)} file(s), {human_size(f.get('bytes') or 0)}",
            )
        )
    if s.unreadable:
        shown = ", ".join(f"{w['path']} ({w['message']})" for w in s.unreadable[:5])
        more = f" and {len(s.unreadable) - 5} more" if len(s.unreadable) > 5 else ""
        lines.append(_row("unreadable", f"{len(s.unreadable)} file(s): {shown}{more}"))
    for e in s.errors:
        lines.append(_row("error", f"{e.get('end') or ''} {e.get('command')}: {e.get('error')}"))
    for line in lines:
        out.line(line)
