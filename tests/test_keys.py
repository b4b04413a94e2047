"""Keys as people hold them: a signing key on the laptop, packs encrypted to recipients
whose secrets are elsewhere (a recovery key in a safe, a family member's key).

Real gpg throughout: a "vault" keyring makes the keys; the laptop keyring gets only the
signing secret and the recipients' public keys; the recovery keyring gets only the
recovery secret (not even the signing public key: the repository supplies it).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from keyutil import decrypts, gpg, kill_agent, make_tree, new_home
from test_manual_recovery import recover
from treeutil import assert_same_tree, snapshot

from blanket.crypto import generate_key


@dataclass(frozen=True)
class Keys:
    vault: str  # every secret
    laptop: str  # the signing secret, the recipients' public keys
    recovery: str  # the recovery secret alone
    sign: str
    recovery_fpr: str
    family: str


@pytest.fixture(scope="session")
def keys() -> Iterator[Keys]:
    vault, laptop, recovery = new_home("bkv"), new_home("bkl"), new_home("bkr")
    sign = generate_key(vault, "laptop signing key")
    rec = generate_key(vault, "recovery key")
    fam = generate_key(vault, "family key")
    gpg(laptop, "--import", data=gpg(vault, "--export-secret-keys", sign))
    gpg(laptop, "--import", data=gpg(vault, "--export", rec, fam))
    gpg(recovery, "--import", data=gpg(vault, "--export-secret-keys", rec))
    yield Keys(vault, laptop, recovery, sign, rec, fam)
    for home in (vault, laptop, recovery):
        kill_agent(home)
        shutil.rmtree(home, ignore_errors=True)


def store_objects(repo: Path, prefix: str) -> list[Path]:
    base = repo / prefix
    return sorted(p for p in base.rglob("*") if p.is_file()) if base.exists() else []


def init_separate(cli: Any, keys: Keys, repo: str, *extra: str) -> None:
    cli(
        "init", "--repo", repo, "--gnupghome", keys.laptop, "--sign-key", keys.sign,
        "--encrypt-to", keys.recovery_fpr, "--encrypt-to", keys.family, *extra, check=0,
    )  # fmt: skip


def test_write_only_laptop_backs_up_and_cannot_read_a_pack(
    cli: Any, keys: Keys, tmp_path: Path
) -> None:
    src, repo = tmp_path / "src", str(tmp_path / "repo")
    make_tree(src)
    lap = ["--gnupghome", keys.laptop]
    init_separate(cli, keys, repo)
    # interrupted after a pack or two, then resumed
    first = cli("backup", "--repo", repo, *lap, "--pack-size", "64K", "--max-bytes", "100K",
                str(src), check=0)  # fmt: skip
    assert "clock at" in first.out
    cli("backup", "--repo", repo, *lap, "--pack-size", "64K", str(src), check=0)
    (src / "d1" / "f1.bin").write_bytes(b"changed")
    (src / "d0" / "f0.bin").unlink()
    cli("backup", "--repo", repo, *lap, "--pack-size", "64K", str(src), check=0)
    for command in (("status",), ("layers",), ("verify",), ("ls",), ("gc", "--dry-run")):
        cli(*command, "--repo", repo, *lap, check=0)
    cli("gc", "--repo", repo, *lap, "--cap", "100M", check=0)

    data = store_objects(Path(repo), "data")
    assert len(data) >= 3
    for pack in data:  # not one pack opens with the laptop's keyring
        assert not decrypts(keys.laptop, pack), pack
        assert decrypts(keys.recovery, pack), pack
    # the indexes and run records are readable with the metadata key (the signing key's
    # encryption subkey, on the laptop: docs/decisions.md), and by the recovery key
    for meta in store_objects(Path(repo), "index") + store_objects(Path(repo), "log"):
        assert decrypts(keys.laptop, meta) and decrypts(keys.recovery, meta), meta

    # restore, cat, mount, deep verify and --keep-history refuse on the laptop: exit 12,
    # one line
    (tmp_path / "mnt").mkdir()
    for command in (
        ("restore", "--to", str(tmp_path / "no")),
        ("mount", str(tmp_path / "mnt")),
        ("restore", "--to", "-"),
        ("cat", "secret.txt"),
        ("verify", "--deep"),
        ("gc", "--keep-history", "--cap", "100M"),
    ):
        run = cli(*command, "--repo", repo, *lap)
        assert run.code == 12, (command, run)
        lines = [ln for ln in run.err.splitlines() if ln.strip()]
        assert len(lines) == 1 and "secret key of one of the repository's recipients" in lines[0]
        assert "swordfish" not in run.out
    assert not (tmp_path / "no").exists()
    assert not os.path.ismount(tmp_path / "mnt") and not list((tmp_path / "mnt").iterdir())

    # a second machine with the recovery key alone restores everything, exactly
    out = tmp_path / "out"
    env = {"BLANKET_STATE_DIR": str(tmp_path / "state-recovery")}
    cli("restore", "--repo", repo, "--gnupghome", keys.recovery, "--to", str(out), env=env,
        check=0)  # fmt: skip
    assert_same_tree(snapshot(src, with_root=False), snapshot(out, with_root=False))
    deep = cli("verify", "--deep", "--repo", repo, "--gnupghome", keys.recovery, env=env, check=0)
    assert "no problems" in deep.out


def test_write_only_laptop_expires_and_deletes_old_layers(
    cli: Any, keys: Keys, tmp_path: Path
) -> None:
    """gc and the backup pass that refreshes expiring layers read indexes only: on the
    laptop they mark, refresh and delete old layers without opening a pack."""
    src, repo = tmp_path / "src", str(tmp_path / "repo")
    src.mkdir()
    lap = ["--gnupghome", keys.laptop]
    init_separate(cli, keys, repo)
    for i in range(4):  # four layers, each adding a file of 300 KB
        (src / f"f{i}").write_bytes(os.urandom(300_000))
        cli("backup", "--repo", repo, *lap, str(src), check=0)
    marked = cli("gc", "--repo", repo, *lap, "--cap", "1M")  # too small: marks old layers
    assert "expiring" in marked.out, marked
    cli("backup", "--repo", repo, *lap, str(src), check=0)  # refreshes them from the disk
    before = len(store_objects(Path(repo), "data"))
    done = cli("gc", "--repo", repo, *lap, "--cap", "3M", check=0)
    assert "deleted layer(s) 0, 1, 2" in done.out, done
    assert len(store_objects(Path(repo), "data")) < before
    for pack in store_objects(Path(repo), "data"):
        assert not decrypts(keys.laptop, pack)
    cli("verify", "--repo", repo, *lap, check=0)
    out = tmp_path / "out"
    env = {"BLANKET_STATE_DIR": str(tmp_path / "state-recovery")}
    cli("restore", "--repo", repo, "--gnupghome", keys.recovery, "--to", str(out), env=env,
        check=0)  # fmt: skip
    assert_same_tree(snapshot(src, with_root=False), snapshot(out, with_root=False))


def test_no_metadata_key_means_nothing_on_the_store_opens_on_the_laptop(
    cli: Any, keys: Keys, tmp_path: Path
) -> None:
    src, repo = tmp_path / "src", str(tmp_path / "repo")
    make_tree(src, files=4)
    lap = ["--gnupghome", keys.laptop]
    init_separate(cli, keys, repo, "--metadata-key", "none")
    cli("backup", "--repo", repo, *lap, str(src), check=0)
    (src / "new.txt").write_bytes(b"new")
    cli("backup", "--repo", repo, *lap, str(src), check=0)  # from the local cache
    cli("verify", "--repo", repo, *lap, check=0)
    objects = [p for p in store_objects(Path(repo), "") if p.name != "config"]
    objects = [p for p in objects if not p.parts[-2].startswith("lock")]
    assert any(p.parent.name == "index" for p in objects)
    for obj in objects:
        if obj.parent.name in ("data", "index", "log"):
            assert not decrypts(keys.laptop, obj), obj
    # the cache lost: the laptop cannot read its indexes back, and says so
    shutil.rmtree(tmp_path / "state")
    run = cli("backup", "--repo", repo, *lap, str(src))
    assert run.code == 12, run
    assert "index cache lacks it" in run.err and len(run.err.strip().splitlines()) == 1
    out = tmp_path / "out"
    env = {"BLANKET_STATE_DIR": str(tmp_path / "state-recovery")}
    cli("restore", "--repo", repo, "--gnupghome", keys.recovery, "--to", str(out), env=env,
        check=0)  # fmt: skip
    assert_same_tree(snapshot(src, with_root=False), snapshot(out, with_root=False))


def test_after_cache_loss_the_metadata_key_reads_the_indexes_back(
    cli: Any, keys: Keys, tmp_path: Path
) -> None:
    src, repo = tmp_path / "src", str(tmp_path / "repo")
    make_tree(src, files=6)
    lap = ["--gnupghome", keys.laptop]
    init_separate(cli, keys, repo)
    cli("backup", "--repo", repo, *lap, str(src), check=0)
    before = len(store_objects(Path(repo), "data"))
    shutil.rmtree(tmp_path / "state")
    again = cli("backup", "--repo", repo, *lap, str(src), check=0)
    assert "0 file(s)" in again.out, again.out
    assert len(store_objects(Path(repo), "data")) <= before + 1  # nothing stored twice


def test_config_file_profile_names_the_keys(cli: Any, keys: Keys, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    conf = tmp_path / "config.toml"
    conf.write_text(
        f'default = "laptop"\n[defaults]\nkey = "{keys.sign}"\n'
        f'[profiles.laptop]\nrepository = "{repo}"\n'
        f'sign_key = "{keys.sign}"\n'
        f'encrypt_to = ["{keys.recovery_fpr}", "{keys.family}"]\nmetadata_key = "none"\n'
    )
    run = cli("init", "--config", str(conf), "--json", env={"GNUPGHOME": keys.laptop}, check=0)
    assert keys.family in run.out and '"metadata_key": []' in run.out


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--sign-key", "SIGN"], 2, "--encrypt-to"),
        (["--encrypt-to", "REC"], 2, "--sign-key"),
        (["--key", "SIGN", "--encrypt-to", "REC"], 2, "--sign-key"),
        (["--sign-key", "REC", "--encrypt-to", "FAM"], 12, "no secret key"),
        (["--sign-key", "SIGN", "--encrypt-to", "0123456789ABCDEF"], 12, "import its public"),
    ],
)
def test_init_refuses_keys_it_cannot_use(
    cli: Any, keys: Keys, tmp_path: Path, args: list[str], code: int, words: str
) -> None:
    names = {"SIGN": keys.sign, "REC": keys.recovery_fpr, "FAM": keys.family}
    run = cli("init", "--repo", str(tmp_path / "r"), "--gnupghome", keys.laptop,
              *[names.get(a, a) for a in args])  # fmt: skip
    assert run.code == code, run
    assert len(run.err.strip().splitlines()) == 1 and words in run.err
    assert not (tmp_path / "r" / "config").exists()


def test_one_key_repositories_work_as_before(cli: Any, keyring: Any, tmp_path: Path) -> None:
    src, repo = tmp_path / "src", str(tmp_path / "repo")
    make_tree(src, files=3)
    cli("init", "--repo", repo, "--key", keyring.fingerprint, check=0)
    config = (Path(repo) / "config").read_bytes()
    plain = gpg(keyring.home, "--decrypt", str(Path(repo) / "config"))
    assert plain.startswith(b"blanket-repository 1\n") and config[:1] != b"b"
    cli("backup", "--repo", repo, str(src), check=0)
    cli("restore", "--repo", repo, "--to", str(tmp_path / "out"), check=0)
    assert_same_tree(snapshot(src, with_root=False), snapshot(tmp_path / "out", with_root=False))


@pytest.fixture(scope="module")
def rotated(keys: Keys) -> Iterator[tuple[str, str, str]]:
    """A second signing key and a new recipient made in the vault; the laptop gets the
    new signing secret and the recipient's public key. (new sign, new recipient, mallory)"""
    sign2 = generate_key(keys.vault, "new laptop signing key")
    admin = generate_key(keys.vault, "administrator")
    mallory = generate_key(keys.vault, "mallory")
    gpg(keys.laptop, "--import", data=gpg(keys.vault, "--export-secret-keys", sign2))
    gpg(keys.laptop, "--import", data=gpg(keys.vault, "--export", admin))
    yield sign2, admin, mallory


