"""``blanket gc``: expire old layers within the cap and delete what nothing needs."""

from __future__ import annotations

import argparse

from blanket.commands.common import open_repo
from blanket.errors import EXIT_FATAL, EXIT_OK
from blanket.gc import run_gc
from blanket.ui import Output
from blanket.units import human_size, parse_size

HELP = "plan and apply expiry within the cap (no downloads)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cap", help="keep the repository under this size (e.g. 50G)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")


def run(args: argparse.Namespace, out: Output) -> int:
    cap = parse_size(args.cap, "--cap") if args.cap else None
    result = run_gc(open_repo(args), cap=cap, dry_run=args.dry_run)
    plan = result.plan
    rows = [
        {
            "layer": s.layer,
            "bytes": s.size if out.json else human_size(s.size),
            "current": result.live_entries.get(s.layer, 0),
            "refresh": s.live if out.json else human_size(s.live),
            "fate": (
                "delete"
                if s.layer in plan.delete
                else ("expiring" if s.layer < plan.expire_below else "keep")
            ),
        }
        for s in result.stats
    ]
    out.table(rows, ["layer", "bytes", "current", "refresh", "fate"])
    for message in result.warnings:
        out.warning(b"gc", message)
    cap_text = human_size(cap) if cap is not None else "no cap"
    verb = "would delete" if args.dry_run else "deleted"
    out.summary(
        f"{'plan' if args.dry_run else 'gc'}: {human_size(plan.total)} stored, cap {cap_text}; "
        f"layers below {plan.expire_below} expiring; {verb} layer(s) "
        f"{', '.join(map(str, plan.delete)) or 'none'}"
        + ("" if args.dry_run else f", {human_size(result.bytes_freed)} freed")
        + f"; next pass about {human_size(plan.peak)} at its peak"
        + ("" if plan.fits else f"; {plan.message}"),
        total=plan.total,
        cap=cap,
        expire_below=plan.expire_below,
        delete=plan.delete,
        peak=plan.peak,
        after=plan.after,
        fits=plan.fits,
        bytes_freed=result.bytes_freed,
        lost_versions=result.lost_versions,
        dry_run=args.dry_run,
    )
    return EXIT_OK if plan.fits else EXIT_FATAL
