"""Against a real S3 engine (SeaweedFS, one ``weed mini`` on 127.0.0.1): first what the S3
backend relies on and detects (the contract itself runs in test_backends.py), then the
real CLI.

One repository's life on a versioned bucket: init, a backup killed with SIGKILL midway and
resumed, an exact restore, quick and deep verify, a pack damaged behind blanket's back
(caught by quick verify through the store's own SHA-256), a sync to a second bucket, a
mesh restore around the damage, gc freeing a layer for real (no version or delete marker
left), and what a laptop whose credentials cannot delete can and cannot do.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import seaweed
from botocore.exceptions import ClientError
from seaweed import LAPTOP, Seaweed
from treeutil import assert_same_tree, make_awkward_tree, snapshot

from blanket.backends.s3 import S3Backend
from blanket.backends.s3errors import translate
from blanket.errors import AlreadyExists, TransientStoreError

MiB = 1024 * 1024


def _b64(body: bytes) -> str:
    return base64.b64encode(hashlib.sha256(body).digest()).decode()


# --- the store as the S3 backend finds it ----------------------------------------------


def test_seaweedfs_checks_keeps_and_returns_sha256(
    seaweedfs: Seaweed, seaweed_env: dict[str, str]
) -> None:
    bucket = seaweedfs.bucket("backend")
    store = S3Backend(bucket, "sha")
    body = os.urandom(300_000)
    store.put("data/1", body)
    assert store.head("data/1").checksum_sha256 == hashlib.sha256(body).hexdigest()
    assert store.checksums is True
    # A body that does not match the checksum sent with it is refused (and for blanket
    # that is a transient error: the bytes were damaged on the way, send them again).
    with pytest.raises(ClientError) as caught:
        store.client.put_object(
            Bucket=bucket, Key="sha/data/2", Body=b"other", ChecksumSHA256=_b64(b"bytes")
        )
    assert caught.value.response["Error"]["Code"] == "BadDigest"
    assert isinstance(translate(caught.value, "here"), TransientStoreError)
    # A multipart object keeps only a composite checksum: head gives none, sizes count.
    big = S3Backend(bucket, "sha", multipart_threshold=5 * MiB, part_size=5 * MiB)
    large = os.urandom(11 * MiB)
    big.put("data/3", io.BytesIO(large))
    assert big.head("data/3").size == len(large)
    assert big.head("data/3").checksum_sha256 is None
    assert big.get("data/3") == large


def test_seaweedfs_honours_conditional_writes(
    seaweedfs: Seaweed, seaweed_env: dict[str, str]
) -> None:
    store = S3Backend(seaweedfs.bucket("backend"), "cond")
    store.put("index/1", b"one", if_absent=True)
    assert store.conditional_writes is True
    with pytest.raises(ClientError) as caught:  # the store itself refuses, not our HEAD
        store.client.put_object(Bucket="backend", Key="cond/index/1", Body=b"x", IfNoneMatch="*")
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    with pytest.raises(AlreadyExists):
        store.put("index/1", b"two", if_absent=True)
    big = S3Backend("backend", "cond", multipart_threshold=5 * MiB, part_size=5 * MiB)
    with pytest.raises(AlreadyExists):  # refused at completion, and the upload aborted
        big._put_multipart("index/1", iter([os.urandom(5 * MiB), b"end"]), True)
    assert store.get("index/1") == b"one"
    uploads = store.client.list_multipart_uploads(Bucket="backend", Prefix="cond/")
    assert uploads.get("Uploads", []) == []


def test_seaweedfs_versioned_delete_leaves_no_version(
    seaweedfs: Seaweed, seaweed_env: dict[str, str]
) -> None:
    bucket = seaweedfs.bucket("backend-versioned", versioned=True)
    store = S3Backend(bucket, "v")
    store.put("data/1", b"one")
    store.put("data/1", b"two")
    store.put("data/2", b"stays")
    store.delete("data/1")
    assert store.versioned is True
    versions = store.client.list_object_versions(Bucket=bucket, Prefix="v/")
    left = [v["Key"] for v in versions.get("Versions", []) + versions.get("DeleteMarkers", [])]
    assert left == ["v/data/2"]
    store.delete("data/1")  # idempotent


def test_seaweedfs_listing_past_one_page(seaweedfs: Seaweed, seaweed_env: dict[str, str]) -> None:
    """SeaweedFS answers at most 1,000 keys a page, like AWS: every page is read."""
    from concurrent.futures import ThreadPoolExecutor

    store = S3Backend(seaweedfs.bucket("backend"), "many")
    names = [f"d/{n:05d}" for n in range(1003)]
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda k: store.client.put_object(Bucket="backend", Key=f"many/{k}", Body=b""),
                names,
            )
        )
    assert [i.key for i in store.list("d/")] == names


def test_seaweedfs_incomplete_uploads_are_aborted_under_the_prefix_only(
    seaweedfs: Seaweed, seaweed_env: dict[str, str]
) -> None:
    bucket = seaweedfs.bucket("backend")
    store = S3Backend(bucket, "crashed")
    mine = store.client.create_multipart_upload(Bucket=bucket, Key="crashed/data/1")
    other = store.client.create_multipart_upload(Bucket=bucket, Key="elsewhere/data/1")
    assert store.discard_incomplete() == 1
    left = store.client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [u["UploadId"] for u in left] == [other["UploadId"]]
    assert mine["UploadId"] != other["UploadId"]
    store.client.abort_multipart_upload(
        Bucket=bucket, Key="elsewhere/data/1", UploadId=other["UploadId"]
    )


# --- the CLI ---------------------------------------------------------------------------


def make_tree(root: Path, files: int = 40, size: int = 120_000, seed: int = 1) -> None:
    """Incompressible files in a few folders: a pack every few files at --pack-size 512K."""
    rng = random.Random(seed)
    for i in range(files):
        p = root / f"d{i % 5}" / f"sub{i % 3}" / f"file{i:04d}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(size + i))


def index_keys(store: Seaweed, bucket: str, prefix: str) -> list[str]:
    return store.keys(bucket, f"{prefix}/index/")


def start_cli(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "blanket", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def backup_killed_midway(
    store: Seaweed, bucket: str, prefix: str, src: Path, env: dict[str, str], commits: int = 2
) -> None:
    """Start a backup, SIGKILL it once ``commits`` more packs are committed."""
    before = len(index_keys(store, bucket, prefix))
    url = f"s3://{bucket}/{prefix}"
    proc = start_cli(["backup", "--repo", url, "--pack-size", "512K", str(src)], env)
    polls = int(120 / 0.05)  # a bounded number of looks, not a clock
    while len(index_keys(store, bucket, prefix)) < before + commits:
        assert proc.poll() is None, f"the backup ended before it was killed: {proc.stderr}"
        polls -= 1
        assert polls > 0, "the backup committed nothing"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def summary(out: str) -> dict[str, Any]:
    return dict(json.loads(out.strip().splitlines()[-1]))


def test_cli_life_of_a_repository_on_seaweedfs(
    cli: Any, keyring: Any, seaweedfs: Seaweed, seaweed_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**seaweed_env, "GNUPGHOME": keyring.home}
    bucket = seaweedfs.bucket("life", versioned=True)
    url = f"s3://{bucket}/laptop"
    src = tmp_path / "src"
    make_tree(src)
    make_awkward_tree(src / "awkward")
    cli("init", "--repo", url, "--key", keyring.fingerprint, env=env, check=0)

    # A backup killed midway leaves a restorable repository; the next run resumes.
    backup_killed_midway(seaweedfs, bucket, "laptop", src, env)
    partial = tmp_path / "partial"
    cli("restore", "--repo", url, "--to", str(partial), env=env, check=0)
    assert any(partial.rglob("*.bin")), "nothing committed before the kill came back"
    done = cli("backup", "--repo", url, "--pack-size", "512K", "--json", str(src), env=env)
    assert done.code == 0, done.err
    assert summary(done.out)["complete"] is True
    out = tmp_path / "out"
    cli("restore", "--repo", url, "--to", str(out), env=env, check=0)
    assert_same_tree(snapshot(src), snapshot(out))

    quick = summary(cli("verify", "--repo", url, "--json", env=env, check=0).out)
    assert quick["problems"] == []
    # Every data object checked against the SHA-256 the store keeps: nothing downloaded.
    assert quick["by_store_checksum"] == quick["commits"] > 3
    assert quick["by_size_only"] == quick["hashed"] == quick["packs_read"] == 0
    deep = cli("verify", "--repo", url, "--deep", "--json", env=env, check=0)
    assert summary(deep.out)["packs_read"] == summary(deep.out)["commits"] > 3

    # A replica in another bucket.
    replica = f"s3://{seaweedfs.bucket('life-replica')}/laptop-copy"
    cli("sync", "--from", url, "--to", replica, env=env, check=0)
    cli("verify", "--repo", replica, "--deep", env=env, check=0)

    # One pack damaged in place, same size, stored with its (new) checksum: only the
    # store's SHA-256 tells quick verify, which downloads nothing.
    s3 = seaweedfs.client()
    data_keys = seaweedfs.keys(bucket, "laptop/data/")
    victim = data_keys[len(data_keys) // 2]
    body = bytearray(s3.get_object(Bucket=bucket, Key=victim)["Body"].read())
    body[len(body) // 2] ^= 0x01
    sums = {"ChecksumAlgorithm": "SHA256", "ChecksumSHA256": _b64(bytes(body))}
    s3.put_object(Bucket=bucket, Key=victim, Body=bytes(body), **sums)
    damaged = cli("verify", "--repo", url, "--json", env=env, check=1)
    problems = summary(damaged.out)["problems"]
    assert [p["object"] for p in problems] == [victim.removeprefix("laptop/")]
    assert "SHA-256" in problems[0]["message"]
    assert summary(damaged.out)["packs_read"] == 0

    # The mesh restores everything exactly around the damaged copy.
    mesh = tmp_path / "mesh"
    cli("restore", "--repo", url, "--repo", replica, "--to", str(mesh), env=env, check=0)
    assert_same_tree(snapshot(src), snapshot(mesh))
    # sync repairs the damaged copy from the replica (the other way round).
    repaired = cli("sync", "--from", replica, "--to", url, "--json", env=env, check=0)
    assert summary(repaired.out)["data_repaired"] == 1
    cli("verify", "--repo", url, env=env, check=0)


def test_cli_on_seaweedfs_started_as_a_user_starts_it(
    cli: Any, keyring: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``weed mini`` with its defaults and its user from the environment (not the suite's
    identities file): the repository's life goes the same way."""
    store = seaweed.start(tmp_path / "weed", as_user=True)
    try:
        for name in seaweed.UNSET:
            monkeypatch.delenv(name, raising=False)
        env = {**store.env(), "GNUPGHOME": keyring.home}
        url, replica = "s3://backups/laptop", "s3://backups/replica"
        src = tmp_path / "src"
        make_tree(src, files=30)
        cli("init", "--repo", url, "--key", keyring.fingerprint, env=env, check=0)
        backup_killed_midway(store, "backups", "laptop", src, env)
        cli("backup", "--repo", url, "--pack-size", "512K", str(src), env=env, check=0)
        out = tmp_path / "out"
        cli("restore", "--repo", url, "--to", str(out), env=env, check=0)
        assert_same_tree(snapshot(src), snapshot(out))
        quick = summary(cli("verify", "--repo", url, "--json", env=env, check=0).out)
        assert quick["by_store_checksum"] == quick["commits"]
        cli("verify", "--repo", url, "--deep", env=env, check=0)
        cli("sync", "--from", url, "--to", replica, env=env, check=0)
        s3 = store.client()
        victim = store.keys("backups", "laptop/data/")[1]
        body = bytearray(s3.get_object(Bucket="backups", Key=victim)["Body"].read())
        body[-1] ^= 0x80
        s3.put_object(Bucket="backups", Key=victim, Body=bytes(body))  # botocore's CRC32
        text = cli("verify", "--repo", url, env=env, check=0).out
        assert "1 data object(s) the store keeps no SHA-256 for" in text
        cli("verify", "--repo", url, "--deep", env=env, check=1)
        mesh = tmp_path / "mesh"
        cli("restore", "--repo", url, "--repo", replica, "--to", str(mesh), env=env, check=0)
        assert_same_tree(snapshot(src), snapshot(mesh))
    finally:
        store.stop()
    assert not store.alive()


