"""``blanket verify``: name every missing, damaged, swapped or forged object."""

from __future__ import annotations

import argparse

from blanket.commands.common import open_repo
from blanket.errors import EXIT_FATAL, EXIT_OK, UsageError
from blanket.ui import Output
from blanket.verify import verify

HELP = "check every committed object (--deep: also read and decrypt every pack)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--deep", action="store_true", help="download, decrypt and hash every pack")
    p.add_argument(
        "--read-data-subset",
        metavar="N%",
        help="deep-check this share of the packs, the next share on the next run",
    )


def _fraction(text: str | None) -> float | None:
    if text is None:
        return None
    number = text.strip().removesuffix("%")
    try:
        value = float(number) / 100
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise UsageError(f"--read-data-subset {text!r}: give a percentage like 10%")
    return value


def run(args: argparse.Namespace, out: Output) -> int:
    subset = _fraction(args.read_data_subset)
    reads = "verify --deep" if args.deep or subset else None
    report = verify(open_repo(args, reads=reads), deep=args.deep, subset=subset)
    for key, message in report.problems:
        out.warning(key.encode(), message)
    kind = "deep" if args.deep else ("sampled deep" if subset else "quick")
    state = f"{len(report.problems)} problem(s)" if report.problems else "no problems"
    out.summary(
        f"{kind} verify: {report.commits} commit(s), {report.objects} object(s), "
        f"{report.packs_read} pack(s) read; {state}"
        + (f"; {report.leftovers} uncommitted leftover(s) ignored" if report.leftovers else "")
        + (
            f"; {by_size} data object(s) the store keeps no SHA-256 for checked by size "
            "only (--deep reads them)"
            if (by_size := report.checked["size"]) and not args.deep
            else ""
        ),
        commits=report.commits,
        objects=report.objects,
        packs_read=report.packs_read,
        leftovers=report.leftovers,
        by_store_checksum=report.checked["checksum"],
        hashed=report.checked["hashed"],
        by_size_only=report.checked["size"],
        problems=[{"object": k, "message": m} for k, m in report.problems],
    )
    return EXIT_FATAL if report.problems else EXIT_OK
