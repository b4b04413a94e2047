"""Metrics for node_exporter's text-file collector, written after a run.

The file is replaced atomically (a temporary file in the same folder, renamed over it),
so the collector never reads half of it. One file holds the metrics of every repository
the run touched, each labelled with ``repository`` (its id, when it could be opened)
and ``url``; give each scheduled job its own file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from blanket.oplog import Unit
from blanket.state import atomic_write

METRICS: dict[str, tuple[str, str]] = {
    "blanket_last_run_timestamp_seconds": ("gauge", "When the last run ended."),
    "blanket_last_run_exit_code": ("gauge", "Exit code of the last run (0 ok, 3 some files)."),
    "blanket_last_run_duration_seconds": ("gauge", "How long the last run took."),
    "blanket_last_run_files": ("gauge", "Files the last run stored or restored."),
    "blanket_last_run_bytes": ("gauge", "Bytes the last run read or wrote."),
    "blanket_last_run_warnings": ("gauge", "Files the last run could not back up."),
    "blanket_last_commit_timestamp_seconds": ("gauge", "When the newest commit was made."),
    "blanket_repository_bytes": ("gauge", "Sum of the sizes of the committed packs."),
    "blanket_cap_bytes": ("gauge", "The configured space cap."),
    "blanket_layers": ("gauge", "Number of layers in the repository."),
    "blanket_commits": ("gauge", "Number of commits (packs) in the repository."),
    "blanket_pass_coverage_ratio": ("gauge", "Share of the current pass done (0 to 1)."),
}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def unit_values(unit: Unit, code: int, cap: int | None) -> dict[str, float]:
    """The metrics of one part of a run."""
    f = unit.figures
    values: dict[str, float] = {
        "blanket_last_run_timestamp_seconds": unit.ended or 0.0,
        "blanket_last_run_exit_code": code,
        "blanket_last_run_duration_seconds": max((unit.ended or 0.0) - unit.started, 0.0),
        "blanket_last_run_warnings": unit.warning_count,
    }
    for name, key in (("blanket_last_run_files", "files"), ("blanket_last_run_bytes", "bytes")):
        if isinstance(f.get(key), (int, float)):
            values[name] = f[key]
    repo = unit.repo
    if repo is not None:
        headers = repo.headers
        values["blanket_commits"] = len(headers)
        values["blanket_layers"] = len({h.layer for h in headers})
        values["blanket_repository_bytes"] = sum(h.data_size for h in headers)
        if headers:
            values["blanket_last_commit_timestamp_seconds"] = headers[-1].created / 1e9
    if isinstance(f.get("coverage"), (int, float)):
        values["blanket_pass_coverage_ratio"] = f["coverage"]
    if cap:
        values["blanket_cap_bytes"] = cap
    return values


def render(rows: list[tuple[dict[str, str], dict[str, float]]]) -> str:
    lines: list[str] = []
    for name, (kind, text) in METRICS.items():
        samples = [(labels, values[name]) for labels, values in rows if name in values]
        if not samples:
            continue
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        for labels, value in samples:
            shown = ",".join(f'{k}="{_label(v)}"' for k, v in sorted(labels.items()))
            number = repr(float(value)) if isinstance(value, float) else str(value)
            lines.append(f"{name}{{{shown}}} {number}")
    return "\n".join(lines) + "\n"


def write(path: str, units: list[Unit], codes: list[int], caps: list[int | None]) -> None:
    """Write the metrics of ``units`` (with their exit codes and caps) to ``path``."""
    rows: list[tuple[dict[str, str], dict[str, Any]]] = []
    for unit, code, cap in zip(units, codes, caps, strict=True):
        labels = {"url": unit.url or ""}
        if unit.repo is not None:
            labels["repository"] = unit.repo.config.id
        rows.append((labels, unit_values(unit, code, cap)))
    atomic_write(Path(os.path.expanduser(path)), render(rows).encode())