def test_gc_on_a_versioned_bucket_leaves_no_version_behind(
    cli: Any, keyring: Any, seaweedfs: Seaweed, seaweed_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**seaweed_env, "GNUPGHOME": keyring.home}
    bucket = seaweedfs.bucket("gc-versioned", versioned=True)
    url = f"s3://{bucket}/repo"
    src = tmp_path / "src"
    src.mkdir()
    (src / "keep.txt").write_bytes(os.urandom(20_000))
    cli("init", "--repo", url, "--key", keyring.fingerprint, env=env, check=0)
    for _ in range(4):
        (src / "churn.bin").write_bytes(os.urandom(50_000))
        cli("backup", "--repo", url, str(src), env=env, check=0)
    # The first gc marks the old layers expiring (the cap cannot be met yet: exit 1).
    cli("gc", "--repo", url, "--cap", "1", env=env, check=1)
    (src / "churn.bin").write_bytes(os.urandom(50_000))
    cli("backup", "--repo", url, str(src), env=env, check=0)
    before = set(seaweedfs.keys(bucket, "repo/"))
    result = summary(cli("gc", "--repo", url, "--cap", "1", "--json", env=env).out)
    assert 0 in result["delete"] and result["bytes_freed"] > 0
    gone = before - set(seaweedfs.keys(bucket, "repo/"))
    assert any("/data/" in k for k in gone) and any("/index/" in k for k in gone)
    versions = seaweedfs.client().list_object_versions(Bucket=bucket, Prefix="repo/")
    left = {v["Key"] for v in versions.get("Versions", []) + versions.get("DeleteMarkers", [])}
    assert not left & gone, "gc left versions or delete markers of what it deleted"
    out = tmp_path / "out"
    cli("restore", "--repo", url, "--to", str(out), env=env, check=0)
    assert_same_tree(snapshot(src), snapshot(out))
    cli("verify", "--repo", url, env=env, check=0)