def signer_of(home: str, path: Path) -> str:
    proc = subprocess.run(
        ["gpg", "--batch", "--status-fd", "1", "--homedir", home, "--decrypt", str(path)],
        capture_output=True,
        check=False,
    )
    valid = [ln for ln in proc.stdout.decode().splitlines() if "VALIDSIG" in ln]
    return valid[0].split()[-1] if valid else ""


def test_rotation_takes_effect_from_the_next_commit_and_forgeries_are_refused(
    cli: Any, keys: Keys, rotated: tuple[str, str, str], tmp_path: Path
) -> None:
    sign2, admin, mallory = rotated
    src, repo = tmp_path / "src", str(tmp_path / "repo")
    make_tree(src, files=6)
    lap = ["--gnupghome", keys.laptop]
    init_separate(cli, keys, repo)
    cli("backup", "--repo", repo, *lap, str(src), check=0)
    # the laptop is replaced: a new signing key, and the family member hands over to an
    # administrator (the recovery key stays)
    run = cli("keys", "rotate", "--repo", repo, *lap, "--sign-key", sign2,
              "--encrypt-to", keys.recovery_fpr, "--encrypt-to", admin, check=0)  # fmt: skip
    assert "from commit 1 on" in run.out
    (src / "after.txt").write_bytes(b"written after the rotation")
    (src / "d1" / "f1.bin").write_bytes(b"edited after the rotation")
    cli("backup", "--repo", repo, *lap, str(src), check=0)

    indexes = store_objects(Path(repo), "index")
    assert [signer_of(keys.vault, p) for p in indexes] == [keys.sign] + [sign2] * (len(indexes) - 1)
    packs = store_objects(Path(repo), "data")
    fam = new_home("bkf")
    try:  # the family key reads the packs written before the rotation, not after
        gpg(fam, "--import", data=gpg(keys.vault, "--export-secret-keys", keys.family))
        assert [decrypts(fam, p) for p in packs] == [True] + [False] * (len(packs) - 1)
    finally:
        kill_agent(fam)
        shutil.rmtree(fam, ignore_errors=True)

    # by hand, with nothing but gpg and the recovery key (docs/format.md's script)
    bare = new_home("bkh")
    try:
        gpg(bare, "--import", data=gpg(keys.vault, "--export-secret-keys", keys.recovery_fpr))
        tree, proc = recover(tmp_path / "by-hand", repo, bare)
        assert proc.returncode == 0, proc.stderr
        assert files_of(tree) == files_of(src)
        walk = Path(__file__).resolve().parent.parent / "examples" / "recover-by-hand.sh"
        for path in ("after.txt", "d1/f1.bin", "secret.txt"):  # after, edited after, before
            one = tmp_path / "one-file"
            done = subprocess.run(
                ["bash", str(walk), repo, path, str(one)],
                capture_output=True,
                text=True,
                env={"PATH": os.environ["PATH"], "GNUPGHOME": bare, "HOME": str(tmp_path)},
                check=False,
            )
            assert done.returncode == 0, done.stderr
            assert one.read_bytes() == (src / path).read_bytes()
    finally:
        kill_agent(bare)
        shutil.rmtree(bare, ignore_errors=True)

    shown = cli("keys", "--repo", repo, *lap, "--json", check=0).out
    assert keys.sign in shown and sign2 in shown and admin in shown

    # the recovery key alone, on a new machine, accepts both keys in order
    env = {"BLANKET_STATE_DIR": str(tmp_path / "state-recovery")}
    rec = ["--gnupghome", keys.recovery]
    out = tmp_path / "out"
    cli("restore", "--repo", repo, *rec, "--to", str(out), env=env, check=0)
    assert_same_tree(snapshot(src, with_root=False), snapshot(out, with_root=False))
    cli("verify", "--deep", "--repo", repo, *rec, env=env, check=0)
    listing = cli("keys", "--repo", repo, *rec, env=env, check=0).out
    assert "content" in listing

    # a rotation signed by a key not in force (mallory's) is refused, and so is one that
    # puts mallory's key in force but was signed with the old, rotated-out key
    config_sha = hashlib.sha256((Path(repo) / "config").read_bytes()).hexdigest()
    real = (Path(repo) / "keys" / "000000000001").read_bytes()
    second_sha = hashlib.sha256(real).hexdigest()
    forged = (
        f"blanket-keys 1\nrepository: {_repo_id(repo, keys)}\nnumber: 2\nfrom-commit: 9\n"
        f"prev-sha256: {second_sha}\nsign-key: {mallory}\nencrypt-to: {mallory}\n"
        f"metadata-key: none\ncreated: 1\n\n"
    ).encode()
    for signer in (mallory, keys.sign):
        blob = gpg(keys.vault, "--sign", "--local-user", signer, data=forged)
        (Path(repo) / "keys" / "000000000002").write_bytes(blob)
        for home, env_ in ((keys.laptop, {}), (keys.recovery, env)):
            run = cli("restore", "--repo", repo, "--gnupghome", home, "--to",
                      str(tmp_path / "x"), env=env_)  # fmt: skip
            assert run.code == 1 and "forged" in run.err, run
            assert len(run.err.strip().splitlines()) == 1
    (Path(repo) / "keys" / "000000000002").unlink()
    # a whole config replaced by one of mallory's making, under the same id: a machine
    # that has seen the repository refuses it
    good_config = (Path(repo) / "config").read_bytes()
    fake = (
        f"blanket-repository 2\nid: {_repo_id(repo, keys)}\nmode: pubkey\n"
        f"sign-key: {mallory}\nencrypt-to: {mallory}\nmetadata-key: none\ncreated: 1\n\n"
    ).encode() + gpg(keys.vault, "--export", "--armor", mallory)
    (Path(repo) / "config").write_bytes(gpg(keys.vault, "--sign", "--local-user", mallory,
                                            data=fake))  # fmt: skip
    run = cli("ls", "--repo", repo, *rec, env=env)
    assert run.code == 1 and "forged" in run.err and len(run.err.strip().splitlines()) == 1
    (Path(repo) / "config").write_bytes(good_config)
    # dropping the real rotation makes every later commit count as forged on a machine
    # that checks the indexes again
    (Path(repo) / "keys" / "000000000001").unlink()
    env2 = {"BLANKET_STATE_DIR": str(tmp_path / "state-other")}
    run = cli("verify", "--repo", repo, *rec, env=env2)
    assert run.code != 0 and "not the repository's key" in run.out + run.err
    assert config_sha  # the config itself was never touched
    (Path(repo) / "keys" / "000000000001").write_bytes(real)
    cli("verify", "--repo", repo, *rec, env=env2, check=0)


