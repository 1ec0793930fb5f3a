"""The S3 workspace store: any S3-compatible service (AWS, MinIO, SeaweedFS) through boto3.

Settings: the endpoint from ``SANDLOT_S3_ENDPOINT`` (else boto3's own ``AWS_ENDPOINT_URL``,
else AWS); credentials from boto3's standard chain (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``, a profile, an instance role); the region from ``AWS_REGION`` /
``AWS_DEFAULT_REGION`` or ``us-east-1``; ``SANDLOT_S3_READ_TIMEOUT`` (seconds, default 60)
bounds the wait for an answer before a request is retried. Credentials are never logged nor
put in a message.

A PUT is atomic, so a manifest is either there whole or not at all; it is written after every
blob it names. ``requests`` counts the API calls made (``PutObject``, ``HeadObject``, ...).
"""

from __future__ import annotations

import collections
import hashlib
import os
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import NotFoundError, ProtocolError
from .base import MANIFEST_RE, Staged, store_error
from .manifest import HASH_RE, SESSION_RE, check_session_id
from .store import WorkspaceStore

CHUNK = 1 << 20
REFRESH_AFTER = 10.0  # seconds: a reused blob older than this gets a new modification time
MULTIPART_OVER = 64 << 20


def _timeout() -> float:
    """Seconds to wait for an answer before retrying: ``SANDLOT_S3_READ_TIMEOUT``, else 60."""
    try:
        return max(1.0, float(os.environ.get("SANDLOT_S3_READ_TIMEOUT") or 60))
    except ValueError:
        return 60.0


