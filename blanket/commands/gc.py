"""``blanket gc``: expire old layers within the cap and delete what nothing needs.

``--dry-run`` prints the plan (``blanket.gcplan.plan_gc``) that the apply would run:
the layers' fates, the history kept or lost, and the objects it would delete."""

from __future__ import annotations

import argparse

from blanket.commands.common import open_repo, setting
from blanket.errors import EXIT_FATAL, EXIT_OK
from blanket.gc import GcResult, run_gc
from blanket.ui import Output
from blanket.units import human_size, parse_size

HELP = "plan and apply expiry within the cap (no downloads unless --keep-history)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cap", help="keep the repository under this size (e.g. 50G)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument(
        "--keep-history",
        action="store_true",
        help="copy forward the old versions that deleted layers would lose, as many as fit "
        "under the cap (downloads only the packs that hold them)",
    )


def run(args: argparse.Namespace, out: Output) -> int:
    cap = parse_size(args.cap, "--cap") if args.cap else setting(args, "cap")
    args.keep_history = args.keep_history or bool(setting(args, "keep_history"))
    repo = open_repo(
        args,
        signs=not args.dry_run,
        reads="gc --keep-history" if args.keep_history else None,
    )
    result = run_gc(repo, cap=cap, dry_run=args.dry_run, keep_history=args.keep_history)
    plan = result.plan
    hist = result.history
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
    if hist.going:
        out.line(_history_line(result, dry_run=args.dry_run))
    out.summary(
        f"{'plan' if args.dry_run else 'gc'}: {human_size(plan.total)} stored, cap {cap_text}; "
        f"layers below {plan.expire_below} expiring; {verb} layer(s) "
        f"{', '.join(map(str, plan.delete)) or 'none'}"
        + (
            f", {result.objects_to_delete} object(s) of {human_size(result.bytes_to_free)} "
            "to delete"
            if args.dry_run
            else f", {human_size(result.bytes_freed)} freed"
        )
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
        objects_to_delete=result.objects_to_delete,
        bytes_to_free=result.bytes_to_free,
        lost_versions=result.lost_versions,
        dry_run=args.dry_run,
        keep_history=args.keep_history,
        history_going=hist.going,
        history_copy=hist.copy,
        history_download_bytes=hist.download,
        history_download_packs=hist.packs,
        history_upload_bytes=hist.upload,
        history_over_cap=hist.over_cap,
        history_uncopyable=hist.uncopyable,
        history_dropped_records=hist.dropped_records,
        history_dropped_versions=hist.dropped_versions,
        kept_versions=result.kept_versions,
        bytes_downloaded=result.bytes_downloaded,
        bytes_added=result.bytes_added,
        delete_refused=result.delete_refused,
    )
    # A gc that could not delete did not do its job: cron and monitoring must see it.
    return EXIT_OK if plan.fits and not result.delete_refused else EXIT_FATAL


def _history_line(result: GcResult, *, dry_run: bool) -> str:
    """One line on the versions the deleted layers take with them, and keeping them."""
    hist = result.history
    cost = (
        f"download {human_size(hist.download)} from {hist.packs} pack(s), "
        f"add about {human_size(hist.upload)}"
    )
    if not result.keep_history:
        return (
            f"history: {hist.going} old version(s) {'would be' if dry_run else 'were'} lost "
            f"with the deleted layers; --keep-history would copy {hist.copy} forward "
            f"({cost})"
            + (
                f", {hist.going - hist.copy} do not fit under the cap"
                if hist.copy < hist.going
                else ""
            )
        )
    if dry_run:
        text = f"history: would copy {hist.copy} of {hist.going} old version(s) forward ({cost})"
    else:
        text = (
            f"history: copied {result.kept_versions} of {hist.going} old version(s) forward "
            f"(downloaded {human_size(result.bytes_downloaded)} from {hist.packs} pack(s), "
            f"added {human_size(result.bytes_added)})"
        )
    if hist.over_cap:
        text += f"; {hist.over_cap} do not fit under the cap and are recorded as lost"
    return text
