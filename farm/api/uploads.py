"""Spooling uploads to disk under a size limit, and unpacking zip uploads safely.

A model with external data arrives as a zip of the ``.onnx`` file and its weight files. The zip is
checked before anything is extracted: a bounded number of members, a bounded total uncompressed
size and compression ratio (zip bombs), and member names that stay inside the extraction folder
(no absolute paths, no ``..``, no links). Members are extracted one by one with their sizes
enforced while reading, never with ``extractall``.
"""

from __future__ import annotations

import os
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import IO

from farm.api.errors import ApiError

CHUNK_BYTES = 1 << 20
MAX_ZIP_MEMBERS = 4096
MAX_COMPRESSION_RATIO = 200  # a ratio above this is treated as a zip bomb


def spool_upload(stream: IO[bytes], *, limit: int, suffix: str, folder: Path | None, what: str) -> Path:
    """Copy ``stream`` to a temp file, refusing more than ``limit`` bytes (413) or nothing (400)."""
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="upload-", suffix=suffix, dir=folder)
    size = 0
    try:
        with os.fdopen(fd, "wb") as spool:
            while chunk := stream.read(CHUNK_BYTES):
                size += len(chunk)
                if size > limit:
                    raise ApiError(
                        413,
                        f"the {what} is larger than the limit of {limit} bytes (FARM_MAX_UPLOAD_MB)",
                        limit_bytes=limit,
                    )
                spool.write(chunk)
    except BaseException:
        os.unlink(name)
        raise
    if size == 0:
        os.unlink(name)
        raise ApiError(400, f"the uploaded {what} is empty", field="file")
    return Path(name)


def safe_member_path(name: str) -> PurePosixPath:
    """The relative path of a zip member; ApiError(400) when it could escape the extraction folder."""
    path = PurePosixPath(name.replace("\\", "/"))
    if (
        not name
        or path.is_absolute()
        or ".." in path.parts
        or any(":" in part for part in path.parts)
        or "\x00" in name
    ):
        raise ApiError(
            400, f"zip member {name!r} has an unsafe path (absolute, '..' or a drive)", field="file"
        )
    return path


def extract_zip(archive: Path, destination: Path, *, limit: int) -> list[Path]:
    """Extract ``archive`` into ``destination`` with the checks of the module docstring; the files."""
    try:
        zipped = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ApiError(400, f"not a valid zip file: {exc}", field="file") from None
    with zipped:
        members = [info for info in zipped.infolist() if not info.is_dir()]
        if len(members) > MAX_ZIP_MEMBERS:
            raise ApiError(
                400, f"the zip has {len(members)} files; the limit is {MAX_ZIP_MEMBERS}", field="file"
            )
        total = sum(info.file_size for info in members)
        if total > limit:
            raise ApiError(
                413,
                f"the zip unpacks to {total} bytes, more than the limit of {limit} bytes (FARM_MAX_UPLOAD_MB)",
                limit_bytes=limit,
            )
        extracted = []
        for info in members:
            relative = safe_member_path(info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise ApiError(400, f"zip member {info.filename!r} is a symbolic link", field="file")
            if info.compress_size and info.file_size / info.compress_size > MAX_COMPRESSION_RATIO:
                raise ApiError(
                    400,
                    f"zip member {info.filename!r} is compressed suspiciously well (a zip bomb?)",
                    field="file",
                )
            target = destination.joinpath(*relative.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            written = 0
            try:
                with zipped.open(info) as source, open(target, "wb") as sink:
                    while chunk := source.read(CHUNK_BYTES):
                        written += len(chunk)
                        if written > info.file_size:  # the header lied about the size
                            raise ApiError(
                                400, f"zip member {info.filename!r} is larger than declared", field="file"
                            )
                        sink.write(chunk)
            except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
                raise ApiError(
                    400, f"cannot read zip member {info.filename!r}: {exc}", field="file"
                ) from None
            extracted.append(target)
        return extracted
