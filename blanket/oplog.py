"""The operation log: one JSON line per command run, kept locally and, for backups, in
the store.

* Locally, in ``<state root>/<repository id>/oplog.jsonl`` for a run that opened a
  repository, else ``<state root>/oplog.jsonl``. Each line holds the run id, command,
  arguments, start and end, exit code, outcome (``ok``, ``partial``, ``skipped``,
  ``failed``), the figures of its summary, its warnings (the first ``MAX_WARNINGS``, and
  how many there were) and its error. The file keeps about the newest ``MAX_LOG`` bytes.
* In the store, the record of a backup that ran (not skipped, not refused for its
  command line) is also written as ``log/<UTC time>-<run id>``
  (``log/20261101T080000Z-1a2b3c4d``): gpg-encrypted and signed like every object, plain
  ASCII name, written only if absent and never replaced, so a backup still needs no
  delete permission. ``blanket status`` reads the newest one, so a monitor sees the last
  backup whichever machine ran it.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blanket.errors import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, BlanketError
from blanket.state import atomic_write, state_root

if TYPE_CHECKING:
    from blanket.repo import Repository

LOG_NAME = "oplog.jsonl"
LOG_PREFIX = "log/"
MAX_WARNINGS = 50
MAX_LOG = 1 << 20


@dataclass
class Unit:
    """The part of a run that concerns one repository (or none)."""

    url: str | None = None
    repo: Repository | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    warnings: list[dict[str, str]] = field(default_factory=list)
    warning_count: int = 0
    error: str | None = None
    exit_code: int | None = None
    started: float = field(default_factory=time.time)
    ended: float | None = None


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def outcome(code: int, figures: dict[str, Any]) -> str:
    if figures.get("skipped"):
        return "skipped"
    if code == EXIT_OK:
        return "ok"
    return "partial" if code == EXIT_PARTIAL else "failed"


class Invocation:
    """One run of one command; collects what the log records (a ``ui.Recorder``)."""

    def __init__(self, command: str, argv: list[str]) -> None:
        self.command, self.argv = command, argv
        self.run_id = secrets.token_hex(4)
        self.started = time.time()
        self.units = [Unit()]
        self.current = self.units[0]

    def begin(self, url: str) -> Unit:
        """Start the part of the run about repository ``url`` (it becomes current)."""
        unit = self.current
        if unit.url is not None or unit.repo is not None or unit.figures:
            unit = Unit(url)
            self.units.append(unit)
        unit.url = url
        self.current = unit
        return unit

    def use(self, unit: Unit) -> None:
        """Make ``unit`` current again (figures and warnings go to it)."""
        unit.started = time.time()
        self.current = unit

    def bind(self, repo: Repository, url: str) -> None:
        """The current part's repository is open."""
        unit = self.current
        if unit.repo is not None and unit.repo is not repo:
            unit = self.begin(url)
        unit.url, unit.repo = url, repo

    def note_summary(self, fields: dict[str, Any]) -> None:
        self.current.figures.update(fields)

    def note_warning(self, path: str, message: str) -> None:
        unit = self.current
        unit.warning_count += 1
        if len(unit.warnings) < MAX_WARNINGS:
            unit.warnings.append({"path": path, "message": message})

    def record(self, unit: Unit, code: int, error: str | None) -> dict[str, Any]:
        ended = unit.ended or time.time()
        started = unit.started if len(self.units) > 1 else self.started
        return {
            "run": self.run_id,
            "command": self.command,
            "argv": self.argv,
            "host": socket.gethostname(),
            "start": _iso(started),
            "end": _iso(ended),
            "start_ts": round(started, 3),
            "end_ts": round(ended, 3),
            "seconds": round(ended - started, 3),
            "exit_code": code,
            "outcome": outcome(code, unit.figures),
            "repository": unit.repo.config.id if unit.repo is not None else None,
            "url": unit.url,
            "figures": unit.figures,
            "warnings": unit.warnings,
            "warnings_total": unit.warning_count,
            "error": error,
        }

    def finish(self, code: int, error: str | None) -> list[dict[str, Any]]:
        """Write every part's record; return them. Never raises: a log that cannot be
        written must not turn a good run into a failed one."""
        records = []
        for unit in self.units:
            unit.ended = unit.ended or time.time()
            unit_code = unit.exit_code if unit.exit_code is not None else code
            if unit.exit_code is not None:
                unit_error = unit.error
            else:  # the run's error belongs to the part it happened in
                unit_error = error if unit is self.current else None
            rec = self.record(unit, unit_code, unit_error)
            if _worth_storing(self.command, unit, rec):
                assert unit.repo is not None
                rec["stored_as"] = store(unit.repo, rec)
            folder = unit.repo.state.dir if unit.repo is not None else state_root()
            try:
                append(folder, rec)
            except OSError:
                pass
            records.append(rec)
        return records


def _worth_storing(command: str, unit: Unit, record: dict[str, Any]) -> bool:
    """A backup that ran: not one skipped (``--if-older-than``), nor one refused for its
    command line (exit 2), which leaves the store exactly as it was."""
    return (
        command == "backup"
        and unit.repo is not None
        and record["outcome"] != "skipped"
        and record["exit_code"] != EXIT_USAGE
    )


def append(folder: Path, record: dict[str, Any]) -> None:
    """Append one line to the local log, keeping about the newest ``MAX_LOG`` bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOG_NAME
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    if size > MAX_LOG:
        data = path.read_bytes()
        keep = data[-(MAX_LOG // 2) :]
        atomic_write(path, keep[keep.find(b"\n") + 1 :])


def read(folder: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The records of a local log, oldest first (the newest ``limit`` of them)."""
    try:
        lines = (folder / LOG_NAME).read_bytes().splitlines()
    except OSError:
        return []
    out: list[dict[str, Any]] = []
    for line in reversed(lines):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
        if limit is not None and len(out) >= limit:
            break
    return out[::-1]


def store_key(record: dict[str, Any]) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(record["start_ts"]))
    return f"{LOG_PREFIX}{stamp}-{record['run']}"


def store(repo: Repository, record: dict[str, Any]) -> str | None:
    """Write ``record`` into the store, encrypted; its key, or None if that failed."""
    key = store_key(record)
    try:
        data = repo.gpg.encrypt_bytes(json.dumps(record, sort_keys=True).encode())
        repo.backend.put(key, data, if_absent=True)
    except BlanketError:
        return None
    return key


def newest_in_store(repo: Repository) -> dict[str, Any] | None:
    """The newest backup record the store holds (checked like every object), if any: of
    the last three, the last started (a repository's runs never overlap: the lease), and
    of those started in the same second, whose keys sort by their random run ids, the
    last to end. A record that fails its checks is passed over."""
    try:
        keys = [info.key for info in repo.backend.list(LOG_PREFIX)]
    except BlanketError:
        return None
    best: dict[str, Any] | None = None
    best_second = ""
    for key in reversed(keys[-3:]):
        second = key[len(LOG_PREFIX) :].split("-", 1)[0]
        if best is not None and second != best_second:
            break
        try:
            rec = json.loads(repo.gpg.decrypt_bytes(repo.backend.get(key), key))
        except (BlanketError, ValueError):
            continue
        if not isinstance(rec, dict) or rec.get("repository") != repo.config.id:
            continue
        if best is None or rec.get("end_ts", 0) > best.get("end_ts", 0):
            best, best_second = rec, second
    return best
