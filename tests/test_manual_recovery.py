"""Invariant 5: the latest state comes back with gpg, zstd and tar alone.

blanket writes the repository; everything after that uses no blanket code: the recovery
script is the fenced ```sh recover block of docs/format.md (so the document is what is
tested), run with bash, and the index checks parse gpg's output by plain splitting, as
the document describes.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from treeutil import make_awkward_tree

from blanket.backends import open_backend
from blanket.backup import BackupOptions, run_backup
from blanket.crypto import SYMMETRIC, KeySpec
from blanket.repo import Repository, init_repository

DOC = Path(__file__).resolve().parent.parent / "docs" / "format.md"
KiB = 1024
NON_UTF8 = b"caf\xe9.txt"
ODD_NAME = b"odd \\ = , name\nwith newline"

# --- working without blanket -----------------------------------------------------------


def recovery_script() -> str:
    text = DOC.read_text(encoding="utf-8")
    found = re.findall(r"^```sh recover\n(.*?)^```$", text, re.S | re.M)
    assert len(found) == 1, "docs/format.md must hold exactly one ```sh recover block"
    return str(found[0])


def recover(
    tmp_path: Path, store: str, gnupghome: str, *, passphrase_file: Path | None = None
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """Run the documented script on ``store``; return the recovered tree and the run."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    script = tmp_path / "recover.sh"
    script.write_text(recovery_script(), encoding="utf-8")
    out = tmp_path / "recovered"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "GNUPGHOME": gnupghome}
    if passphrase_file is not None:
        env["PASSPHRASE_FILE"] = str(passphrase_file)
    proc = subprocess.run(
        ["bash", str(script), store, str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    return out / "tree", proc


def gpg_decrypt(gnupghome: str, path: Path) -> bytes:
    proc = subprocess.run(
        ["gpg", "--homedir", gnupghome, "--batch", "--quiet", "--decrypt", str(path)],
        capture_output=True,
        check=True,
        timeout=60,
    )
    return proc.stdout


def pack_member(gnupghome: str, path: Path, member: str) -> bytes:
    """One member of a pack, by ``gpg --decrypt | zstd -d | tar -xO``."""
    script = 'gpg --homedir "$1" --batch --quiet --decrypt "$2" | zstd -d -q | tar -xO "$3"'
    proc = subprocess.run(
        ["bash", "-o", "pipefail", "-c", script, "-", gnupghome, str(path), member],
        capture_output=True,
        check=True,
        timeout=60,
    )
    return proc.stdout


def check_frames(
    gnupghome: str, data: Path, table: str, entries: list[tuple[str, bytes, dict[str, str]]]
) -> None:
    """The ``frames:`` field as docs/format.md describes it: ``FIRST:SIZE:SHA256`` items
    that cut the zstd stream inside the pack into pieces, each one a zstd stream of its
    own whose tar starts with the member of entry number FIRST (when it has one)."""
    stream = gpg_decrypt(gnupghome, data)
    pos = 0
    for item in table.split(","):
        first, size, sha = item.split(":")
        piece = stream[pos : pos + int(size)]
        pos += int(size)
        assert hashlib.sha256(piece).hexdigest() == sha
        tar = subprocess.run(
            ["zstd", "-d", "-q"], input=piece, capture_output=True, check=True
        ).stdout
        kind, path, _ = entries[int(first)] if int(first) < len(entries) else ("", b"", {})
        if kind in ("f", "d", "l", "h"):
            want = b"tree" if path == b"." else b"tree/" + path
            assert tar[:100].rstrip(b"\0/") == want[:100] or tar[156:157] == b"x", (want, tar[:100])
    assert pos == len(stream)


def unescape(text: str) -> bytes:
    """The documented rule: every ``\\xHH`` is the byte HH, everything else itself."""
    return re.sub(
        rb"\\x([0-9a-f]{2})", lambda m: bytes([int(m.group(1), 16)]), text.encode("ascii")
    )


# --- describing trees ------------------------------------------------------------------


def describe(root: Path) -> dict[bytes, tuple[object, ...]]:
    """Every path below ``root``: its kind and content (file bytes, link target, device
    numbers). Times, owners and modes are left out: tar alone does not promise them."""
    top = os.fsencode(root)
    found: dict[bytes, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, top)
            st = os.lstat(full)
            if stat.S_ISDIR(st.st_mode):
                found[rel] = ("dir",)
            elif stat.S_ISLNK(st.st_mode):
                found[rel] = ("symlink", os.readlink(full))
            elif stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    found[rel] = ("file", hashlib.sha256(f.read()).hexdigest(), st.st_size)
            elif stat.S_ISFIFO(st.st_mode):
                found[rel] = ("fifo",)
            else:
                found[rel] = ("device", os.major(st.st_rdev), os.minor(st.st_rdev))
    return found


def hard_links(root: Path) -> set[frozenset[bytes]]:
    top = os.fsencode(root)
    groups: dict[int, set[bytes]] = {}
    for dirpath, _dirs, filenames in os.walk(top):
        for name in filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                groups.setdefault(st.st_ino, set()).add(os.path.relpath(full, top))
    return {frozenset(g) for g in groups.values()}


def assert_same(expected_root: Path, actual_root: Path) -> None:
    expected, actual = describe(expected_root), describe(actual_root)
    assert sorted(actual) == sorted(expected)
    wrong = {p: (expected[p], actual[p]) for p in expected if expected[p] != actual[p]}
    assert wrong == {}
    assert hard_links(actual_root) == hard_links(expected_root)


# --- the trees -------------------------------------------------------------------------


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def make_tree(src: Path) -> None:
    raw = os.fsencode(src)
    write(src / "docs" / "2024" / "report.txt", b"quarterly report\n")
    write(src / "docs" / "2024" / "notes" / "deep.txt", b"deep down\n")
    write(src / "docs" / "readme", b"read me\n")
    write(src / "with space.txt", b"a name with a space\n")
    write(Path(os.fsdecode(raw + b"/" + NON_UTF8)), b"latin-1 name\n")
    write(Path(os.fsdecode(raw + b"/" + ODD_NAME)), b"backslash, equals, comma, newline\n")
    os.symlink("docs/readme", src / "link")
    os.symlink("nowhere/at/all", src / "dangling")
    write(src / "hard" / "one", b"one file, two names\n")
    os.link(src / "hard" / "one", src / "hard" / "two")
    write(src / "gone" / "deep" / "x.txt", b"x\n")
    write(src / "gone" / "y.txt", b"y\n")
    write(src / "del.txt", b"to be deleted\n")
    write(src / "d2f" / "child" / "c.txt", b"a directory that becomes a file\n")
    write(src / "f2d", b"a file that becomes a directory\n")
    (src / "empty").mkdir()
    # larger than a pack: stored in parts; "big.bin.bak" sorts between "big.bin" and the
    # names of its part members
    write(src / "big.bin", os.urandom(200 * KiB))
    write(src / "big.bin.bak", b"a backup copy\n")
    with open(src / "sparse.img", "wb") as f:
        f.truncate(2 << 20)
        f.seek(1 << 20)
        f.write(os.urandom(4 * KiB))


def modify_tree(src: Path) -> None:
    write(src / "docs" / "readme", b"read me, changed and longer\n")
    (src / "del.txt").unlink()
    shutil.rmtree(src / "gone")
    write(src / "docs" / "2024" / "new.txt", b"added later\n")
    shutil.rmtree(src / "d2f")
    write(src / "d2f", b"now a file\n")
    (src / "f2d").unlink()
    write(src / "f2d" / "inside.txt", b"now a directory\n")
    write(src / "big.bin", os.urandom(150 * KiB))
    os.link(src / "hard" / "one", src / "hard" / "three")


SMALL_PACKS = BackupOptions(pack_size=64 * KiB, pack_entries=5)


def backup(repo: Repository, src: Path, opts: BackupOptions = SMALL_PACKS) -> None:
    result = run_backup(repo, str(src), opts)
    assert result.warnings == []
    assert result.complete


def leave_litter(store: Path) -> None:
    """What a crashed run leaves: data objects no index names, a half-written upload."""
    (store / "data" / "000000000000-ffffffffffffffff").write_bytes(b"not even gpg")
    (store / "data" / "999999999999-0123456789abcdef").write_bytes(b"uncommitted")
    (store / "index" / ".tmp-0123").write_bytes(b"partial upload")


# --- tests -----------------------------------------------------------------------------


def test_latest_state_is_recovered_with_gpg_zstd_and_tar(
    repo: Repository, repo_url: str, keyring: Any, tmp_path: Path
) -> None:
    home = keyring.home
    src = tmp_path / "src"
    make_tree(src)
    backup(repo, src)
    modify_tree(src)
    backup(repo, src)
    indexes = sorted(os.listdir(Path(repo_url) / "index"))
    assert len(indexes) > 4  # several packs per layer, split files across packs
    leave_litter(Path(repo_url))

    tree, proc = recover(tmp_path, repo_url, home)

    assert proc.returncode == 0, proc.stderr
    assert f"{len(indexes)} commits replayed" in proc.stderr
    assert_same(src, tree)


def test_passphrase_repository_is_recovered_by_hand(keyring: Any, tmp_path: Path) -> None:
    home = keyring.home
    url = str(tmp_path / "repo")
    init_repository(open_backend(url), home, KeySpec(SYMMETRIC, "", "correct horse"), now=1)
    repo = Repository.open(open_backend(url), home, "correct horse")
    src = tmp_path / "src"
    make_tree(src)
    backup(repo, src)
    modify_tree(src)
    backup(repo, src)
    pw = tmp_path / "passphrase"
    pw.write_text("correct horse\n")

    tree, proc = recover(tmp_path, url, home, passphrase_file=pw)

    assert proc.returncode == 0, proc.stderr
    assert_same(src, tree)


@pytest.mark.skipif(os.geteuid() != 0, reason="the awkward tree needs root (devices, owners)")
def test_awkward_tree_is_recovered_by_hand(
    repo: Repository, repo_url: str, keyring: Any, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    make_awkward_tree(src)
    backup(repo, src, BackupOptions(pack_size=1 << 20))
    tree, proc = recover(tmp_path, repo_url, keyring.home)
    assert proc.returncode == 0, proc.stderr
    assert_same(src, tree)


def test_recovery_refuses_a_damaged_pack_and_a_foreign_signature(
    repo: Repository, repo_url: str, keyring: Any, tmp_path: Path
) -> None:
    home, other = keyring.home, keyring.other
    src = tmp_path / "src"
    write(src / "a.txt", b"a\n")
    backup(repo, src)
    write(src / "b.txt", b"b\n")
    backup(repo, src)
    store = Path(repo_url)

    damaged = tmp_path / "damaged"
    shutil.copytree(store, damaged)
    data = sorted((damaged / "data").iterdir())[-1]
    blob = bytearray(data.read_bytes())
    blob[-1] ^= 1
    data.write_bytes(bytes(blob))
    _, proc = recover(tmp_path / "r1", str(damaged), home)
    assert proc.returncode == 1
    assert "is damaged" in proc.stderr

    forged = tmp_path / "forged"
    shutil.copytree(store, forged)
    index = forged / "index" / "000000000001"
    plain = tmp_path / "plain"
    plain.write_bytes(gpg_decrypt(home, index))
    fpr = keyring.fingerprint
    subprocess.run(
        ["gpg", "--homedir", home, "--batch", "--yes", "--trust-model", "always"]
        + ["--recipient", fpr, "--local-user", other, "--encrypt", "--sign"]
        + ["--output", str(index), str(plain)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    _, proc = recover(tmp_path / "r2", str(forged), home)
    assert proc.returncode == 1
    assert "index/000000000001 is not signed by the repository key" in proc.stderr


HEADER_FIELDS = [
    "repository",
    "seq",
    "layer",
    "layer-pack",
    "layer-kind",
    "clock-from",
    "clock-to",
    "layer-complete",
    "created",
    "source-host",
    "source-path",
    "entries",
    "prev-index-sha256",
    "expire-below",
    "data-key",
    "data-size",
    "data-sha256",
    "frames",
]
COMMON = {"mode", "uid", "gid", "mtime", "ctime", "ino", "since"}
REQUIRED = {
    "f": COMMON | {"size", "sha256"},
    "d": COMMON,
    "l": COMMON | {"target"},
    "h": COMMON | {"size", "sha256", "target"},
    "x": {"since"},
}


def parse_index(text: str) -> tuple[dict[str, str], list[tuple[str, bytes, dict[str, str]]]]:
    """An index split the way docs/format.md says, with nothing but str methods."""
    head, blank, body = text.partition("\n\n")
    assert blank
    lines = head.split("\n")
    assert lines[0] == "blanket-index 1"
    header = dict(line.split(": ", 1) for line in lines[1:])
    entries = []
    for line in body.splitlines():
        kind, path, *rest = line.split(" ")
        fields = dict(item.split("=", 1) for item in rest)
        assert len(fields) == len(rest)
        entries.append((kind, unescape(path), fields))
    return header, entries


def test_index_is_readable_text_that_splits_as_documented(
    repo: Repository, repo_url: str, keyring: Any, tmp_path: Path
) -> None:
    home = keyring.home
    src = tmp_path / "src"
    raw = os.fsencode(src)
    write(src / "dir" / "with space.txt", b"space\n")
    write(Path(os.fsdecode(raw + b"/" + NON_UTF8)), b"latin-1\n")
    write(Path(os.fsdecode(raw + b"/" + ODD_NAME)), b"odd\n")
    os.symlink(b"dir/with space.txt", raw + b"/link")
    write(src / "hard1", b"hard\n")
    os.link(src / "hard1", src / "hard2")
    walked = {
        os.path.relpath(os.path.join(d, n), raw) for d, ds, fs in os.walk(raw) for n in ds + fs
    }
    backup(repo, src, BackupOptions())
    (src / "hard2").unlink()
    shutil.rmtree(src / "dir")
    backup(repo, src, BackupOptions())

    store = Path(repo_url)
    config = gpg_decrypt(home, store / "config").decode("ascii")
    assert config.splitlines()[0] == "blanket-repository 1"
    repo_id = dict(line.split(": ", 1) for line in config.splitlines()[1:])["id"]

    prev = "none"
    parsed = []
    for n, name in enumerate(sorted(os.listdir(store / "index"))):
        assert name == f"{n:012d}"
        plain = gpg_decrypt(home, store / "index" / name)
        text = plain.decode("ascii")  # plain ASCII, whatever the names hold
        assert text.split("\n", 1)[0] == "blanket-index 1"
        header, entries = parse_index(text)
        assert list(header) == HEADER_FIELDS
        assert header["repository"] == repo_id
        assert header["seq"] == str(n)
        assert header["prev-index-sha256"] == prev
        assert int(header["entries"]) == len(entries)
        data = store / header["data-key"]
        assert data.stat().st_size == int(header["data-size"])
        assert hashlib.sha256(data.read_bytes()).hexdigest() == header["data-sha256"]
        assert header["data-key"] == f"data/{n:012d}-{header['data-sha256'][:16]}"
        # the pack's own copy is the same text without the data-* and prev-index lines
        inner = pack_member(home, data, "index.txt").decode("ascii")
        assert inner == re.sub(r"(data-(key|size|sha256)|prev-index-sha256|frames): .*\n", "", text)
        check_frames(home, data, header["frames"], entries)
        prev = hashlib.sha256(plain).hexdigest()
        parsed.append((text, header, entries))

    (text0, h0, first), (_, h1, second) = parsed
    assert (h0["layer"], h0["layer-kind"], h0["layer-complete"]) == ("0", "full", "yes")
    assert (h1["layer"], h1["layer-kind"], h1["layer-complete"]) == ("1", "incremental", "yes")
    assert h0["clock-from"] == "-"
    assert unescape(h0["source-path"]) == os.fsencode(os.path.realpath(src))

    for kind, path, fields in first + second:
        assert set(fields) >= REQUIRED[kind], (kind, path, fields)
        if kind == "x":
            assert set(fields) == {"since"}
    by_path = {path: (kind, fields) for kind, path, fields in first}
    assert set(by_path) == walked | {b"."}
    # clock order: compare with "/" read as NUL, that is component by component
    keys = [b"" if path == b"." else path.replace(b"/", b"\0") for _, path, _ in first]
    assert keys == sorted(keys)

    # escaping: every byte outside 0x21-0x7e, and \ = , themselves, become \xHH
    assert "\nf caf\\xe9.txt mode=" in text0
    odd = "odd\\x20\\x5c\\x20\\x3d\\x20\\x2c\\x20name\\x0awith\\x20newline"
    assert f"\nf {odd} mode=" in text0
    assert "\nf dir/with\\x20space.txt mode=" in text0

    kind, fields = by_path[NON_UTF8]
    assert kind == "f"
    assert fields["sha256"] == hashlib.sha256(b"latin-1\n").hexdigest()
    assert fields["size"] == "8"
    kind, fields = by_path[b"link"]
    assert (kind, unescape(fields["target"])) == ("l", b"dir/with space.txt")
    assert by_path[b"hard1"][0] == "f"
    kind, fields = by_path[b"hard2"]
    assert (kind, unescape(fields["target"]), fields["sha256"]) == ("h", b"hard1", "-")

    markers = {path for kind, path, _ in second if kind == "x"}
    assert markers == {b"dir", b"hard2"}  # one marker for the whole vanished directory


def test_a_repository_after_gc_is_recovered_by_hand(
    repo: Repository, repo_url: str, keyring: Any, tmp_path: Path
) -> None:
    """gc deleted layer 0 (refreshed into a later layer) and left a record: the script
    must accept the gap it declares and still rebuild the latest state."""
    from blanket.backends.local import LocalBackend
    from blanket.gc import run_gc

    def reopen() -> Repository:
        return Repository.open(LocalBackend(repo_url), keyring.home)

    src = tmp_path / "src"
    make_tree(src)
    backup(repo, src)  # layer 0
    modify_tree(src)
    backup(reopen(), src)  # layer 1
    run_gc(reopen(), cap=1)  # layer 0 expires
    backup(reopen(), src)  # layer 2 refreshes what is still current in layer 0
    result = run_gc(reopen(), cap=1)
    assert 0 in result.deleted_layers
    assert not (Path(repo_url) / "index" / f"{0:012d}").exists()

    tree, proc = recover(tmp_path, repo_url, keyring.home)
    assert proc.returncode == 0, proc.stderr
    assert_same(src, tree)