class S3Store(WorkspaceStore):
    compress = True
    max_inline = 8 << 20  # blobs up to 8 MiB are staged in memory, larger in a temp file

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str | None = None,
        region: str | None = None,
        client: Any = None,
    ) -> None:
        super().__init__()
        self.refresh_after = REFRESH_AFTER
        try:
            import boto3  # type: ignore[import-untyped]
            from botocore.config import Config  # type: ignore[import-untyped]
        except ImportError:
            raise store_error(
                "the S3 workspace store needs boto3: pip install 'sandlot[s3]'"
            ) from None
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}" + (f"/{self.prefix}" if self.prefix else "")
        self._base = f"{self.prefix}/" if self.prefix else ""
        self.endpoint = endpoint or os.environ.get("SANDLOT_S3_ENDPOINT") or None
        self.requests: collections.Counter[str] = collections.Counter()
        self._count_lock = threading.Lock()
        if client is None:
            session = boto3.session.Session()
            region = (
                region
                or os.environ.get("AWS_REGION")
                or os.environ.get("AWS_DEFAULT_REGION")
                or session.region_name
                or "us-east-1"
            )
            config = Config(
                region_name=region,
                max_pool_connections=max(16, self.workers * 2),
                connect_timeout=5,
                read_timeout=_timeout(),
                retries={"max_attempts": 4, "mode": "standard"},
                s3={"addressing_style": "path" if self.endpoint else "auto"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            )
            client = session.client("s3", endpoint_url=self.endpoint, config=config)
        self.client = client
        self.client.meta.events.register("before-call.s3.*", self._count)
        self._tmp = Path(os.environ.get("TMPDIR") or "/tmp")

    def __repr__(self) -> str:
        return f"<S3Store {self.url} at {self.endpoint or 'AWS'}>"

    def _count(self, model: Any = None, **_: Any) -> None:
        if model is not None:
            with self._count_lock:
                self.requests[model.name] += 1

    # -- calls and their errors ---------------------------------------------------------------

    def _call(self, op: str, **kwargs: Any) -> Any:
        """One API call, its failures mapped to sandlot's errors (no credentials in them)."""
        from botocore.exceptions import (  # type: ignore[import-untyped]
            BotoCoreError,
            ClientError,
            ConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        where = f"{self.url} ({self.endpoint or 'AWS'})"
        try:
            return getattr(self.client, op)(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchKey", "404", "NotFound") or (status == 404 and "Key" in kwargs):
                if code == "NoSuchBucket":
                    raise NotFoundError(f"S3 bucket {self.bucket!r} does not exist") from None
                raise FileNotFoundError(kwargs.get("Key", "")) from None
            if code == "NoSuchBucket":
                raise NotFoundError(f"S3 bucket {self.bucket!r} does not exist") from None
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
                raise store_error(
                    f"workspace store {where} refused {op}: {code} (check the bucket exists "
                    "and the AWS_* credentials may use it)",
                    reason=code,
                ) from None
            raise store_error(
                f"workspace store {where}: {op} failed: {code} {err.get('Message', '')}".strip(),
                reason=code,
            ) from None
        except (NoCredentialsError, PartialCredentialsError):
            raise store_error(
                f"workspace store {where}: no S3 credentials (set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or a profile)"
            ) from None
        except ConnectionError as exc:
            raise store_error(
                f"workspace store {where} cannot be reached: {type(exc).__name__}",
                reason="unreachable",
            ) from None
        except BotoCoreError as exc:
            raise store_error(f"workspace store {where}: {type(exc).__name__}") from None

    def _blob_key(self, digest: str) -> str:
        return f"{self._base}blobs/{digest[:2]}/{digest}"

    def _session_prefix(self, session_id: str) -> str:
        return f"{self._base}sessions/{session_id}/"

    def _list(self, prefix: str, delimiter: str | None = None) -> Iterator[dict[str, Any]]:
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Prefix": prefix, "MaxKeys": 1000}
            if delimiter:
                kwargs["Delimiter"] = delimiter
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call("list_objects_v2", **kwargs)
            yield page
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")
            if not token:
                return

    # -- blobs --------------------------------------------------------------------------------

    def staging_dir(self) -> Path:
        return self._tmp

    def has_blob(self, digest: str) -> bool:
        key = self._blob_key(digest)
        try:
            head = self._call("head_object", Key=key)
        except FileNotFoundError:
            return False
        modified = head.get("LastModified")
        if modified is None or time.time() - modified.timestamp() > self.refresh_after:
            # Reused now (another session's): give it a new time, as the local store does,
            # so a gc running elsewhere treats it as young for its grace period.
            source = {"Bucket": self.bucket, "Key": key}
            try:
                self._call("copy_object", Key=key, CopySource=source, MetadataDirective="REPLACE")
            except FileNotFoundError:
                return False  # collected meanwhile: upload it again
        return True

    def put_blob(self, staged: Staged) -> None:
        key = self._blob_key(staged.hash)
        try:
            if staged.data is not None or staged.path is None:
                self._call("put_object", Key=key, Body=staged.data or b"")
            elif staged.size <= MULTIPART_OVER:
                with open(staged.path, "rb") as f:
                    self._call("put_object", Key=key, Body=f, ContentLength=staged.size)
            else:
                from boto3.s3.transfer import TransferConfig  # type: ignore[import-untyped]

                try:
                    self.client.upload_file(
                        str(staged.path),
                        self.bucket,
                        key,
                        Config=TransferConfig(
                            multipart_threshold=MULTIPART_OVER, max_concurrency=4
                        ),
                    )
                except Exception as exc:
                    raise store_error(
                        f"workspace store {self.url}: upload of a {staged.size} byte blob "
                        f"failed: {type(exc).__name__}"
                    ) from None
        finally:
            staged.discard()

    def fetch_blob(self, digest: str, size: int, out_fd: int) -> int:
        try:
            answer = self._call("get_object", Key=self._blob_key(digest))
        except FileNotFoundError:
            raise ProtocolError(f"workspace blob {digest} is missing from the store") from None
        body = answer["Body"]
        h = hashlib.sha256()
        total = 0
        try:
            while chunk := body.read(CHUNK):
                total += len(chunk)
                if total > size:
                    raise ProtocolError(f"workspace blob {digest} is larger than recorded: refused")
                h.update(chunk)
                view = memoryview(chunk)
                done = 0
                while done < len(chunk):
                    done += os.write(out_fd, view[done:])
        finally:
            body.close()
        if total != size or h.hexdigest() != digest:
            raise ProtocolError(f"workspace blob {digest} does not match its hash: refused")
        return total

    def list_blobs(self) -> Iterator[tuple[str, float]]:
        for page in self._list(f"{self._base}blobs/"):
            for obj in page.get("Contents", []):
                digest = obj["Key"].rpartition("/")[2]
                if HASH_RE.match(digest):
                    yield digest, obj["LastModified"].timestamp()

    def delete_blobs(self, digests: Iterable[str]) -> None:
        self._delete_keys([self._blob_key(d) for d in digests])

    def _delete_keys(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[i : i + 1000]]
            answer = self._call("delete_objects", Delete={"Objects": batch, "Quiet": True})
            errors = answer.get("Errors") or []
            if errors:
                raise store_error(
                    f"workspace store {self.url}: {len(errors)} deletions failed: "
                    f"{errors[0].get('Code')}"
                )

    # -- manifests ----------------------------------------------------------------------------

    def manifest_names(self, session_id: str) -> dict[int, str]:
        prefix = self._session_prefix(check_session_id(session_id))
        found: dict[int, str] = {}
        for page in self._list(prefix):
            for obj in page.get("Contents", []):
                name = obj["Key"][len(prefix) :]
                m = MANIFEST_RE.match(name)
                if m:
                    found[int(m.group(1))] = name
        return found

    def read_manifest(self, session_id: str, name: str) -> bytes:
        answer = self._call("get_object", Key=self._session_prefix(session_id) + name)
        body = answer["Body"]
        try:
            data: bytes = body.read(256 << 20)  # a manifest is far smaller: cap what we take
        finally:
            body.close()
        return data

    def write_manifest(self, session_id: str, number: int, data: bytes) -> None:
        name = f"{number:012d}.json" + (".gz" if data[:2] == b"\x1f\x8b" else "")
        self._call(
            "put_object",
            Key=self._session_prefix(session_id) + name,
            Body=data,
            ContentType="application/json",
        )

    def delete_manifests(self, session_id: str, names: list[str]) -> None:
        prefix = self._session_prefix(check_session_id(session_id))
        self._delete_keys([prefix + n for n in names])

    def session_ids(self) -> list[str]:
        ids = []
        base = f"{self._base}sessions/"
        for page in self._list(base, delimiter="/"):
            for common in page.get("CommonPrefixes", []):
                sid = common["Prefix"][len(base) :].rstrip("/")
                if SESSION_RE.match(sid):
                    ids.append(sid)
        return ids

    def clean_staging(self, grace: float) -> None:
        pass  # staging files are in the host's temp folder and removed as they are used

    def close_sync(self) -> None:
        try:
            self.client.close()
        except Exception:
            pass
