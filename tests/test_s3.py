"""What only the S3 backend does: multipart uploads, checksums, capability detection,
versioned deletes, error translation; then the real CLI against moto's server.

The contract itself runs against S3 in test_backends.py. Here a store's answers that moto
never gives (501 to a conditional write, 403, 503, dropped connections) are produced with
botocore's own event hooks on the backend's client: the request reaches a handler that
answers as the store would, and everything of ours runs unchanged.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
from botocore.parsers import create_parser
from moto import mock_aws
from moto.server import ThreadedMotoServer
from test_backends import PatternReader, Sink, SourceFailure, as_file, fake_aws_env, serialize_moto
from treeutil import DISTINCTIVE_NAMES, assert_same_tree, make_awkward_tree, snapshot

from blanket.backends import open_backend
from blanket.backends.base import download_to
from blanket.backends.s3 import S3Backend
from blanket.backends.wrappers import RetryingBackend
from blanket.errors import (
    AlreadyExists,
    BadRange,
    NotFound,
    PermissionDenied,
    StoreError,
    TransientStoreError,
)

MiB = 1024 * 1024
BUCKET = "test-bucket"
PREFIX = "backups/laptop"

Handler = Callable[[dict[str, Any]], "Answer | None"]


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_aws_env(monkeypatch, tmp_path)


@pytest.fixture
def s3(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Backend]:
    serialize_moto(monkeypatch)
    with mock_aws():
        backend = S3Backend(BUCKET, PREFIX)
        backend.create()
        yield backend
        backend.close()


class _Raw(io.BytesIO):
    """A raw HTTP body as botocore reads it."""

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.read()


@dataclass
class Answer:
    """What the store answers instead: an HTTP status with an S3 error document."""

    status: int
    code: str = ""
    message: str = ""

    def body(self) -> bytes:
        if not self.code:
            return b""
        return (
            f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{self.code}</Code>'
            f"<Message>{self.message}</Message><RequestId>r</RequestId></Error>"
        ).encode()


def answer(status: int, code: str = "", message: str = "") -> Answer:
    return Answer(status, code, message)


_PARSER = create_parser("rest-xml")


def intercept(backend: S3Backend, operation: str, handler: Handler) -> list[dict[str, Any]]:
    """Let ``handler`` see every ``operation`` request (botocore's request dict: ``url``,
    ``headers``, ``body``) before it is sent; if it returns an :class:`Answer`, that is the
    store's answer (parsed by botocore's own parser) and the request never reaches the
    store. Returns the requests seen."""
    seen: list[dict[str, Any]] = []

    def hook(model: Any, params: dict[str, Any], **_: Any) -> tuple[Any, Any] | None:
        seen.append(params)
        reply = handler(params)
        if reply is None:
            return None
        body = reply.body()
        raw = {"status_code": reply.status, "headers": {}, "body": body}
        parsed = _PARSER.parse(raw, model.output_shape)
        parsed.setdefault("ResponseMetadata", {})["HTTPStatusCode"] = reply.status
        return AWSResponse(params["url"], reply.status, {}, _Raw(body)), parsed

    backend.client.meta.events.register_first(f"before-call.s3.{operation}", hook)
    return seen


def count(backend: S3Backend, operation: str) -> list[Any]:
    return intercept(backend, operation, lambda request: None)


def times(n: int, response: Callable[[], Answer]) -> Handler:
    """A handler that answers ``response()`` to the first ``n`` requests, then lets the
    store answer."""
    left = [n]

    def handler(request: dict[str, Any]) -> Answer | None:
        if left[0] <= 0:
            return None
        left[0] -= 1
        return response()

    return handler


def uploads(backend: S3Backend) -> list[Any]:
    return list(backend.client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []))


def raw_keys(backend: S3Backend) -> list[str]:
    pages = backend.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


# --- layout ---------------------------------------------------------------------------


def test_keys_live_under_the_prefix(s3: S3Backend) -> None:
    s3.put("index/000000000001", b"x")
    assert raw_keys(s3) == [f"{PREFIX}/index/000000000001"]
    assert [i.key for i in s3.list()] == ["index/000000000001"]


def test_foreign_keys_are_skipped(s3: S3Backend) -> None:
    s3.put("data/1", b"x")
    for foreign in [f"{PREFIX}/data/", f"{PREFIX}/a b", f"{PREFIX}/.tmp-x", "elsewhere/k"]:
        s3.client.put_object(Bucket=BUCKET, Key=foreign, Body=b"y")
    assert [i.key for i in s3.list()] == ["data/1"]


def test_listing_is_paginated(s3: S3Backend) -> None:
    for n in range(7):
        s3.client.put_object(Bucket=BUCKET, Key=f"{PREFIX}/d/{n:05d}", Body=b"")

    def small_pages(request: dict[str, Any]) -> None:
        parts = urlsplit(request["url"])
        query = [(k, v) for k, v in parse_qsl(parts.query) if k != "max-keys"]
        request["url"] = urlunsplit(parts._replace(query=urlencode([*query, ("max-keys", 3)])))

    pages = intercept(s3, "ListObjectsV2", small_pages)
    found = [i.key for i in s3.list("d/")]
    assert found == [f"d/{n:05d}" for n in range(7)]
    assert len(pages) == 3


def test_missing_bucket(aws_env: None) -> None:
    with mock_aws():
        backend = S3Backend("no-such-bucket", "p")
        assert not backend.exists()
        with pytest.raises(StoreError) as caught:
            list(backend.list())
        assert not isinstance(caught.value, NotFound)
        message = str(caught.value)
        assert "no-such-bucket" in message and "NoSuchBucket" in message
        assert "create the bucket" in message
        backend.create()
        assert backend.exists()
        backend.put("k", b"v")
        assert backend.get("k") == b"v"


# --- multipart ------------------------------------------------------------------------


def test_large_body_is_a_streamed_multipart_upload(s3: S3Backend) -> None:
    s3.multipart_threshold = 16 * MiB  # multipart without huge test bodies
    parts = count(s3, "UploadPart")
    singles = count(s3, "PutObject")
    source = PatternReader(40 * MiB)
    s3.put("data/big", as_file(source))
    assert source.largest_read <= 8 * MiB
    assert len(parts) == 5 and singles == []
    assert all("x-amz-checksum-sha256" in r["headers"] for r in parts)
    info = s3.head("data/big")
    assert info.size == 40 * MiB
    assert info.checksum_sha256 is None  # a composite checksum is no SHA-256 of the object
    sink = Sink()
    download_to(s3, "data/big", as_file(sink))
    assert sink.digest.hexdigest() == source.digest.hexdigest()
    assert uploads(s3) == []


def test_large_bytes_body_is_multipart(s3: S3Backend) -> None:
    s3.multipart_threshold = 16 * MiB  # multipart without huge test bodies
    parts = count(s3, "UploadPart")
    body = os.urandom(17 * MiB)
    s3.put("data/bytes", body)
    assert len(parts) == 3
    assert s3.get("data/bytes") == body


def test_body_at_threshold_is_a_single_put(s3: S3Backend) -> None:
    s3.multipart_threshold = 16 * MiB  # multipart without huge test bodies
    parts = count(s3, "UploadPart")
    s3.put("data/edge", as_file(PatternReader(16 * MiB)))
    assert parts == []
    assert s3.head("data/edge").size == 16 * MiB


def test_seekable_file_goes_up_from_where_it_stands(s3: S3Backend) -> None:
    puts = count(s3, "PutObject")
    body = os.urandom(20 * MiB)
    f = io.BytesIO(b"skip me|" + body)
    f.seek(8)
    s3.put("data/pack", f)
    assert len(puts) == 1
    assert s3.get("data/pack") == body
    assert s3.head("data/pack").checksum_sha256 == hashlib.sha256(body).hexdigest()


def test_default_pack_size_gets_a_verifiable_checksum(s3: S3Backend) -> None:
    body = os.urandom(33 * MiB)  # a 32M pack, a little over
    s3.put("data/pack", io.BytesIO(body))
    assert s3.head("data/pack").checksum_sha256 == hashlib.sha256(body).hexdigest()


def test_source_failure_aborts_the_upload(s3: S3Backend) -> None:
    s3.multipart_threshold = 16 * MiB  # multipart without huge test bodies
    with pytest.raises(SourceFailure):
        s3.put("data/k", as_file(PatternReader(40 * MiB, fail_after=20 * MiB)))
    assert uploads(s3) == []
    assert raw_keys(s3) == []


def test_store_failure_mid_upload_aborts_it(s3: S3Backend) -> None:
    s3.multipart_threshold = 16 * MiB  # multipart without huge test bodies
    n = [0]

    def third_part_fails(request: dict[str, Any]) -> Answer | None:
        n[0] += 1
        return answer(503, "SlowDown", "Reduce your request rate.") if n[0] == 3 else None

    intercept(s3, "UploadPart", third_part_fails)
    aborts = count(s3, "AbortMultipartUpload")
    with pytest.raises(TransientStoreError) as caught:
        s3.put("data/k", as_file(PatternReader(40 * MiB)))
    assert "SlowDown" in str(caught.value) and "'data/k'" in str(caught.value)
    assert len(aborts) == 1
    assert uploads(s3) == []
    assert raw_keys(s3) == []


def test_failed_abort_is_reported_not_hidden(s3: S3Backend) -> None:
    s3.multipart_threshold = 16 * MiB  # multipart without huge test bodies
    intercept(s3, "CompleteMultipartUpload", lambda r: answer(500, "InternalError", "oops"))
    intercept(s3, "AbortMultipartUpload", times(1, lambda: answer(403, "AccessDenied", "no")))
    with pytest.raises(TransientStoreError) as caught:
        s3.put("data/k", os.urandom(17 * MiB))
    notes = " ".join(getattr(caught.value, "__notes__", []))
    assert "was not aborted" in notes and "AccessDenied" in notes
    assert len(uploads(s3)) == 1
    assert s3.abort_incomplete_uploads() == 1
    assert uploads(s3) == []


def test_abort_incomplete_uploads_only_under_the_prefix(s3: S3Backend) -> None:
    s3.client.create_multipart_upload(Bucket=BUCKET, Key=f"{PREFIX}/data/left")
    s3.client.create_multipart_upload(Bucket=BUCKET, Key="other/data/left")
    century = 100 * 365 * 86400.0  # moto dates every upload in 2010
    assert s3.abort_incomplete_uploads(older_than_seconds=century) == 0
    assert s3.abort_incomplete_uploads() == 1
    assert [u["Key"] for u in uploads(s3)] == ["other/data/left"]


# --- checksums ------------------------------------------------------------------------


def test_checksum_is_sent_and_returned_by_head(s3: S3Backend) -> None:
    puts = count(s3, "PutObject")
    body = b"pack bytes" * 1000
    s3.put("data/1", body)
    digest = hashlib.sha256(body).hexdigest()
    sent = puts[0]["headers"]["x-amz-checksum-sha256"]
    assert bytes.fromhex(digest) == __import__("base64").b64decode(sent)
    assert s3.head("data/1").checksum_sha256 == digest


def test_store_without_checksums_gets_none(s3: S3Backend) -> None:
    def refuse_checksums(request: dict[str, Any]) -> Answer | None:
        if "x-amz-checksum-sha256" in request["headers"]:
            return answer(400, "InvalidArgument", "x-amz-checksum-sha256 is not supported")
        return None

    puts = intercept(s3, "PutObject", refuse_checksums)
    s3.put("data/1", b"abc")
    s3.put("data/2", b"def")
    assert s3.checksums is False
    assert s3.get("data/1") == b"abc"
    assert s3.head("data/1").checksum_sha256 is None
    assert len(puts) == 3  # refused once, then never sent again


# --- conditional writes ---------------------------------------------------------------


def test_conditional_write_is_used_where_supported(s3: S3Backend) -> None:
    puts = count(s3, "PutObject")
    s3.put("index/1", b"one", if_absent=True)
    assert puts[0]["headers"]["If-None-Match"] == "*"
    assert s3.conditional_writes is True
    with pytest.raises(AlreadyExists):
        s3.put("index/1", b"two", if_absent=True)
    assert s3.get("index/1") == b"one"


def test_precondition_failed_is_already_exists(s3: S3Backend) -> None:
    s3.put("index/1", b"theirs")
    # The HEAD before the write misses the object (another writer was faster)...
    intercept(s3, "HeadObject", times(1, lambda: answer(404)))
    # ... so the conditional write itself must refuse: moto answers 412.
    with pytest.raises(AlreadyExists):
        s3.put("index/1", b"ours", if_absent=True)
    assert s3.get("index/1") == b"theirs"


def test_conditional_conflict_is_retried_then_resolved(s3: S3Backend) -> None:
    intercept(s3, "PutObject", times(1, lambda: answer(409, "ConditionalRequestConflict", "x")))
    retrying = RetryingBackend(s3, sleep=lambda _: None)
    retrying.put("index/1", b"ours", if_absent=True)
    assert s3.get("index/1") == b"ours"


def b2_refuses_conditionals(request: dict[str, Any]) -> Answer | None:
    """Backblaze B2's S3 API: 501 to any conditional header."""
    if "If-None-Match" in request["headers"]:
        return answer(
            501,
            "NotImplemented",
            "A header you provided implies functionality that is not implemented",
        )
    return None


