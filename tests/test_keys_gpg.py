"""gpg as people run it: a passphrase-protected signing key served by gpg-agent (as from
cron or systemd, with a preset passphrase), missing, expired and revoked keys, and
signing and encryption subkeys of one primary key. Real gpg and gpg-agent."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from keyutil import decrypts, gpg, kill_agent, make_tree, new_home
from treeutil import assert_same_tree, snapshot

from blanket.crypto import generate_key

PASSPHRASE = "correct horse battery staple"


def fingerprints(home: str, name: str) -> list[str]:
    """The primary's fingerprint, then its subkeys', of key ``name``."""
    out = gpg(home, "--with-colons", "--fixed-list-mode", "--list-keys", name).decode()
    return [ln.split(":")[9] for ln in out.splitlines() if ln.startswith("fpr:")]


def preset(home: str, name: str) -> None:
    """What a systemd unit's ExecStartPre does: give gpg-agent the passphrase of every
    part of key ``name`` (gpg-preset-passphrase; the agent allows it in its config)."""
    tool = subprocess.run(
        ["gpgconf", "--list-dirs", "libexecdir"], capture_output=True, text=True, check=True
    ).stdout.strip()
    listing = gpg(home, "--with-colons", "--with-keygrip", "--list-secret-keys", name).decode()
    for grip in [ln.split(":")[9] for ln in listing.splitlines() if ln.startswith("grp:")]:
        subprocess.run(
            [f"{tool}/gpg-preset-passphrase", "--preset", grip],
            input=PASSPHRASE.encode(),
            env={"GNUPGHOME": home, "PATH": "/usr/bin:/bin"},
            check=True,
        )


@pytest.fixture(scope="module")
def agent_home() -> Iterator[tuple[str, str, str]]:
    """A keyring whose signing key has a passphrase, and a recovery key's public part;
    (home, signing fpr, recovery fpr)."""
    home, vault = new_home("bka"), new_home("bkb")
    (Path(home) / "gpg-agent.conf").write_text("allow-preset-passphrase\n")
    loop = ["--pinentry-mode", "loopback", "--passphrase", PASSPHRASE]
    gpg(home, *loop, "--quick-gen-key", "cron signer <cron@localhost>", "ed25519", "sign", "never")
    sign = fingerprints(home, "cron signer")[0]
    gpg(home, *loop, "--quick-add-key", sign, "cv25519", "encr", "never")
    rec = generate_key(vault, "recovery")
    gpg(home, "--import", data=gpg(vault, "--export", rec))
    gpg(home, "--import-ownertrust", data=f"{sign}:6:\n".encode())
    yield home, sign, vault
    for h in (home, vault):
        kill_agent(h)
        shutil.rmtree(h, ignore_errors=True)


def test_passphrase_key_through_gpg_agent_with_a_preset_passphrase(
    cli: Any, agent_home: tuple[str, str, str], tmp_path: Path
) -> None:
    home, sign, vault = agent_home
    rec = fingerprints(vault, "recovery")[0]
    src, repo = tmp_path / "src", str(tmp_path / "repo")
    make_tree(src, files=4)
    env = {"GNUPGHOME": home}
    subprocess.run(["gpgconf", "--homedir", home, "--reload", "gpg-agent"], check=True)
    # nothing cached: one clear line, exit 12, nothing written
    run = cli("init", "--repo", repo, "--sign-key", sign, "--encrypt-to", rec, env=env)
    assert run.code == 12, run
    assert len(run.err.strip().splitlines()) == 1 and "gpg-preset-passphrase" in run.err
    assert not (Path(repo) / "config").exists()
    preset(home, sign)
    cli("init", "--repo", repo, "--sign-key", sign, "--encrypt-to", rec, env=env, check=0)
    cli("backup", "--repo", repo, str(src), env=env, check=0)
    (src / "more.txt").write_bytes(b"more")
    # the agent forgets (a reboot): the next run says what to do, and stores nothing
    subprocess.run(["gpgconf", "--homedir", home, "--reload", "gpg-agent"], check=True)
    before = sorted(p.name for p in (Path(repo) / "index").iterdir())
    run = cli("backup", "--repo", repo, str(src), env=env)
    assert run.code == 12, run
    assert len(run.err.strip().splitlines()) == 1 and "gpg-preset-passphrase" in run.err
    assert sorted(p.name for p in (Path(repo) / "index").iterdir()) == before
    preset(home, sign)
    cli("backup", "--repo", repo, str(src), env=env, check=0)
    # reading the indexes back with the metadata key (the signing key's encryption
    # subkey, protected too) needs the passphrase as well, and says so
    subprocess.run(["gpgconf", "--homedir", home, "--reload", "gpg-agent"], check=True)
    fresh = {**env, "BLANKET_STATE_DIR": str(tmp_path / "fresh-state")}
    run = cli("ls", "--repo", repo, env=fresh)
    assert run.code == 12, run
    assert len(run.err.strip().splitlines()) == 1 and "gpg-agent has no passphrase" in run.err
    preset(home, sign)
    cli("ls", "--repo", repo, env=fresh, check=0)
    out = tmp_path / "out"
    cli("restore", "--repo", repo, "--to", str(out), env={"GNUPGHOME": vault}, check=0)
    assert_same_tree(snapshot(src, with_root=False), snapshot(out, with_root=False))


@pytest.fixture(scope="module")
def dead_keys() -> Iterator[tuple[str, str, str, str]]:
    """A keyring with an expired signing key, a good one and a recipient;
    (home, expired, good, recipient)."""
    home = new_home("bkd")
    gpg(home, "--passphrase", "", "--faked-system-time", "20200101T000000",
        "--quick-gen-key", "expired signer", "ed25519", "sign", "1d")  # fmt: skip
    expired = fingerprints(home, "expired signer")[0]
    good = generate_key(home, "good signer")
    rec = generate_key(home, "recipient")
    yield home, expired, good, rec
    kill_agent(home)
    shutil.rmtree(home, ignore_errors=True)


def revoke(made_in: str, home: str, fpr: str) -> None:
    """Import into ``home`` the revocation certificate gpg made with key ``fpr``."""
    cert = (Path(made_in) / "openpgp-revocs.d" / f"{fpr}.rev").read_text()
    gpg(home, "--import", data=cert.replace(":-----BEGIN", "-----BEGIN").encode())


def one_line(run: Any, code: int, *words: str) -> None:
    assert run.code == code, run
    lines = run.err.strip().splitlines()
    assert len(lines) == 1, run.err
    for word in words:
        assert word in lines[0], lines[0]
    assert "[GNUPG:]" not in run.err and "Traceback" not in run.err


def test_missing_expired_and_revoked_keys_give_one_line_and_exit_12(
    cli: Any, dead_keys: tuple[str, str, str, str], tmp_path: Path
) -> None:
    home, expired, good, rec = dead_keys
    env = {"GNUPGHOME": home}
    r = str(tmp_path / "r")
    one_line(cli("init", "--repo", r, "--sign-key", expired, "--encrypt-to", rec, env=env),
             12, "expired")  # fmt: skip
    one_line(cli("init", "--repo", r, "--key", "0123456789ABCDEF0123", env=env), 12, "no secret")
    one_line(cli("init", "--repo", r, "--sign-key", good, "--encrypt-to", expired, env=env),
             12, "expired")  # fmt: skip
    assert not (tmp_path / "r" / "config").exists()

    # a working repository whose keys are then revoked or go missing
    src, repo = tmp_path / "src", str(tmp_path / "repo")
    make_tree(src, files=3)
    own = new_home("bke")
    try:
        gpg(own, "--import", data=gpg(home, "--export-secret-keys", good, rec))
        env = {"GNUPGHOME": own}
        cli("init", "--repo", repo, "--sign-key", good, "--encrypt-to", rec, env=env, check=0)
        cli("backup", "--repo", repo, str(src), env=env, check=0)
        (src / "new").write_bytes(b"new")
        revoke(home, own, rec)
        one_line(cli("backup", "--repo", repo, str(src), env=env), 12, rec, "revoked")
        revoke(home, own, good)
        one_line(cli("backup", "--repo", repo, str(src), env=env), 12, good, "revoked")
        # what was signed before the revocation stays restorable
        out = tmp_path / "out"
        cli("restore", "--repo", repo, "--to", str(out), env=env, check=0)
        assert (out / "secret.txt").read_bytes().endswith(b"swordfish\n")
        assert not (out / "new").exists()
        gpg(own, "--yes", "--delete-secret-keys", good)
        one_line(cli("backup", "--repo", repo, str(src), env=env), 12, "no secret key")
    finally:
        kill_agent(own)
        shutil.rmtree(own, ignore_errors=True)


def test_signing_and_encryption_subkeys_of_one_primary_key(cli: Any, tmp_path: Path) -> None:
    """One primary key (certify only) with a signing and an encryption subkey: the laptop
    holds the signing subkey's secret alone; the safe holds the whole key."""
    vault, laptop = new_home("bks"), new_home("bkt")
    try:
        gpg(vault, "--passphrase", "", "--quick-gen-key", "one key", "ed25519", "cert", "never")
        primary = fingerprints(vault, "one key")[0]
        gpg(vault, "--passphrase", "", "--quick-add-key", primary, "ed25519", "sign", "never")
        gpg(vault, "--passphrase", "", "--quick-add-key", primary, "cv25519", "encr", "never")
        _, sign_sub, encr_sub = fingerprints(vault, "one key")
        gpg(laptop, "--import", data=gpg(vault, "--export", primary))
        gpg(laptop, "--import", data=gpg(vault, "--export-secret-subkeys", f"{sign_sub}!"))
        src, repo = tmp_path / "src", str(tmp_path / "repo")
        make_tree(src, files=4)
        env = {"GNUPGHOME": laptop}
        # the signing key cannot decrypt here, so there is no metadata key by default
        run = cli("init", "--repo", repo, "--sign-key", sign_sub, "--encrypt-to", encr_sub,
                  env=env, check=0)  # fmt: skip
        assert "no metadata key" in run.out and "local cache only" in run.out
        config = gpg(laptop, "--decrypt", str(Path(repo) / "config")).decode()
        assert f"sign-key: {primary}" in config and f"encrypt-to: {primary}" in config
        cli("backup", "--repo", repo, "--pack-size", "32K", str(src), env=env, check=0)
        cli("verify", "--repo", repo, env=env, check=0)
        for pack in (Path(repo) / "data").iterdir():
            assert not decrypts(laptop, pack) and decrypts(vault, pack)
        one_line(cli("restore", "--repo", repo, "--to", str(tmp_path / "x"), env=env), 12,
                 "recipients")  # fmt: skip
        out = tmp_path / "out"
        env = {"GNUPGHOME": vault, "BLANKET_STATE_DIR": str(tmp_path / "vault-state")}
        cli("restore", "--repo", repo, "--to", str(out), env=env, check=0)
        assert_same_tree(snapshot(src, with_root=False), snapshot(out, with_root=False))
    finally:
        for h in (vault, laptop):
            kill_agent(h)
            shutil.rmtree(h, ignore_errors=True)
