"""Summaries of layers from the index headers (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from blanket.indexfmt import IndexHeader
from blanket.model import Entry


@dataclass
class LayerSummary:
    layer: int
    full: bool
    complete: bool
    first: int
    last: int
    packs: int
    size: int
    clock: bytes


def summarize(headers: list[IndexHeader]) -> list[LayerSummary]:
    """One summary per layer, oldest first."""
    out: dict[int, LayerSummary] = {}
    for h in headers:
        if h.gc_record:
            continue
        s = out.get(h.layer)
        if s is None:
            s = out[h.layer] = LayerSummary(h.layer, h.full, False, h.created, h.created, 0, 0, b"")
        s.last = h.created
        s.packs += 1
        s.size += h.data_size
        s.complete = s.complete or h.complete
        s.clock = h.clock_to
    return [out[k] for k in sorted(out)]


def history(summaries: list[LayerSummary], lost: list[Entry]) -> dict[int, int]:
    """For each layer, how many versions that were current at its end gc has removed
    (0: restoring ``--at`` that layer is exact)."""
    return {
        s.layer: sum(1 for e in lost if e.since <= s.last < (e.until or 1 << 63)) for s in summaries
    }