def test_501_falls_back_to_head_put_and_read_back(s3: S3Backend) -> None:
    puts = intercept(s3, "PutObject", b2_refuses_conditionals)
    heads = count(s3, "HeadObject")
    s3.put("index/1", b"one", if_absent=True)
    assert s3.conditional_writes is False
    assert s3.get("index/1") == b"one"
    assert len(puts) == 2  # the refused conditional one, then a plain one
    assert len(heads) == 2  # before the write, and the read-back
    s3.put("index/2", b"two", if_absent=True)
    assert len(puts) == 3  # detected once per backend: no second 501
    with pytest.raises(AlreadyExists):
        s3.put("index/1", b"other", if_absent=True)
    assert s3.get("index/1") == b"one"


def test_fallback_read_back_detects_a_concurrent_writer(s3: S3Backend) -> None:
    intercept(s3, "PutObject", b2_refuses_conditionals)
    s3.put("index/0", b"zero", if_absent=True)  # detect
    other = S3Backend(BUCKET, PREFIX)

    def another_writer_lands(**_: Any) -> None:
        other.put("index/1", b"theirs")

    s3.client.meta.events.register("after-call.s3.PutObject", another_writer_lands)
    with pytest.raises(AlreadyExists, match="another writer"):
        s3.put("index/1", b"ours", if_absent=True)
    assert s3.get("index/1") == b"theirs"