def test_a_laptop_that_cannot_delete_backs_up_and_its_gc_fails_cleanly(
    cli: Any, keyring: Any, seaweedfs: Seaweed, seaweed_env: dict[str, str], tmp_path: Path
) -> None:
    """SeaweedFS's identity actions have no "Delete" apart from "Write"; a bucket policy
    denying s3:DeleteObject to the laptop's user takes it away, as on AWS."""
    bucket = seaweedfs.bucket("no-delete")
    seaweedfs.deny_deletes(bucket)
    admin = {**seaweed_env, "GNUPGHOME": keyring.home}
    laptop = {**seaweedfs.env(LAPTOP), "GNUPGHOME": keyring.home}
    url = f"s3://{bucket}/laptop"
    probe = seaweedfs.client(LAPTOP)
    probe.put_object(Bucket=bucket, Key="probe", Body=b"x")
    try:
        probe.delete_object(Bucket=bucket, Key="probe")
        raise AssertionError("the policy let the laptop delete")
    except probe.exceptions.ClientError as exc:
        assert exc.response["Error"]["Code"] == "AccessDenied"
    seaweedfs.client().delete_object(Bucket=bucket, Key="probe")

    src = tmp_path / "src"
    make_tree(src, files=30)
    cli("init", "--repo", url, "--key", keyring.fingerprint, env=laptop, check=0)
    backup_killed_midway(seaweedfs, bucket, "laptop", src, laptop, commits=1)
    cli("backup", "--repo", url, "--pack-size", "512K", str(src), env=laptop, check=0)
    for _ in range(3):
        (src / "churn.bin").write_bytes(os.urandom(600_000))
        cli("backup", "--repo", url, "--pack-size", "512K", str(src), env=laptop, check=0)
    out = tmp_path / "out"
    cli("restore", "--repo", url, "--to", str(out), env=laptop, check=0)
    assert_same_tree(snapshot(src), snapshot(out))

    before = sorted(seaweedfs.keys(bucket, "laptop/"))
    cli("gc", "--repo", url, "--cap", "1", env=laptop)
    (src / "churn.bin").write_bytes(os.urandom(600_000))
    cli("backup", "--repo", url, "--pack-size", "512K", str(src), env=laptop, check=0)
    refused = cli("gc", "--repo", url, "--cap", "1", env=laptop)
    assert "the store refused to delete" in refused.err and "AccessDenied" in refused.err
    assert "Traceback" not in refused.err
    # Without a cap gc only deletes what its records already declare removed: refused,
    # that is all it had to do, so it fails (one line, exit 1) and changes nothing.
    again = cli("gc", "--repo", url, "--json", env=laptop)
    assert again.code == 1, again
    assert summary(again.out)["delete_refused"] is True
    assert summary(again.out)["fits"] is True
    after = sorted(seaweedfs.keys(bucket, "laptop/"))
    assert set(before) <= set(after), "a laptop without delete rights deleted something"
    # The trusted machine's gc deletes what the laptop's could not; the repository stays whole.
    freed = summary(cli("gc", "--repo", url, "--cap", "1", "--json", env=admin).out)
    assert freed["bytes_freed"] > 0
    assert len(seaweedfs.keys(bucket, "laptop/data/")) < len([k for k in after if "/data/" in k])
    out2 = tmp_path / "out2"
    cli("restore", "--repo", url, "--to", str(out2), env=laptop, check=0)
    assert_same_tree(snapshot(src), snapshot(out2))
    cli("verify", "--repo", url, env=laptop, check=0)


