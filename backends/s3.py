"""A store in an S3 bucket (AWS S3 or any S3-compatible store: Backblaze B2, MinIO, Ceph).

Key ``index/1`` of ``s3://bucket/some/prefix`` is the S3 object ``some/prefix/index/1``.
Only this module and :mod:`blanket.backends.s3errors` import boto3 or botocore;
:meth:`S3Backend._call` turns every botocore error into :mod:`blanket.errors` (see
:func:`blanket.backends.s3errors.translate`), once. How bodies are cut into parts, read
and hashed is in :mod:`blanket.backends.s3body`.

What is sent where, and what is detected rather than required:

* A body of at most :data:`MULTIPART_THRESHOLD` bytes goes up in one PUT (from a seekable
  file straight from the file, else buffered); a larger one as a streaming multipart upload
  of :data:`PART_SIZE` parts, aborted on any failure (also a failure reading the caller's
  file), so no hidden half-upload stays behind. Uploads that a crashed process left are
  removed by :meth:`S3Backend.abort_incomplete_uploads` (``discard_incomplete``).
* Every PUT and part carries its SHA-256 (``x-amz-checksum-sha256``): the store rejects a
  body damaged in transit and keeps the value, which :meth:`S3Backend.head` returns as hex
  (a multipart object has only a composite "checksum of checksums": ``None`` then). A store
  that answers 501 or rejects the checksum headers gets none from then on.
* ``put(if_absent=True)`` first asks HEAD (a refused key costs no upload, and a store that
  silently ignores conditional headers is still caught outside a race), then writes with
  ``If-None-Match: *``. A store that answers 501 to that header (Backblaze B2) or rejects it
  is remembered, and from then on the write is a plain PUT followed by a read-back: the
  object must still be the version this PUT wrote (version id, else ETag), otherwise
  another writer got there and the put raises AlreadyExists. **Race window of that
  fallback**: two writers whose HEADs both ran before either PUT finished, and whose
  read-backs both ran before the other's PUT landed, would both succeed, the later PUT
  replacing the earlier object (a versioned bucket keeps it as an older version).
* ``delete`` on a bucket with versioning (B2 always; AWS when enabled) removes every
  version and delete marker of the key, so the space is really freed; a plain delete
  there would only hide the object.
* botocore's own retries are off: :class:`blanket.backends.wrappers.RetryingBackend`
  decides, from ``StoreError.retriable``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO, cast

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from blanket.backends.base import (
    Backend,
    ObjectInfo,
    check_key,
    check_range,
    is_valid_key,
)
from blanket.backends.s3body import (
    MIN_PART_SIZE,
    MULTIPART_THRESHOLD,
    PART_SIZE,
    SeekableBody,
    b64_sha256,
    chain,
    file_parts,
    hex_checksum,
    remaining,
    slices,
)
from blanket.backends.s3errors import (
    CHECKSUM_WORDS,
    CONDITIONAL_WORDS,
    is_status,
    mentions,
    translate,
    unsupported,
)
from blanket.errors import (
    AlreadyExists,
    BadRange,
    NotFound,
    StoreError,
    TransientStoreError,
    UsageError,
)

_Parts = list[dict[str, Any]]  # CompleteMultipartUpload's part list

_BUCKET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{2,254}")


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix/`` -> ``("bucket", "some/prefix")``; UsageError if bad."""
    if not url.lower().startswith("s3://"):
        raise UsageError(f"bad S3 URL {url!r}; write s3://bucket/prefix")
    rest = url[5:]
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.strip("/")
    if not _BUCKET_RE.fullmatch(bucket):
        raise UsageError(
            f"bad S3 URL {url!r}: {bucket!r} is no bucket name; write s3://bucket/prefix"
        )
    if prefix and not is_valid_key(prefix):
        raise UsageError(
            f"bad S3 URL {url!r}: the prefix may only hold [A-Za-z0-9._-] names joined by '/'"
        )
    return bucket, prefix