def test_store_that_ignores_the_conditional_header_is_still_caught(s3: S3Backend) -> None:
    def strip(request: dict[str, Any]) -> None:
        if "If-None-Match" in request["headers"]:
            del request["headers"]["If-None-Match"]

    intercept(s3, "PutObject", strip)
    s3.put("index/1", b"one", if_absent=True)
    with pytest.raises(AlreadyExists):
        s3.put("index/1", b"two", if_absent=True)
    assert s3.get("index/1") == b"one"


def test_multipart_conditional_falls_back_at_completion(s3: S3Backend) -> None:
    s3.multipart_threshold = 16 * MiB  # multipart without huge test bodies
    completes = intercept(s3, "CompleteMultipartUpload", b2_refuses_conditionals)
    body = os.urandom(17 * MiB)
    s3.put("data/big", body, if_absent=True)
    assert s3.conditional_writes is False
    assert len(completes) == 2
    assert s3.get("data/big") == body
    assert uploads(s3) == []
    with pytest.raises(AlreadyExists):
        s3.put("data/big", os.urandom(17 * MiB), if_absent=True)


def test_if_absent_refusal_costs_no_upload(s3: S3Backend) -> None:
    s3.multipart_threshold = 16 * MiB  # multipart without huge test bodies
    s3.put("data/big", b"x")
    creates = count(s3, "CreateMultipartUpload")
    with pytest.raises(AlreadyExists):
        s3.put("data/big", as_file(PatternReader(40 * MiB)), if_absent=True)
    assert creates == []


