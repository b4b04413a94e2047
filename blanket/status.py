"""What ``blanket status`` reports about one repository, and the monitoring check.

``gather`` reads the repository's headers, the local operation log (and the newest
backup record in the store, so runs from another machine count too); ``check`` turns
a status into a Nagios-style verdict (0 OK, 1 WARNING, 2 CRITICAL). Both are plain data
in, plain data out; rendering is the command's job.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from blanket import model, oplog
from blanket.merge import replay
from blanket.repo import Repository
from blanket.state import state_root
from blanket.units import human_size

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
SHOWN_ERRORS = 5
WATCHED = ("backup", "verify", "gc", "sync")  # a failure of these since the last commit warns


@dataclass
class Status:
    url: str
    repository: str = ""
    source: str = ""
    commits: int = 0
    layers: int = 0
    complete_layers: int = 0
    last_commit_time: float | None = None  # seconds since the epoch
    age_seconds: float | None = None
    current_layer: int | None = None
    pass_complete: bool = False
    coverage: float | None = None
    clock: str = ""
    size: int = 0
    cap: int | None = None
    last_backup: dict[str, Any] | None = None
    unreadable: list[dict[str, str]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None  # the repository could not be read

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _failures(records: list[dict[str, Any]], url: str, repo_id: str) -> list[dict[str, Any]]:
    found = [
        {k: r.get(k) for k in ("command", "end", "end_ts", "exit_code", "error", "url")}
        for r in records
        if r.get("outcome") == "failed"
        and r.get("error")
        and (
            r.get("repository") == repo_id or (r.get("repository") is None and r.get("url") == url)
        )
    ]
    found.sort(key=lambda r: r.get("end_ts") or 0)
    return found[-SHOWN_ERRORS:][::-1]


def local_records(repo: Repository | None) -> list[dict[str, Any]]:
    """This machine's records about ``repo`` and about runs that never opened one."""
    records = oplog.read(state_root())
    if repo is not None:
        records += oplog.read(repo.state.dir)
    return records


def last_backup(repo: Repository, records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest backup that did something: from this machine's log, or the store's."""
    ran = [
        r
        for r in records
        if r.get("command") == "backup"
        and r.get("repository") == repo.config.id
        and r.get("outcome") != "skipped"
    ]
    local = max(ran, key=lambda r: r.get("end_ts") or 0, default=None)
    stored = oplog.newest_in_store(repo)
    if stored is not None and (local is None or stored.get("end_ts", 0) > local.get("end_ts", 0)):
        return stored
    return local


def coverage(repo: Repository, backup: dict[str, Any] | None) -> float | None:
    """The share of the tree the current pass has covered (None in the first pass)."""
    if not repo.packs:
        return None
    last = repo.packs[-1]
    if last.complete:
        return 1.0
    if last.layer == 0:
        return None
    figures = (backup or {}).get("figures", {})
    if figures.get("last_commit") == last.seq and figures.get("coverage") is not None:
        return float(figures["coverage"])
    key = model.clock_key(last.clock_to)
    total = done = 0
    for located in replay(repo.layer_streams()):
        total += 1
        done += located.entry.key <= key
    return done / total if total else None


def gather(repo: Repository, url: str, cap: int | None, now: float | None = None) -> Status:
    now = time.time() if now is None else now
    headers = repo.headers
    s = Status(url, repo.config.id, cap=cap)
    s.commits = len(headers)
    layers = {h.layer: h.complete for h in headers}
    for h in headers:
        layers[h.layer] = layers[h.layer] or h.complete
    s.layers, s.complete_layers = len(layers), sum(layers.values())
    s.size = sum(h.data_size for h in headers)
    records = local_records(repo)
    s.errors = _failures(records, url, repo.config.id)
    backup = last_backup(repo, records)
    if backup is not None:
        s.last_backup = {
            k: backup.get(k) for k in ("end", "end_ts", "exit_code", "outcome", "host")
        }
        s.last_backup["figures"] = {
            k: v for k, v in backup.get("figures", {}).items() if k != "warnings"
        }
        s.unreadable = list(backup.get("warnings", []))
    packs = [h for h in headers if not h.gc_record]
    if packs:
        last = packs[-1]
        s.source = f"{last.source_host}:{last.source_path.decode('utf-8', 'backslashreplace')}"
        s.last_commit_time = last.created / 1e9
        s.age_seconds = max(now - s.last_commit_time, 0.0)
        s.current_layer = last.layer
        s.pass_complete = last.complete
        s.clock = last.clock_to.decode("utf-8", "backslashreplace")
        s.coverage = coverage(repo, backup)
    return s


def human_age(seconds: float) -> str:
    s = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            rest = s % size
            small = {"d": ("h", 3600), "h": ("m", 60), "m": ("s", 1)}[unit]
            return f"{s // size}{unit}{rest // small[1]:02d}{small[0]}"
    return f"{s}s"


def check(s: Status, warn_age: float | None, crit_age: float | None) -> tuple[int, str]:
    """The verdict and a short text for one repository."""
    if s.error is not None:
        return CRITICAL, f"{s.url}: {s.error}"
    if s.age_seconds is None:
        return CRITICAL, f"{s.url}: no commit yet; run 'blanket backup'"
    parts = [f"last commit {human_age(s.age_seconds)} ago"]
    code = OK
    if crit_age is not None and s.age_seconds > crit_age:
        code = CRITICAL
        parts[0] += f" (critical after {human_age(crit_age)})"
    elif warn_age is not None and s.age_seconds > warn_age:
        code = WARNING
        parts[0] += f" (warning after {human_age(warn_age)})"
    failed = [e for e in s.errors if e.get("command") in WATCHED]
    if failed and (failed[0].get("end_ts") or 0) > (s.last_commit_time or 0):
        code = max(code, WARNING)
        parts.append(f"last {failed[0].get('command')} failed: {failed[0].get('error')}")
    if s.cap and s.size > s.cap:
        code = max(code, WARNING)
        parts.append(f"size {human_size(s.size)} over the cap {human_size(s.cap)}")
    if s.unreadable:
        parts.append(f"{len(s.unreadable)} file(s) unreadable")
    layer = f"layer {s.current_layer} " + (
        "complete" if s.pass_complete or s.coverage is None else f"{s.coverage:.0%}"
    )
    parts.insert(1, layer)
    return code, f"{s.url}: " + ", ".join(parts)


def perfdata(s: Status, warn_age: float | None, crit_age: float | None, prefix: bool) -> str:
    """Nagios performance data for one repository (labels prefixed with the start of
    its id when there are several)."""

    def n(x: float | None) -> str:
        return "" if x is None else str(int(x))

    if s.error is not None or s.age_seconds is None:
        return ""
    name = s.repository[:8] + "_" if prefix else ""
    age = f"{name}age={n(s.age_seconds)}s;{n(warn_age)};{n(crit_age)}"
    size = f"{name}size={s.size}B;;{n(s.cap)}"
    return f"{age} {size} {name}layers={s.layers}"
