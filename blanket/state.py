"""The client's local state for one repository: a cache, never the only copy of anything.

Kept under ``$BLANKET_STATE_DIR`` (default ``$XDG_STATE_HOME/blanket``, i.e.
``~/.local/state/blanket``), one folder per repository id:

* ``state.json``: the newest commit this machine saw (``last_seq``, ``last_index_sha256``,
  to refuse a store that rolled back) and the scan position of the current pass;
* ``index/NNNNNNNNNNNN``: verified plaintext indexes, so replay never downloads them twice;
* ``spool/``: packs being built.

Every file is replaced atomically (temp file, fsync, rename). If the folder is lost it is
rebuilt from the store's indexes alone.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path


def state_root() -> Path:
    explicit = os.environ.get("BLANKET_STATE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(xdg) / "blanket"


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@dataclass
class Progress:
    """What ``state.json`` records."""

    last_seq: int = -1
    last_index_sha256: str = ""
    scan_layer: int = -1  # the layer whose pass ``scan_pointer`` belongs to
    scan_pointer: str = ""  # escaped path the pass has scanned up to ("" = none)
    verify_cursor: int = 0  # where the next sampled deep verify starts (commit number)


class LocalState:
    """The state folder of one repository."""

    def __init__(self, repository_id: str, root: Path | None = None) -> None:
        self.dir = (root or state_root()) / repository_id
        self.index_dir = self.dir / "index"
        self.spool_dir = self.dir / "spool"
        for d in (self.index_dir, self.spool_dir):
            d.mkdir(parents=True, exist_ok=True)

    def load(self) -> Progress:
        try:
            raw = json.loads((self.dir / "state.json").read_text())
            return Progress(**{k: raw[k] for k in asdict(Progress()) if k in raw})
        except (FileNotFoundError, ValueError, TypeError):
            return Progress()

    def save(self, progress: Progress) -> None:
        atomic_write(self.dir / "state.json", json.dumps(asdict(progress)).encode())

    def save_links(self, layer: int, links: dict[tuple[int, int], str]) -> None:
        """The hard-link groups met so far in this layer's pass ((dev, ino) -> escaped
        first path), so a run that resumes the pass links later names to them."""
        rows = [[dev, ino, path] for (dev, ino), path in links.items()]
        atomic_write(self.dir / "links.json", json.dumps({"layer": layer, "links": rows}).encode())

    def load_links(self, layer: int) -> dict[tuple[int, int], str]:
        try:
            raw = json.loads((self.dir / "links.json").read_text())
            if raw["layer"] != layer:
                return {}
            return {(int(d), int(i)): str(p) for d, i, p in raw["links"]}
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return {}

    def index_path(self, seq: int) -> Path:
        return self.index_dir / f"{seq:012d}"

    def cached_seqs(self) -> list[int]:
        return sorted(int(p.name) for p in self.index_dir.iterdir() if p.name.isdigit())

    def store_index(self, seq: int, plaintext: bytes, cipher_sha256: str = "") -> None:
        """Cache a verified index; ``cipher_sha256`` is the hash of the object on the
        store, so a later check can tell an unchanged object without decrypting it."""
        atomic_write(self.index_path(seq), plaintext)
        sidecar = self.index_dir / f"{seq:012d}.cipher"
        if cipher_sha256:
            atomic_write(sidecar, cipher_sha256.encode())
        else:
            sidecar.unlink(missing_ok=True)

    def cipher_sha(self, seq: int) -> str:
        try:
            return (self.index_dir / f"{seq:012d}.cipher").read_text().strip()
        except FileNotFoundError:
            return ""

    def drop_index(self, seq: int) -> None:
        try:
            self.index_path(seq).unlink()
        except FileNotFoundError:
            pass

    def clean_spool(self) -> None:
        for p in self.spool_dir.iterdir():
            p.unlink(missing_ok=True)