def test_quick_verify_without_store_checksums_still_checks_sizes(
    cli: Any, keyring: Any, seaweedfs: Seaweed, seaweed_env: dict[str, str], tmp_path: Path
) -> None:
    """Objects the store keeps no SHA-256 for (written without one): quick verify passes
    on sizes, and a same-size change is then for deep verify to find."""
    env = {**seaweed_env, "GNUPGHOME": keyring.home}
    bucket = seaweedfs.bucket("no-checksums")
    url = f"s3://{bucket}/r"
    src = tmp_path / "src"
    make_tree(src, files=20)
    cli("init", "--repo", url, "--key", keyring.fingerprint, env=env, check=0)
    cli("backup", "--repo", url, "--pack-size", "512K", str(src), env=env, check=0)
    s3 = seaweedfs.client()
    data_keys = seaweedfs.keys(bucket, "r/data/")
    for key in data_keys:  # the same bytes again, without a checksum
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    store = S3Backend(bucket, "r")
    assert all(store.head(k.removeprefix("r/")).checksum_sha256 is None for k in data_keys)
    quick = cli("verify", "--repo", url, "--json", env=env, check=0)
    assert summary(quick.out)["by_size_only"] == len(data_keys)
    assert summary(quick.out)["by_store_checksum"] == 0
    text = cli("verify", "--repo", url, env=env, check=0).out
    assert f"{len(data_keys)} data object(s) the store keeps no SHA-256 for" in text
    body = bytearray(s3.get_object(Bucket=bucket, Key=data_keys[0])["Body"].read())
    body[100] ^= 0xFF
    s3.put_object(Bucket=bucket, Key=data_keys[0], Body=bytes(body))
    cli("verify", "--repo", url, env=env, check=0)  # sizes only: cannot see it
    deep = cli("verify", "--repo", url, "--deep", "--json", env=env, check=1)
    assert [p["object"] for p in summary(deep.out)["problems"]] == [data_keys[0][2:]]