class S3Backend(Backend):
    """Objects under ``prefix/`` in ``bucket``; nothing is contacted until the first call.

    ``endpoint_url`` (else ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, which botocore
    reads itself, or the profile's ``endpoint_url``) selects a non-AWS store; such an
    endpoint is addressed path-style (``http://host/bucket/key``). ``region`` defaults to
    the standard chain (``AWS_DEFAULT_REGION``, the profile). Credentials always come from
    the standard chain (environment, profile, instance role).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        part_size: int = PART_SIZE,
    ) -> None:
        parse_s3_url(f"s3://{bucket}/{prefix}")  # validates both
        if part_size < MIN_PART_SIZE or multipart_threshold < part_size:
            raise UsageError(
                f"part size must be at least {MIN_PART_SIZE} bytes and at most the threshold"
            )
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self._root = f"{self.prefix}/" if self.prefix else ""
        # Capabilities, detected on first use (None: not known yet).
        self.conditional_writes: bool | None = None
        self.checksums: bool = True
        self.versioned: bool | None = None
        session = _session(region)
        self.client: Any = session.client("s3", endpoint_url=endpoint_url, config=_config())
        self.endpoint_url: str | None = None
        resolved = str(self.client.meta.endpoint_url)
        if endpoint_url or not _is_aws(resolved):
            # A configured endpoint (argument, AWS_ENDPOINT_URL, profile): path-style, which
            # MinIO, Ceph and local servers need and B2 accepts.
            self.endpoint_url = endpoint_url or resolved
            self.client = session.client(
                "s3", endpoint_url=self.endpoint_url, config=_config(path_style=True)
            )

    # --- the contract -----------------------------------------------------------------

    def put(self, key: str, data: bytes | BinaryIO, *, if_absent: bool = False) -> None:
        check_key(key)
        if if_absent:
            self._refuse_existing(key)
        if isinstance(data, bytes | bytearray | memoryview):
            body = bytes(data)
            if len(body) <= self.multipart_threshold:
                self._put_single(key, body, if_absent)
            else:
                self._put_multipart(key, slices(body, self.part_size), if_absent)
            return
        size = remaining(data)
        if size is not None and size <= self.multipart_threshold:
            self._put_single(key, SeekableBody(data, size), if_absent)
            return
        parts = file_parts(data, self.part_size)
        buffered: list[bytes] = []
        total = 0
        for part in parts:  # read ahead until the body is known to be small or large
            buffered.append(part)
            total += len(part)
            if total > self.multipart_threshold:
                break
        if total <= self.multipart_threshold:
            self._put_single(key, b"".join(buffered), if_absent)
        else:
            self._put_multipart(key, chain(buffered, parts), if_absent)

    def get(self, key: str) -> bytes:
        check_key(key)
        return self._read(key, self._call("read", key, self.client.get_object, Key=key))

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        check_key(key)
        if offset < 0 or length < 0:
            check_range(key, offset, length, 0)
        if length == 0:
            check_range(key, offset, length, self.head(key).size)
            return b""
        try:
            resp = self._call(
                "read",
                key,
                self.client.get_object,
                Key=key,
                Range=f"bytes={offset}-{offset + length - 1}",
            )
        except BadRange:
            size = self.head(key).size  # 416 also answers a read at exactly the end
            check_range(key, offset, length, size)
            return b""
        body = self._read(key, resp)
        if "ContentRange" not in resp:
            # The store ignored the Range header and sent the whole object.
            check_range(key, offset, length, len(body))
            return body[offset : offset + length]
        return body

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        check_key(prefix, prefix=True)
        found: list[ObjectInfo] = []
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._root + prefix
        )
        for page in self._iterate("list", prefix, pages):
            for item in page.get("Contents", []):
                key = str(item["Key"])[len(self._root) :]
                if is_valid_key(key):  # skip foreign names and "folder" markers
                    found.append(ObjectInfo(key, int(item["Size"])))
        found.sort(key=lambda info: info.key)
        return iter(found)

    def head(self, key: str) -> ObjectInfo:
        check_key(key)
        resp = self._call("read", key, self.client.head_object, Key=key, ChecksumMode="ENABLED")
        checksum = hex_checksum(resp.get("ChecksumSHA256"), resp.get("ChecksumType"))
        if "-" in str(resp.get("ETag", "")):
            checksum = None  # a multipart object: its checksum is a composite, even unmarked
        return ObjectInfo(key, int(resp["ContentLength"]), checksum)

    def delete(self, key: str) -> None:
        check_key(key)
        if self.versioned:
            self._delete_versions(key)
            return
        resp = self._call("delete", key, self.client.delete_object, Key=key)
        if resp.get("VersionId") or resp.get("DeleteMarker"):
            # A versioned bucket only hid the object behind a delete marker.
            self.versioned = True
            self._delete_versions(key)

    def describe(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        return f"S3 store {where}" + (f" at {self.endpoint_url}" if self.endpoint_url else "")

    def exists(self) -> bool:
        try:
            self._call("check", "", self.client.head_bucket)
        except NotFound:
            return False
        except StoreError as exc:
            if exc.retriable or not is_status(exc, 403):
                raise
            # A policy may allow listing the prefix but not HeadBucket.
            self._call("list", "", self.client.list_objects_v2, Prefix=self._root, MaxKeys=1)
        return True

    def create(self) -> None:
        if self.exists():
            return
        region = self.client.meta.region_name
        extra: dict[str, Any] = {}
        if region and region not in ("us-east-1", "aws-global"):
            extra["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self._call("create", "", self.client.create_bucket, **extra)
        except StoreError as exc:
            if not mentions(exc, ("bucketalreadyownedbyyou",)):
                raise

    def discard_incomplete(self) -> int:
        """Abort every incomplete multipart upload under the prefix (the caller holds the
        repository lock, so none of them is still in progress)."""
        return self.abort_incomplete_uploads()

    def close(self) -> None:
        self.client.close()

    # --- S3 only ----------------------------------------------------------------------

    def abort_incomplete_uploads(self, older_than_seconds: float = 0) -> int:
        """Abort multipart uploads under the prefix started more than ``older_than_seconds``
        ago (left by a crashed run; readers never see them, but they cost space). Returns
        how many were aborted.

        Raises StoreError (or TransientStoreError) if the store fails.
        """
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_seconds)
        pages = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=self._root
        )
        stale: list[tuple[str, str]] = []
        for page in self._iterate("list uploads under", self._root, pages):
            for upload in page.get("Uploads", []):
                initiated = upload.get("Initiated")
                if isinstance(initiated, datetime) and initiated > cutoff:
                    continue
                stale.append((str(upload["Key"]), str(upload["UploadId"])))
        aborted = 0
        for full, upload_id in stale:
            try:
                self._call_full(
                    "abort the upload of",
                    full,
                    self.client.abort_multipart_upload,
                    Key=full,
                    UploadId=upload_id,
                )
            except NotFound:
                continue  # finished or aborted meanwhile
            aborted += 1
        return aborted

    # --- helpers ----------------------------------------------------------------------

    def _call(self, action: str, key: str, method: Callable[..., Any], **kwargs: Any) -> Any:
        """Call ``method`` on ``key`` (relative to the prefix) with errors translated."""
        if "Key" in kwargs:
            kwargs["Key"] = self._root + kwargs["Key"]
        return self._call_full(action, key, method, **kwargs)

    def _call_full(self, action: str, key: str, method: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return method(Bucket=self.bucket, **kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, self._where(action, key)) from exc

    def _iterate(self, action: str, key: str, pages: Iterable[Any]) -> Iterator[Any]:
        """Iterate a paginator with errors translated."""
        it = iter(pages)
        while True:
            try:
                page = next(it)
            except StopIteration:
                return
            except (ClientError, BotoCoreError) as exc:
                raise translate(exc, self._where(action, key)) from exc
            yield page

    def _where(self, action: str, key: str) -> str:
        return (
            f"{self.describe()}: cannot {action} {key!r}"
            if key
            else (f"{self.describe()}: cannot {action} the bucket")
        )

    def _read(self, key: str, resp: Any) -> bytes:
        """The response body, complete: a body cut short is a transient failure."""
        stream = resp["Body"]
        try:
            body = cast(bytes, stream.read())
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, self._where("read", key)) from exc
        finally:
            stream.close()
        expected = resp.get("ContentLength")
        if expected is not None and len(body) != int(expected):
            raise TransientStoreError(
                f"{self._where('read', key)}: got {len(body)} of {expected} bytes"
            )
        return body

    def _refuse_existing(self, key: str) -> None:
        try:
            self.head(key)
        except NotFound:
            return
        raise AlreadyExists(f"{self.describe()}: {key!r} already exists")

    def _put_single(self, key: str, body: bytes | SeekableBody, if_absent: bool) -> None:
        digest = b64_sha256(body) if isinstance(body, bytes) else body.b64_sha256()
        while True:
            conditional = if_absent and self.conditional_writes is not False
            checksum = self.checksums
            extra: dict[str, Any] = {}
            if checksum:
                extra.update(ChecksumAlgorithm="SHA256", ChecksumSHA256=digest)
            if conditional:
                extra["IfNoneMatch"] = "*"
            payload = body if isinstance(body, bytes) else body.rewound()
            try:
                resp = self._call(
                    "store", key, self.client.put_object, Key=key, Body=payload, **extra
                )
            except StoreError as exc:
                if self._drop_capability(exc, conditional, checksum):
                    continue
                raise
            self._stored(key, resp, conditional=conditional, if_absent=if_absent)
            return

    def _put_multipart(self, key: str, parts: Iterator[bytes], if_absent: bool) -> None:
        while True:
            checksum = self.checksums
            extra = {"ChecksumAlgorithm": "SHA256"} if checksum else {}
            try:
                created = self._call(
                    "start the upload of",
                    key,
                    self.client.create_multipart_upload,
                    Key=key,
                    **extra,
                )
            except StoreError as exc:
                if self._drop_capability(exc, False, checksum):
                    continue
                raise
            break
        upload_id = str(created["UploadId"])
        try:
            done: _Parts = []
            for number, part in enumerate(parts, start=1):
                sums = {"ChecksumSHA256": b64_sha256(part)} if checksum else {}
                resp = self._call(
                    "upload a part of",
                    key,
                    self.client.upload_part,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=part,
                    **sums,
                )
                done.append({"PartNumber": number, "ETag": resp["ETag"], **sums})
            self._complete(key, upload_id, done, if_absent)
        except BaseException as exc:
            self._abort(key, upload_id, exc)
            raise

    def _complete(self, key: str, upload_id: str, parts: _Parts, if_absent: bool) -> None:
        while True:
            conditional = if_absent and self.conditional_writes is not False
            extra: dict[str, Any] = {"IfNoneMatch": "*"} if conditional else {}
            if if_absent and not conditional:
                self._refuse_existing(key)  # again: the upload took a while
            try:
                resp = self._call(
                    "finish the upload of",
                    key,
                    self.client.complete_multipart_upload,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                    **extra,
                )
            except StoreError as exc:
                if self._drop_capability(exc, conditional, False):
                    continue
                raise
            self._stored(key, resp, conditional=conditional, if_absent=if_absent)
            return

    def _stored(self, key: str, resp: Any, *, conditional: bool, if_absent: bool) -> None:
        """After a put the store accepted: a conditional one proves the store supports
        them; an if-absent one made without that is checked by reading it back."""
        if conditional:
            self.conditional_writes = True
        elif if_absent:
            self._check_read_back(key, resp)

    def _abort(self, key: str, upload_id: str, exc: BaseException) -> None:
        """Abort a failed multipart upload; if that fails too, say so on ``exc`` (which the
        caller raises) rather than hide either error."""
        try:
            self._call(
                "abort the upload of",
                key,
                self.client.abort_multipart_upload,
                Key=key,
                UploadId=upload_id,
            )
        except NotFound:
            return  # completed or aborted already
        except StoreError as abort_exc:
            exc.add_note(
                f"the incomplete upload {upload_id} was not aborted ({abort_exc}); "
                "gc removes it later"
            )

    def _drop_capability(self, exc: StoreError, conditional: bool, checksum: bool) -> bool:
        """Whether ``exc`` says the store does not support a header we sent; if so, stop
        sending it (for this backend's life) so the caller can try again without it."""
        if not (conditional or checksum) or exc.retriable:
            return False
        if checksum and mentions(exc, CHECKSUM_WORDS) and unsupported(exc, CHECKSUM_WORDS):
            self.checksums = False
            return True
        if conditional and unsupported(exc, CONDITIONAL_WORDS):
            self.conditional_writes = False
            return True
        if checksum and unsupported(exc, CHECKSUM_WORDS):
            self.checksums = False
            return True
        return False

    def _check_read_back(self, key: str, written: Any) -> None:
        """After a plain PUT standing in for a conditional one: the object must be the
        version this PUT wrote, else another writer got there too."""
        resp = self._call("read back", key, self.client.head_object, Key=key)
        ours, now = written.get("VersionId"), resp.get("VersionId")
        if not (ours and now):
            ours, now = written.get("ETag"), resp.get("ETag")
        if ours != now:
            raise AlreadyExists(
                f"{self.describe()}: {key!r} was written by another writer at the same time"
            )

    def _delete_versions(self, key: str) -> None:
        full = self._root + key
        pages = self.client.get_paginator("list_object_versions").paginate(
            Bucket=self.bucket, Prefix=full
        )
        found: list[str] = []
        for page in self._iterate("list the versions of", key, pages):
            for item in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
                if item.get("Key") == full:
                    found.append(str(item["VersionId"]))
        for version in found:
            self._call("delete", key, self.client.delete_object, Key=key, VersionId=version)


_loader: Any = None
_loader_lock = threading.Lock()


def _session(region: str | None) -> Any:
    """A new session (credentials and config resolved afresh) sharing one data loader:
    parsing botocore's service models is what makes a client slow to build."""
    global _loader
    core = botocore.session.get_session()
    with _loader_lock:
        if _loader is None:
            _loader = core.get_component("data_loader")
        else:
            core.register_component("data_loader", _loader)
    return boto3.session.Session(botocore_session=core, region_name=region)


def _config(*, path_style: bool = False) -> Config:
    return Config(
        retries={"total_max_attempts": 1, "mode": "standard"},  # RetryingBackend decides
        connect_timeout=10,
        read_timeout=60,
        # Checksums only where we ask for them (a store without checksum support then
        # gets none at all, rather than botocore's default CRC32).
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path"} if path_style else None,
    )


def _is_aws(endpoint: str) -> bool:
    host = endpoint.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0].lower()
    return host.endswith(".amazonaws.com") or host.endswith(".amazonaws.com.cn")


__all__ = ["S3Backend", "parse_s3_url", "MULTIPART_THRESHOLD", "PART_SIZE"]
