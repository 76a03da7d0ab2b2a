"""The artifact store: models, engines, datasets and logs, content-addressed by sha256.

A key is derived from the bytes alone (``sha256/ab/abcdef…``), so storing the same bytes twice
stores them once, and reading verifies the bytes still hash to their key. Writes are atomic: the
data goes to a temporary file that is renamed into place only once complete, so a reader never
sees half an artifact.

Backends implement :class:`ArtifactStore`: ``file://`` (a local or shared folder) and ``s3://``
(any S3-compatible object store, through boto3; the endpoint and credentials come from boto3's
usual environment, e.g. ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

CHUNK_BYTES = 1 << 20
# temp files older than this are leftovers of a killed writer (see FileArtifactStore.sweep_temp)
TEMP_SWEEP_SECONDS = 6 * 3600.0
KEY_PATTERN = re.compile(r"^sha256/([0-9a-f]{2})/([0-9a-f]{64})$")


class ArtifactError(Exception):
    """Base class of artifact store errors."""


class InvalidKeyError(ArtifactError, ValueError):
    """The key is not of the form ``sha256/xx/<64 hex digits>`` (e.g. an attempt at path traversal)."""


class ArtifactNotFoundError(ArtifactError, KeyError):
    """No artifact is stored under the key."""


class ArtifactCorruptedError(ArtifactError):
    """The stored bytes no longer hash to their key."""


class ArtifactTooLargeError(ArtifactError):
    """The data is larger than the limit the caller set."""


@dataclass(frozen=True)
class StoredArtifact:
    """What :meth:`ArtifactStore.put_stream` stored: its key, sha256 and size, and whether it was new."""

    key: str
    sha256: str
    size_bytes: int
    created: bool


def key_for_sha256(sha256: str) -> str:
    """The key of the artifact whose bytes hash to ``sha256``."""
    key = f"sha256/{sha256[:2]}/{sha256}"
    validate_key(key)
    return key


def validate_key(key: str) -> str:
    """Return the sha256 a valid ``key`` names; raise :class:`InvalidKeyError` for anything else."""
    match = KEY_PATTERN.match(key) if isinstance(key, str) else None
    if match is None or match.group(2)[:2] != match.group(1):
        raise InvalidKeyError(f"invalid artifact key {key!r}: expected sha256/xx/<64 lowercase hex digits>")
    return match.group(2)


class ArtifactStore(ABC):
    """Content-addressed storage of immutable blobs."""

    url: str

    @abstractmethod
    def put_stream(self, stream: IO[bytes], *, max_bytes: int | None = None) -> StoredArtifact:
        """Store everything read from ``stream``; the key comes from the bytes' sha256."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """True when an artifact is stored under ``key``."""

    @abstractmethod
    def size(self, key: str) -> int:
        """The size in bytes of the artifact under ``key``."""

    @abstractmethod
    def open_chunks(self, key: str, *, verify: bool = True) -> Iterator[bytes]:
        """The artifact's bytes in chunks; with ``verify``, the last step checks the sha256."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the artifact under ``key`` (no error when absent)."""

    @abstractmethod
    def check(self) -> str:
        """Prove the store is reachable and writable; return a short description; raise when not."""

    def sweep_temp(self, older_than_seconds: float = TEMP_SWEEP_SECONDS) -> list[str]:
        """Remove partial uploads that killed writers left behind; the names removed. Stores
        whose uploads are atomic on the server side (S3) have none."""
        return []

    def put_bytes(self, data: bytes) -> StoredArtifact:
        """Store ``data``."""
        import io

        return self.put_stream(io.BytesIO(data))

    def put_file(self, path: str | os.PathLike[str]) -> StoredArtifact:
        """Store the file at ``path``."""
        with open(path, "rb") as stream:
            return self.put_stream(stream)

    def read_bytes(self, key: str) -> bytes:
        """The artifact's bytes, verified against its key."""
        return b"".join(self.open_chunks(key))

    def fetch_to(self, key: str, destination: str | os.PathLike[str]) -> Path:
        """Copy the artifact to ``destination`` (verified, written atomically) and return its path."""
        destination = Path(destination)
        destination.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=destination.parent, delete=False) as tmp:
            try:
                for chunk in self.open_chunks(key):
                    tmp.write(chunk)
            except BaseException:
                tmp.close()
                os.unlink(tmp.name)
                raise
        os.replace(tmp.name, destination)
        return destination


