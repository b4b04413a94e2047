"""How an S3 store's answers become :mod:`blanket.errors`, for :mod:`blanket.backends.s3`.

:func:`translate` maps every botocore exception to one StoreError kind (not found, already
exists, bad range, transient, or plain), with a hint where the fix is a known one. The other
helpers read the botocore error kept as ``__cause__`` of a translated one: whether the store
said it lacks a feature we asked for (conditional writes, checksums), so the backend can stop
asking.
"""

from __future__ import annotations

from botocore.exceptions import (
    ClientError,
    ConnectionError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
)

from blanket.errors import (
    AlreadyExists,
    BadRange,
    NotFound,
    PermissionDenied,
    StoreError,
    TransientStoreError,
)

# Error codes (and HTTP statuses) that may go away if the call is repeated.
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequests",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "ProvisionedThroughputExceededException",
        "BandwidthLimitExceeded",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "OperationAborted",  # 409: a conflicting operation is in progress; try again
        "ConditionalRequestConflict",  # 409: a concurrent write; the retry gets 412 or wins
        "BadDigest",  # the body was damaged on its way: send it again
        "IncompleteBody",
        "XAmzContentSHA256Mismatch",
    }
)
_TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404", "NoSuchVersion"})
# Refused to these credentials (a policy), as opposed to credentials that do not work.
_DENIED_CODES = frozenset({"AccessDenied", "AllAccessDisabled"})
_CREDENTIAL_CODES = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"})
_HINTS = {
    "AccessDenied": "check the credentials and the bucket policy",
    "AllAccessDisabled": "check the credentials and the bucket policy",
    "InvalidAccessKeyId": "check AWS_ACCESS_KEY_ID / the profile's credentials",
    "SignatureDoesNotMatch": "check AWS_SECRET_ACCESS_KEY / the profile's credentials",
    "ExpiredToken": "refresh the session credentials",
    "NoSuchBucket": "create the bucket or fix the URL",
    "PermanentRedirect": "set the bucket's region (AWS_DEFAULT_REGION)",
    "AuthorizationHeaderMalformed": "set the bucket's region (AWS_DEFAULT_REGION)",
}


def translate(exc: Exception, where: str) -> StoreError:
    """Map a botocore exception to our errors; ``where`` names the store, the action and the
    key (``s3://b/p: cannot read 'k'``). The caller raises the result ``from exc``."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "")
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        text = " ".join(str(error.get("Message") or "").split())
        shown = f"HTTP {status}" if not code or code.isdigit() else code
        if text and text != code:
            shown += f" ({text[:200]})"
        hint = _HINTS.get(code)
        message = f"{where}: {shown}" + (f"; {hint}" if hint else "")
        if code == "NoSuchBucket":
            return StoreError(message)
        if code in _NOT_FOUND_CODES or status == 404:
            return NotFound(message)
        if code == "PreconditionFailed" or status == 412:
            return AlreadyExists(f"{where}: the object already exists ({shown})")
        if code == "InvalidRange" or status == 416:
            return BadRange(message)
        if code in _TRANSIENT_CODES or status in _TRANSIENT_STATUS:
            return TransientStoreError(message)
        if code in _DENIED_CODES or (status == 403 and code not in _CREDENTIAL_CODES):
            return PermissionDenied(message)
        return StoreError(message)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return StoreError(
            f"{where}: no usable AWS credentials ({exc}); set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or use an instance role"
        )
    if isinstance(exc, ConnectionError | HTTPClientError | IncompleteReadError):
        # Endpoint unreachable, connect/read timeouts, connections reset or closed
        # mid-response, bodies cut short: all worth another try.
        return TransientStoreError(f"{where}: {' '.join(str(exc).split())}")
    return StoreError(f"{where}: {' '.join(str(exc).split())}")


def unsupported(exc: StoreError, words: tuple[str, ...]) -> bool:
    """Whether the store answered that it does not implement a header of the request:
    501, or a 400-class rejection whose text names one of ``words``."""
    cause = exc.__cause__
    if not isinstance(cause, ClientError):
        return False
    error = cause.response.get("Error", {})
    status = int(cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    code = str(error.get("Code") or "")
    said = " ".join(str(v) for v in error.values()).lower()
    named = any(w in said for w in words)
    if status == 501 or code == "NotImplemented":
        return True
    return status == 400 and code in ("InvalidArgument", "InvalidRequest", "BadRequest") and named


def mentions(exc: StoreError, words: tuple[str, ...]) -> bool:
    cause = exc.__cause__
    if not isinstance(cause, ClientError):
        return False
    said = " ".join(str(v) for v in cause.response.get("Error", {}).values()).lower()
    return any(w in said for w in words)


CONDITIONAL_WORDS = ("if-none-match", "ifnonematch", "conditional")
CHECKSUM_WORDS = ("checksum",)


def is_status(exc: StoreError, status: int) -> bool:
    cause = exc.__cause__
    return isinstance(cause, ClientError) and (
        cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == status
    )
