"""The artifact store: content addressing, atomic writes, verified reads, key validation."""

from __future__ import annotations

import hashlib
import io
import os
import time
from pathlib import Path

import pytest

from farm.storage import (
    TEMP_SWEEP_SECONDS,
    ArtifactCorruptedError,
    ArtifactError,
    ArtifactNotFoundError,
    ArtifactTooLargeError,
    FileArtifactStore,
    InvalidKeyError,
    key_for_sha256,
    open_store,
)


@pytest.fixture
def store(tmp_path: Path) -> FileArtifactStore:
    return FileArtifactStore(tmp_path / "artifacts")


def stored_files(store: FileArtifactStore) -> list[Path]:
    return [path for path in (store.root / "sha256").rglob("*") if path.is_file()]


def test_key_is_the_sha256_of_the_bytes(store: FileArtifactStore) -> None:
    data = os.urandom(3000)
    stored = store.put_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    assert stored.sha256 == digest
    assert stored.key == f"sha256/{digest[:2]}/{digest}"
    assert stored.size_bytes == len(data)
    assert stored.created
    assert store.read_bytes(stored.key) == data
    assert store.size(stored.key) == len(data)


def test_same_bytes_are_stored_once(store: FileArtifactStore) -> None:
    data = os.urandom(5000)
    first = store.put_bytes(data)
    second = store.put_stream(io.BytesIO(data))
    assert first.key == second.key
    assert not second.created
    assert len(stored_files(store)) == 1
    assert not list((store.root / "tmp").iterdir())


def test_large_stream_in_chunks(store: FileArtifactStore) -> None:
    data = os.urandom(3 * (1 << 20) + 17)
    stored = store.put_stream(io.BytesIO(data))
    assert b"".join(store.open_chunks(stored.key)) == data


def test_corruption_is_detected_on_read(store: FileArtifactStore) -> None:
    stored = store.put_bytes(os.urandom(100))
    path = store.path(stored.key)
    path.write_bytes(b"tampered" + path.read_bytes()[8:])
    with pytest.raises(ArtifactCorruptedError):
        store.read_bytes(stored.key)


@pytest.mark.parametrize(
    "key",
    [
        "../../etc/passwd",
        "sha256/../../../etc/passwd",
        "sha256/ab/" + "0" * 64,  # folder does not match the digest
        "sha256/00/" + "0" * 63,
        "sha256/AA/" + "A" * 64,
        "/abs/" + "0" * 64,
        "",
    ],
)
def test_invalid_keys_are_refused(store: FileArtifactStore, key: str) -> None:
    with pytest.raises(InvalidKeyError):
        store.exists(key)
    with pytest.raises(InvalidKeyError):
        store.read_bytes(key)


def test_missing_artifact(store: FileArtifactStore) -> None:
    key = key_for_sha256(hashlib.sha256(b"never stored").hexdigest())
    assert not store.exists(key)
    with pytest.raises(ArtifactNotFoundError):
        store.read_bytes(key)


def test_too_large_leaves_nothing_behind(store: FileArtifactStore) -> None:
    with pytest.raises(ArtifactTooLargeError):
        store.put_stream(io.BytesIO(os.urandom(4096)), max_bytes=1000)
    assert stored_files(store) == [] if (store.root / "sha256").exists() else True
    assert not list((store.root / "tmp").iterdir())


def test_failed_write_leaves_nothing_behind(store: FileArtifactStore) -> None:
    class Broken(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            if self.tell() > 0:
                raise OSError("connection reset")
            return super().read(10)

    with pytest.raises(OSError, match="connection reset"):
        store.put_stream(Broken(os.urandom(100)))
    assert not list((store.root / "tmp").iterdir())


def test_fetch_to_copies_verified(store: FileArtifactStore, tmp_path: Path) -> None:
    data = os.urandom(2048)
    stored = store.put_bytes(data)
    copy = store.fetch_to(stored.key, tmp_path / "out" / "model.onnx")
    assert copy.read_bytes() == data


def test_delete_and_check(store: FileArtifactStore) -> None:
    stored = store.put_bytes(b"bytes")
    store.delete(stored.key)
    assert not store.exists(stored.key)
    assert store.url in store.check()


def test_open_store_urls(tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path)), FileArtifactStore)
    assert open_store(f"file://{tmp_path}").root == tmp_path.resolve()
    with pytest.raises(ArtifactError, match="bucket"):
        open_store("s3://")  # the S3 backend itself is tested against a real server in test_pipeline_s3_store


def test_sweep_removes_a_dead_local_writers_upload_at_once(store: FileArtifactStore) -> None:
    """An upload temp file names its writer (host and pid): a worker starting after its
    predecessor was killed removes that one's partial upload at once, not six hours later, and
    leaves the uploads of live processes, of this process and of other hosts."""
    import subprocess
    import sys

    from farm.storage import upload_prefix

    tmp = store.root / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True
    )
    dead_pid = int(finished.stdout)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ours = upload_prefix()
        host_part = ours.rsplit("-", 2)[0]  # "upload-HOST"
        dead = tmp / f"{host_part}-{dead_pid}-abc123"
        running = tmp / f"{host_part}-{live.pid}-def456"
        own = tmp / f"{ours}ghi789"
        elsewhere = tmp / f"upload-another.host-{dead_pid}-jkl012"
        for path in (dead, running, own, elsewhere):
            path.write_bytes(b"half an upload")
        assert store.sweep_temp() == [dead.name]
        assert running.exists() and own.exists() and elsewhere.exists()
        # and the name put_stream gives its temp file is that prefix: a killed upload is found
        assert ours.startswith(f"{host_part}-{os.getpid()}-")
    finally:
        live.kill()
        live.wait()
    assert store.sweep_temp() == [running.name]  # its writer is gone now


def test_sweep_removes_only_stale_partial_uploads(store: FileArtifactStore) -> None:
    """A killed writer's temp file is removed once it is older than the sweep age; a file being
    written now, stored artifacts and anything outside tmp/ are left alone."""
    kept = store.put_bytes(b"an artifact")
    tmp = store.root / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    stale, fresh = tmp / "upload-stale", tmp / "upload-fresh"
    stale.write_bytes(b"half an engine")
    fresh.write_bytes(b"being written")
    aged = time.time() - TEMP_SWEEP_SECONDS - 60
    os.utime(stale, (aged, aged))
    assert store.sweep_temp() == ["upload-stale"]
    assert not stale.exists() and fresh.exists()
    assert store.read_bytes(kept.key) == b"an artifact"
    assert store.sweep_temp(older_than_seconds=0) == ["upload-fresh"]
    assert FileArtifactStore(store.root / "never-used").sweep_temp() == []