# --- versioned buckets ----------------------------------------------------------------


def test_delete_on_a_versioned_bucket_removes_every_version(s3: S3Backend) -> None:
    s3.client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    for n in range(3):
        s3.put("data/1", f"v{n}".encode())
    s3.put("data/10", b"keep")
    s3.delete("data/1")
    assert s3.versioned is True
    listed = s3.client.list_object_versions(Bucket=BUCKET, Prefix=f"{PREFIX}/data/1")
    left = [v["Key"] for v in listed.get("Versions", []) + listed.get("DeleteMarkers", [])]
    assert left == [f"{PREFIX}/data/10"]
    with pytest.raises(NotFound):
        s3.get("data/1")
    s3.delete("data/1")  # idempotent, and leaves no delete marker behind
    s3.delete("never/was")
    listed = s3.client.list_object_versions(Bucket=BUCKET, Prefix=PREFIX)
    assert listed.get("DeleteMarkers", []) == []
    assert s3.get("data/10") == b"keep"


def test_delete_on_a_plain_bucket_lists_no_versions(s3: S3Backend) -> None:
    versions = count(s3, "ListObjectVersions")
    s3.put("k", b"x")
    s3.delete("k")
    s3.delete("k")
    assert versions == []
    assert not s3.versioned


# --- error translation ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "expected", "retriable"),
    [
        (403, "AccessDenied", PermissionDenied, False),
        (403, "", PermissionDenied, False),
        (403, "InvalidAccessKeyId", StoreError, False),
        (400, "InvalidRequest", StoreError, False),
        (404, "NoSuchKey", NotFound, False),
        (404, "NoSuchBucket", StoreError, False),
        (416, "InvalidRange", BadRange, False),
        (503, "SlowDown", TransientStoreError, True),
        (503, "ServiceUnavailable", TransientStoreError, True),
        (500, "InternalError", TransientStoreError, True),
        (502, "", TransientStoreError, True),
        (504, "", TransientStoreError, True),
        (429, "TooManyRequests", TransientStoreError, True),
        (400, "RequestTimeout", TransientStoreError, True),
        (400, "Throttling", TransientStoreError, True),
    ],
)
def test_store_errors_are_translated(
    s3: S3Backend, status: int, code: str, expected: type[StoreError], retriable: bool
) -> None:
    s3.put("data/1", b"x")
    intercept(s3, "GetObject", lambda r: answer(status, code, "the store says no"))
    with pytest.raises(StoreError) as caught:
        s3.get("data/1")
    exc = caught.value
    assert type(exc) is expected
    assert exc.retriable is retriable
    assert isinstance(exc.__cause__, ClientError)
    message = str(exc)
    assert "\n" not in message
    assert BUCKET in message and "'data/1'" in message
    assert (code or f"HTTP {status}") in message


