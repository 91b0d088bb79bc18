"""The cold tier: objects in an S3 bucket (Ceph RADOS Gateway; any S3 server) through boto3.

Durability: ``put_file`` returns only when the object store acknowledged the whole object
(PutObject, or CompleteMultipartUpload for big objects) with the body's MD5 checked by the
server (ContentMD5 on every request that carries bytes). Keys are content-addressed
(``archive/keys.py``), so an existing key with the same size is the same object: ``put_file``
is then a no-op returning False, and it never overwrites one with another size.

The client settings matter: boto3 >= 1.36 sends aws-chunked bodies with trailing CRC32
checksums by default, which Ceph RGW 16.2 refuses over HTTPS (HTTP 411 MissingContentLength).
``request_checksum_calculation="when_required"`` turns that off; ContentMD5 replaces it.

Vendor errors are translated here: absent keys are ``NotFound``; connection failures,
timeouts, TLS failures, 5xx and refused credentials are ``Unavailable``.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, TypeVar

import boto3
import botocore.exceptions
from botocore.config import Config

from strata.archive.keys import check_key
from strata.common.errors import Conflict, NotFound, StrataError, Unavailable
from strata.common.redact import redact
from strata.common.settings import Settings

TIER = "cold"
SHA256_META = "sha256"  # x-amz-meta-sha256: the checksum recorded at ingest
_CHUNK = 1024 * 1024
T = TypeVar("T")


def s3_client(
    endpoint: str,
    access_key: str,
    secret_key: str,
    ca_bundle: str | None,
    region: str = "us-east-1",
    *,
    max_attempts: int = 3,
    connect_timeout: float = 5.0,
    read_timeout: float = 60.0,
) -> Any:
    """A boto3 S3 client with the settings RGW needs (see the module docstring).

    ``ca_bundle``: PEM file of the CA to trust for an https endpoint (None = the system's).
    TLS verification is never turned off.
    """
    config = Config(
        region_name=region,
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"max_attempts": max_attempts, "mode": "standard"},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        tcp_keepalive=True,
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        verify=ca_bundle if ca_bundle else True,
        config=config,
    )


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    sha256: str | None  # from the object's metadata (None if written by someone else)
    etag: str


class ColdTier:
    """An S3 bucket as a storage tier (implements ``archive.tiers.Tier``)."""

    name = TIER

    def __init__(
        self,
        client: Any,
        bucket: str,
        *,
        multipart_threshold: int = 64 * 1024**2,
        part_size: int = 16 * 1024**2,
    ) -> None:
        if part_size < 5 * 1024**2:
            raise ValueError("S3 parts (but the last) must be at least 5 MiB")
        self.client = client
        self.bucket = bucket
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size

    @classmethod
    def connect(
        cls,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        ca_bundle: str | None = None,
        region: str = "us-east-1",
        **kwargs: Any,
    ) -> ColdTier:
        client_kw = {
            k: kwargs.pop(k)
            for k in ("max_attempts", "connect_timeout", "read_timeout")
            if k in kwargs
        }
        client = s3_client(endpoint, access_key, secret_key, ca_bundle, region, **client_kw)
        return cls(client, bucket, **kwargs)

    # ------------------------------------------------------------------ reads

    def head(self, key: str) -> ObjectInfo | None:
        """Size, recorded sha256 and ETag of the object at ``key``; None when absent."""
        check_key(key)
        try:
            r = self._call(lambda: self.client.head_object(Bucket=self.bucket, Key=key), key)
        except NotFound:
            return None
        meta = {k.lower(): v for k, v in (r.get("Metadata") or {}).items()}
        return ObjectInfo(int(r["ContentLength"]), meta.get(SHA256_META), str(r.get("ETag", "")))

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def size(self, key: str) -> int | None:
        info = self.head(key)
        return None if info is None else info.size

    @contextlib.contextmanager
    def open(self, key: str) -> Iterator[BinaryIO]:
        """The object's bytes as a seekable file (spooled: memory up to 8 MiB, then disk)."""
        with tempfile.SpooledTemporaryFile(max_size=8 * 1024**2) as f:
            self._download(key, f)
            f.seek(0)
            yield f  # type: ignore[misc]

    def download_to(self, key: str, dst: Path) -> str:
        """Copy the object to ``dst`` durably (temp file, fsync, rename); returns its sha256.

        The caller compares the returned sha256 with the one recorded at ingest.
        """
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".dl-", dir=dst.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                digest = self._download(key, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dst)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_dir(dst.parent)
        return digest

    def _download(self, key: str, f: IO[bytes]) -> str:
        check_key(key)
        r = self._call(lambda: self.client.get_object(Bucket=self.bucket, Key=key), key)
        expected = int(r["ContentLength"])
        h = hashlib.sha256()
        n = 0
        body = r["Body"]
        try:
            while True:
                try:
                    chunk = body.read(_CHUNK)
                except (botocore.exceptions.BotoCoreError, OSError) as exc:
                    raise Unavailable(f"cold tier read of {key!r} failed: {exc}") from exc
                if not chunk:
                    break
                h.update(chunk)
                f.write(chunk)
                n += len(chunk)
        finally:
            body.close()
        if n != expected:
            raise Unavailable(f"cold tier read of {key!r} was cut short ({n}/{expected} bytes)")
        return h.hexdigest()

    def keys(self, prefix: str = "") -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=prefix)
        it = iter(pages)
        while True:
            try:
                page = self._call(lambda: next(it), prefix)
            except StopIteration:
                return
            for obj in page.get("Contents", []) or []:
                yield str(obj["Key"])

    # ------------------------------------------------------------------ writes

    def put_file(self, key: str, src: Path, sha256: str) -> bool:
        """Upload ``src`` (left untouched) to ``key``; True when written, False when the key
        already holds an object of the same size (an idempotent repeat).

        Raises Conflict when the key holds an object of another size (keys are content-addressed:
        that object is not ours, and it is never overwritten).
        """
        check_key(key)
        size = src.stat().st_size
        existing = self.head(key)
        if existing is not None:
            if existing.size == size:
                return False
            raise Conflict(f"cold tier key {key!r} already holds {existing.size} bytes, not {size}")
        meta = {SHA256_META: sha256}
        if size >= self.multipart_threshold:
            self._put_multipart(key, src, size, meta)
        else:
            with open(src, "rb") as f:
                md5 = _md5_b64(f, 0, size)
                f.seek(0)
                self._call(
                    lambda: self.client.put_object(
                        Bucket=self.bucket,
                        Key=key,
                        Body=f,
                        ContentLength=size,
                        ContentMD5=md5,
                        ContentType="application/dicom",
                        Metadata=meta,
                    ),
                    key,
                )
        return True

    def _put_multipart(self, key: str, src: Path, size: int, meta: dict[str, str]) -> None:
        r = self._call(
            lambda: self.client.create_multipart_upload(
                Bucket=self.bucket, Key=key, ContentType="application/dicom", Metadata=meta
            ),
            key,
        )
        upload_id = r["UploadId"]
        parts = []
        try:
            with open(src, "rb") as f:
                for number, offset in enumerate(range(0, size, self.part_size), start=1):
                    f.seek(offset)
                    body = f.read(min(self.part_size, size - offset))
                    md5 = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest())
                    r = self._call(
                        functools.partial(
                            self.client.upload_part,
                            Bucket=self.bucket,
                            Key=key,
                            UploadId=upload_id,
                            PartNumber=number,
                            Body=body,
                            ContentLength=len(body),
                            ContentMD5=md5.decode(),
                        ),
                        key,
                    )
                    parts.append({"PartNumber": number, "ETag": r["ETag"]})
            self._call(
                lambda: self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                ),
                key,
            )
        except BaseException:
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise

    def delete(self, key: str) -> None:
        """Remove the object; an absent key is not an error (S3 deletes are idempotent)."""
        check_key(key)
        self._call(lambda: self.client.delete_object(Bucket=self.bucket, Key=key), key)

    # ------------------------------------------------------------------ errors

    def _call(self, fn: Callable[[], T], key: str) -> T:
        try:
            return fn()
        except StrataError:
            raise
        except botocore.exceptions.ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if code in ("404", "NoSuchKey", "NotFound") or (
                status == 404 and code != "NoSuchBucket"
            ):
                raise NotFound(f"no object at {key!r} in the cold tier") from exc
            raise Unavailable(
                f"cold tier (bucket {self.bucket!r}) refused {exc.operation_name}: "
                f"{code or status} {err.get('Message', '')}".rstrip()
            ) from exc
        except botocore.exceptions.SSLError as exc:
            raise Unavailable(redact(f"cold tier TLS verification failed: {exc}")) from exc
        except (botocore.exceptions.BotoCoreError, OSError) as exc:
            raise Unavailable(redact(f"cold tier unreachable: {exc}")) from exc


def build_cold_tier(settings: Settings) -> ColdTier | None:
    """The configured cold tier, or None when no S3 endpoint is configured."""
    if not settings.s3_endpoint:
        return None
    return ColdTier.connect(
        settings.s3_endpoint,
        settings.s3_access_key,
        settings.s3_secret_key,
        settings.s3_bucket,
        settings.s3_ca_bundle or None,
        settings.s3_region,
        max_attempts=settings.s3_max_attempts,
        connect_timeout=settings.s3_connect_timeout,
        read_timeout=settings.s3_read_timeout,
    )


def _md5_b64(f: IO[bytes], offset: int, length: int) -> str:
    f.seek(offset)
    h = hashlib.md5(usedforsecurity=False)
    left = length
    while left:
        chunk = f.read(min(_CHUNK, left))
        if not chunk:
            raise Unavailable("source file shrank while uploading")
        h.update(chunk)
        left -= len(chunk)
    return base64.b64encode(h.digest()).decode()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
