"""The S3 artifact store against a real S3-compatible server (moto's, started on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from farm.storage import (
    ArtifactCorruptedError,
    ArtifactNotFoundError,
    ArtifactTooLargeError,
    InvalidKeyError,
    S3ArtifactStore,
    open_store,
)

pytestmark = pytest.mark.timeout(120)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server as a subprocess; the boto3 environment points at it."""
    pytest.importorskip("moto", reason="moto[server] is a dev dependency")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_DEFAULT_REGION")}  # fmt: skip
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_DEFAULT_REGION="us-east-1",
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("the moto S3 server did not start")
                time.sleep(0.2)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def store(s3_endpoint: str) -> S3ArtifactStore:
    import boto3

    bucket = f"farm-{os.urandom(4).hex()}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    selected = open_store(f"s3://{bucket}/artifacts")
    assert isinstance(selected, S3ArtifactStore)
    return selected


def test_put_get_is_content_addressed(store: S3ArtifactStore) -> None:
    data = os.urandom(3 << 20)  # several chunks
    stored = store.put_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    assert stored.key == f"sha256/{digest[:2]}/{digest}" and stored.created and stored.size_bytes == len(data)
    assert store.exists(stored.key) and store.size(stored.key) == len(data)
    assert store.read_bytes(stored.key) == data
    again = store.put_stream(io.BytesIO(data))
    assert again.key == stored.key and not again.created
    objects = store.client.list_objects_v2(Bucket=store.bucket)["Contents"]
    assert [o["Key"] for o in objects] == [f"artifacts/{stored.key}"]


def test_reads_are_verified_and_keys_validated(store: S3ArtifactStore, tmp_path: object) -> None:
    stored = store.put_bytes(b"model bytes")
    store.client.put_object(Bucket=store.bucket, Key=store.object_key(stored.key), Body=b"tampered")
    with pytest.raises(ArtifactCorruptedError):
        store.read_bytes(stored.key)
    missing = "sha256/00/" + "0" * 64
    with pytest.raises(ArtifactNotFoundError):
        store.read_bytes(missing)
    assert not store.exists(missing)
    with pytest.raises(InvalidKeyError):
        store.read_bytes("../../etc/passwd")
    with pytest.raises(ArtifactTooLargeError):
        store.put_stream(io.BytesIO(b"x" * 100), max_bytes=10)


def test_delete_and_check(store: S3ArtifactStore) -> None:
    stored = store.put_bytes(b"engine")
    store.delete(stored.key)
    assert not store.exists(stored.key)
    assert store.check() == store.url