def test_access_denied_says_what_to_check(s3: S3Backend) -> None:
    intercept(s3, "PutObject", lambda r: answer(403, "AccessDenied", "Access Denied"))
    with pytest.raises(StoreError) as caught:
        s3.put("index/1", b"x")
    assert not caught.value.retriable
    assert str(caught.value) == (
        f"S3 store s3://{BUCKET}/{PREFIX}: cannot store 'index/1': AccessDenied "
        "(Access Denied); check the credentials and the bucket policy"
    )


@pytest.mark.parametrize(
    "error",
    [
        lambda: EndpointConnectionError(endpoint_url="https://store.invalid/"),
        lambda: ReadTimeoutError(endpoint_url="https://store.invalid/"),
    ],
    ids=["connection", "timeout"],
)
def test_connection_trouble_is_transient(s3: S3Backend, error: Callable[[], Exception]) -> None:
    def fail(request: dict[str, Any]) -> None:
        raise error()

    intercept(s3, "HeadObject", fail)
    with pytest.raises(TransientStoreError) as caught:
        s3.head("k")
    assert "store.invalid" in str(caught.value)
    assert caught.value.__cause__ is not None


def test_refused_connection_is_transient(aws_env: None) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = S3Backend(BUCKET, PREFIX, endpoint_url=f"http://127.0.0.1:{port}")
    with pytest.raises(TransientStoreError) as caught:
        backend.get("index/1")
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert "'index/1'" in str(caught.value)