def _repo_id(repo: str, keys: Keys) -> str:
    text = gpg(keys.laptop, "--decrypt", str(Path(repo) / "config"), check=False).decode()
    return next(ln.split(": ")[1] for ln in text.splitlines() if ln.startswith("id: "))


def files_of(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_a_replica_gets_the_rotations_before_the_commits_they_sign(
    cli: Any, keys: Keys, rotated: tuple[str, str, str], tmp_path: Path
) -> None:
    sign2, admin, _ = rotated
    src, repo, replica = tmp_path / "src", str(tmp_path / "repo"), str(tmp_path / "replica")
    make_tree(src, files=4)
    lap = ["--gnupghome", keys.laptop]
    init_separate(cli, keys, repo)
    cli("backup", "--repo", repo, *lap, str(src), check=0)
    cli("keys", "rotate", "--repo", repo, *lap, "--sign-key", sign2, check=0)
    (src / "later.txt").write_bytes(b"signed by the new key")
    cli("backup", "--repo", repo, *lap, str(src), check=0)
    cli("sync", "--from", repo, "--to", replica, *lap, check=0)
    assert (Path(replica) / "keys" / "000000000001").read_bytes() == (
        Path(repo) / "keys" / "000000000001"
    ).read_bytes()
    out = tmp_path / "out"
    env = {"BLANKET_STATE_DIR": str(tmp_path / "state-recovery")}
    cli("restore", "--repo", replica, "--gnupghome", keys.recovery, "--to", str(out), env=env,
        check=0)  # fmt: skip
    assert_same_tree(snapshot(src, with_root=False), snapshot(out, with_root=False))


def test_write_only_backup_killed_and_stopped_then_resumed(
    keys: Keys, tmp_path: Path, cli: Any
) -> None:
    """SIGKILL, then SIGTERM, in the middle of a laptop's backup; it resumes to the end,
    and the recovery key restores the exact tree."""
    src, repo = tmp_path / "src", str(tmp_path / "repo")
    for i in range(60):
        (src / f"d{i % 4}").mkdir(parents=True, exist_ok=True)
        (src / f"d{i % 4}" / f"f{i:02d}").write_bytes(os.urandom(100_000))
    init_separate(cli, keys, repo)
    env = {**os.environ, "GNUPGHOME": keys.laptop, "BLANKET_STATE_DIR": str(tmp_path / "state")}
    index = Path(repo) / "index"
    for sig in (signal.SIGKILL, signal.SIGTERM):
        before = commits(index)
        proc = subprocess.Popen(
            [sys.executable, "-m", "blanket", "backup", "--repo", repo, "--pack-size", "256K",
             "--limit-upload", "1M", str(src)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for _ in range(3000):  # bounded looks (about 60 s), not a clock
            if commits(index) >= before + 2 or proc.poll() is not None:
                break
            time.sleep(0.02)
        else:
            raise AssertionError("the backup committed too little to be interrupted")
        assert proc.poll() is None, "the backup ended before it could be interrupted"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == (-9 if sig == signal.SIGKILL else 0), err
    done = cli("backup", "--repo", repo, "--gnupghome", keys.laptop, str(src), check=0)
    assert "pass complete" in done.out
    for pack in store_objects(Path(repo), "data"):
        assert not decrypts(keys.laptop, pack)
    out = tmp_path / "out"
    env2 = {"BLANKET_STATE_DIR": str(tmp_path / "state-recovery")}
    cli("restore", "--repo", repo, "--gnupghome", keys.recovery, "--to", str(out), env=env2,
        check=0)  # fmt: skip
    assert_same_tree(snapshot(src, with_root=False), snapshot(out, with_root=False))


def commits(index: Path) -> int:
    return len(list(index.iterdir())) if index.exists() else 0
