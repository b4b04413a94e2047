"""Summaries of layers from the index headers (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from blanket.indexfmt import IndexHeader


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