def test_missing_credentials_say_how_to_give_them(
    aws_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    backend = S3Backend(BUCKET, PREFIX, endpoint_url="http://127.0.0.1:9")
    with pytest.raises(StoreError) as caught:
        backend.head("config")
    assert not caught.value.retriable
    assert "AWS_ACCESS_KEY_ID" in str(caught.value)


def test_head_missing_is_not_found(s3: S3Backend) -> None:
    with pytest.raises(NotFound):
        s3.head("nope")


def test_retrying_stack_rides_out_throttling(s3: S3Backend) -> None:
    intercept(s3, "PutObject", times(2, lambda: answer(503, "SlowDown", "slow down")))
    slept: list[float] = []
    retrying = RetryingBackend(s3, sleep=slept.append)
    retrying.put("data/1", io.BytesIO(b"content"))
    assert s3.get("data/1") == b"content"
    assert len(slept) == 2


def test_no_botocore_retries(s3: S3Backend) -> None:
    sent = intercept(s3, "GetObject", lambda r: answer(503, "SlowDown", "x"))
    with pytest.raises(TransientStoreError):
        s3.get("k")
    assert len(sent) == 1  # our RetryingBackend decides, not botocore


# --- over HTTP, and the CLI end to end ------------------------------------------------


@pytest.fixture(scope="module")
def moto_server() -> Iterator[str]:
    """moto's S3 as a real HTTP server on 127.0.0.1 (any free port)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def server_env(moto_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    fake_aws_env(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    return {
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
    }


def test_over_http_with_path_style(server_env: dict[str, str], moto_server: str) -> None:
    backend = open_backend("s3://http-bucket/p")
    assert isinstance(backend, RetryingBackend) and isinstance(backend.inner, S3Backend)
    s3 = backend.inner
    assert s3.endpoint_url == moto_server
    paths = count(s3, "PutObject")
    backend.create()
    backend.put("index/1", b"one", if_absent=True)
    with pytest.raises(AlreadyExists):
        backend.put("index/1", b"two", if_absent=True)
    s3.multipart_threshold = 16 * MiB
    body = os.urandom(17 * MiB)
    backend.put("data/1", io.BytesIO(body))  # multipart
    assert backend.get("data/1") == body
    backend.put("data/2", io.BytesIO(body[: 3 * MiB]))  # one PUT, streamed from the file
    assert backend.head("data/2").checksum_sha256 == hashlib.sha256(body[: 3 * MiB]).hexdigest()
    assert backend.get_range("data/1", 5, 10) == body[5:15]
    assert backend.head("index/1").checksum_sha256 == hashlib.sha256(b"one").hexdigest()
    assert [i.key for i in backend.list()] == ["data/1", "data/2", "index/1"]
    assert paths[0]["url"].startswith(f"{moto_server}/http-bucket/p/index/1")
    backend.delete("data/1")
    assert [i.key for i in backend.list()] == ["data/2", "index/1"]
    assert uploads_of(s3) == []


def test_cli_restores_one_folder_from_ranges_of_a_pack_on_an_s3_server(
    cli: Any, keyring: Any, server_env: dict[str, str], tmp_path: Path
) -> None:
    """One folder out of one big pack: the CLI over HTTP reads a sliver of it."""
    import json
    import random

    rng = random.Random(3)
    src = tmp_path / "src"
    for d in range(20):
        (src / f"d{d:02d}").mkdir(parents=True)
        for i in range(4):
            (src / f"d{d:02d}" / f"f{i}").write_bytes(rng.randbytes(30_000))
    bucket = "ranged-cli-bucket"
    S3Backend(bucket).create()
    url = f"s3://{bucket}/r"
    cli("init", "--repo", url, "--key", keyring.fingerprint, env=server_env, check=0)
    cli("backup", "--repo", url, str(src), env=server_env, check=0)
    out = tmp_path / "out"
    run = cli("restore", "--repo", url, "--to", str(out), "--json", "d07", env=server_env, check=0)
    summary = json.loads(run.out.strip().splitlines()[-1])
    assert summary["files"] == 4 and summary["packs_read"] == 1
    assert sorted(p.name for p in (out / "d07").iterdir()) == ["f0", "f1", "f2", "f3"]
    for i in range(4):
        assert (out / "d07" / f"f{i}").read_bytes() == (src / "d07" / f"f{i}").read_bytes()
    packed = sum(o.size for o in open_backend(url).list("data/"))
    assert packed > 2_000_000
    assert summary["pack_bytes_read"] < 4 * 30_000 + 48_000


def test_cli_init_backup_restore_against_an_s3_server(
    cli: Any, keyring: Any, server_env: dict[str, str], tmp_path: Path
) -> None:
    src = tmp_path / "src"
    make_awkward_tree(src)
    before = snapshot(src)
    bucket = "cli-bucket"
    S3Backend(bucket).create()
    url = f"s3://{bucket}/my/prefix"
    cli("init", "--repo", url, "--key", keyring.fingerprint, env=server_env, check=0)
    cli("backup", "--repo", url, str(src), "--pack-size", "1M", env=server_env, check=0)
    out = tmp_path / "out"
    cli("restore", "--repo", url, "--to", str(out), env=server_env, check=0)
    assert_same_tree(before, snapshot(out))

    store = S3Backend(bucket)
    keys = [info.key for info in store.list()]
    assert "my/prefix/config" in keys
    assert any(k.startswith("my/prefix/index/") for k in keys)
    assert any(k.startswith("my/prefix/data/") for k in keys)
    assert uploads_of(store) == []
    for key in keys:
        assert key.isascii() and key.isprintable(), key
        for name in DISTINCTIVE_NAMES:
            for part in name.split(b"/"):
                assert part.decode("utf-8", "replace") not in key, (key, name)


def uploads_of(backend: S3Backend) -> list[Any]:
    return list(backend.client.list_multipart_uploads(Bucket=backend.bucket).get("Uploads", []))


def test_cli_missing_bucket_is_repository_missing(
    cli: Any, server_env: dict[str, str], moto_server: str
) -> None:
    # --endpoint-url wins over AWS_ENDPOINT_URL (here pointing nowhere).
    env = {**server_env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    result = cli("ls", "--repo", "s3://no-such-bucket/x", "--endpoint-url", moto_server, env=env)
    assert result.code == 10
    assert "s3://no-such-bucket/x" in result.err
    assert len(result.err.strip().splitlines()) == 1