class FileArtifactStore(ArtifactStore):
    """Artifacts as files under a root folder (local disk or a shared mount)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.url = self.root.as_uri()
        self._tmp = self.root / "tmp"

    def path(self, key: str) -> Path:
        """The file holding the artifact under ``key`` (which may not exist)."""
        sha256 = validate_key(key)
        return self.root / "sha256" / sha256[:2] / sha256

    def local_path(self, key: str) -> Path:
        """The file of an existing artifact, for readers that need a path (e.g. onnx, mmap)."""
        path = self.path(key)
        if not path.is_file():
            raise ArtifactNotFoundError(key)
        return path

    def put_stream(self, stream: IO[bytes], *, max_bytes: int | None = None) -> StoredArtifact:
        self._tmp.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix=upload_prefix())
        try:
            with os.fdopen(fd, "wb") as tmp:
                while chunk := stream.read(CHUNK_BYTES):
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise ArtifactTooLargeError(f"artifact is larger than {max_bytes} bytes")
                    digest.update(chunk)
                    tmp.write(chunk)
                tmp.flush()
                os.fsync(tmp.fileno())
            sha256 = digest.hexdigest()
            key = key_for_sha256(sha256)
            target = self.path(key)
            if target.is_file():
                os.unlink(tmp_name)
                return StoredArtifact(key, sha256, size, created=False)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(tmp_name, 0o644)
            os.replace(tmp_name, target)
            return StoredArtifact(key, sha256, size, created=True)
        except BaseException:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
            raise

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def size(self, key: str) -> int:
        return self.local_path(key).stat().st_size

    def open_chunks(self, key: str, *, verify: bool = True) -> Iterator[bytes]:
        sha256 = validate_key(key)
        path = self.local_path(key)
        return _read_verified(path, sha256 if verify else None)

    def delete(self, key: str) -> None:
        path = self.path(key)
        if path.is_file():
            path.unlink()

    def sweep_temp(self, older_than_seconds: float = TEMP_SWEEP_SECONDS) -> list[str]:
        """Delete what a process killed in the middle of ``put_stream`` left in the store's
        ``tmp/`` folder: uploads whose writer (named in the file, :func:`upload_prefix`) was a
        process of this host that no longer runs, at once, and any file last written more than
        ``older_than_seconds`` ago (a writer on another host: an upload that is still being
        written is touched at every chunk, so it is never that old). Returns their names."""
        removed: list[str] = []
        if not self._tmp.is_dir():
            return removed
        cutoff = time.time() - older_than_seconds
        for entry in self._tmp.iterdir():
            try:
                if not entry.is_file() or entry.is_symlink():
                    continue
                if _writer_gone(entry.name) or entry.stat().st_mtime < cutoff:
                    entry.unlink()
                    removed.append(entry.name)
            except FileNotFoundError:  # another worker swept it first
                continue
        return removed

    def check(self) -> str:
        self._tmp.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=self._tmp, prefix="health-") as probe:
            probe.write(b"ok")
            probe.flush()
        usage = shutil.disk_usage(self.root)
        return f"{self.url} ({usage.free / 2**30:.1f} GiB free)"


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def upload_prefix() -> str:
    """``upload-HOST-PID-``: the temp-file prefix of an upload, naming the process writing it."""
    return f"upload-{_host_tag()}-{os.getpid()}-"


def _writer_gone(name: str) -> bool:
    """Whether ``name`` is an upload temp file whose writer was a process of this host that has
    exited (a zombie counts as exited). Files of other hosts, of older versions (no writer in
    the name), of this process and of live processes are not."""
    parts = name.rsplit("-", 2)
    if len(parts) != 3 or parts[0] != f"upload-{_host_tag()}" or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].startswith("Z")


def _read_verified(path: Path, sha256: str | None) -> Iterator[bytes]:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            digest.update(chunk)
            yield chunk
    if sha256 is not None and digest.hexdigest() != sha256:
        raise ArtifactCorruptedError(f"artifact {path} does not match its sha256 {sha256}")


class S3ArtifactStore(ArtifactStore):
    """Artifacts as objects ``<prefix>/sha256/ab/<hex>`` in an S3 bucket (AWS, MinIO, Ceph, ...).

    A PUT is atomic in S3, so readers never see half an object; the bytes are hashed while they
    are spooled to a temporary file, so the key is known before the upload starts.
    """

    def __init__(self, bucket: str, prefix: str = "", *, client: object | None = None) -> None:
        import boto3

        if not bucket:
            raise ArtifactError("an s3:// artifact store URL needs a bucket: s3://BUCKET/PREFIX")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.client: Any = client or boto3.client("s3")

    def object_key(self, key: str) -> str:
        """The S3 object key of the artifact ``key``."""
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_stream(self, stream: IO[bytes], *, max_bytes: int | None = None) -> StoredArtifact:
        digest = hashlib.sha256()
        size = 0
        with tempfile.TemporaryFile() as spool:
            while chunk := stream.read(CHUNK_BYTES):
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise ArtifactTooLargeError(f"artifact is larger than {max_bytes} bytes")
                digest.update(chunk)
                spool.write(chunk)
            sha256 = digest.hexdigest()
            key = key_for_sha256(sha256)
            if self.exists(key):
                return StoredArtifact(key, sha256, size, created=False)
            spool.seek(0)
            self.client.upload_fileobj(spool, self.bucket, self.object_key(key))
        return StoredArtifact(key, sha256, size, created=True)

    def _head(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            head: dict[str, Any] = self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return head

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def size(self, key: str) -> int:
        head = self._head(key)
        if head is None:
            raise ArtifactNotFoundError(key)
        return int(head["ContentLength"])

    def open_chunks(self, key: str, *, verify: bool = True) -> Iterator[bytes]:
        from botocore.exceptions import ClientError

        sha256 = validate_key(key)
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))["Body"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise ArtifactNotFoundError(key) from None
            raise
        return _verified_chunks(
            body.iter_chunks(CHUNK_BYTES), sha256 if verify else None, self.url + "/" + key
        )

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))

    def check(self) -> str:
        self.client.head_bucket(Bucket=self.bucket)
        probe = f"{self.prefix}/tmp/health-probe" if self.prefix else "tmp/health-probe"
        self.client.put_object(Bucket=self.bucket, Key=probe, Body=b"ok")
        self.client.delete_object(Bucket=self.bucket, Key=probe)
        return self.url


def _verified_chunks(chunks: Iterator[bytes], sha256: str | None, where: str) -> Iterator[bytes]:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
        yield chunk
    if sha256 is not None and digest.hexdigest() != sha256:
        raise ArtifactCorruptedError(f"artifact {where} does not match its sha256 {sha256}")


def open_store(url: str) -> ArtifactStore:
    """The artifact store named by ``url``: a folder, ``file:///PATH`` or ``s3://BUCKET/PREFIX``."""
    if url.startswith("file://"):
        return FileArtifactStore(url[len("file://") :])
    if url.startswith("s3://"):
        bucket, _, prefix = url[len("s3://") :].partition("/")
        return S3ArtifactStore(bucket, prefix)
    if "://" in url:
        raise ArtifactError(f"unsupported artifact store URL {url!r}")
    return FileArtifactStore(url)
