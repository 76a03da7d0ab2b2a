"""Command objects: the work behind API views, each with ``validate()`` and ``run()``.

Views parse the request, build a command, and turn its result or :class:`ApiError` into JSON; the
same commands can be called from the CLI or a worker.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import onnx
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from farm.api.errors import ApiError
from farm.api.uploads import extract_zip, spool_upload
from farm.app import FarmServices
from farm.db import Job, JobKind, JobState, Model, ModelVersion, utcnow
from farm.profiles import UnknownProfileError, get_profile
from farm.storage import FileArtifactStore

log = logging.getLogger(__name__)

MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
INSPECT_PROFILE = "cpu"


@dataclass(frozen=True)
class VersionMetadata:
    """Optional facts about where an upload comes from."""

    label: str | None = None
    git_commit: str | None = None
    branch: str | None = None
    ci_url: str | None = None


@dataclass(frozen=True)
class UploadResult:
    """What an upload produced: the version, its inspect job, and whether each is new."""

    version_id: int
    job_id: int
    created: bool  # a new model version
    job_created: bool  # a new inspect job (a new version, or a retry after a failed inspection)


class UploadModelCommand:
    """Upload an ONNX model: check it, store it by sha256, record the version, enqueue its inspection.

    Nothing is stored for a model that fails the check. Uploading bytes that the named model already
    has returns the existing version and its inspect job instead of a duplicate.
    """

    def __init__(
        self,
        services: FarmServices,
        *,
        name: str,
        stream: IO[bytes],
        filename: str,
        metadata: VersionMetadata,
        profile: str = INSPECT_PROFILE,
    ) -> None:
        self.services = services
        self.name = name
        self.stream = stream
        printable = "".join(ch for ch in os.path.basename(filename or "") if ch.isprintable())
        self.filename = printable[:255] or "model.onnx"
        self.metadata = metadata
        self.profile = profile
        self._temp_path: Path | None = None

    def validate(self) -> None:
        """Check the name, profile and the ONNX file itself (onnx's full checker); raise ApiError(400)."""
        if not MODEL_NAME_PATTERN.match(self.name):
            raise ApiError(
                400,
                "invalid model name: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit",
                field="name",
            )
        try:
            get_profile(self.profile)
        except UnknownProfileError as exc:
            raise ApiError(400, str(exc), field="profile") from None
        for field, value, limit in (
            ("label", self.metadata.label, 128),
            ("git_commit", self.metadata.git_commit, 64),
            ("branch", self.metadata.branch, 255),
            ("ci_url", self.metadata.ci_url, 1024),
        ):
            if value is not None and len(value) > limit:
                raise ApiError(400, f"{field} is longer than {limit} characters", field=field)
        self._temp_path = self._spool_upload()
        try:
            check_onnx_file(self._temp_path)
        except ApiError:
            self._discard()
            raise

    def run(self) -> UploadResult:
        """Store the checked file and record the version and its inspect job, then enqueue the job."""
        if self._temp_path is None:
            self.validate()
        assert self._temp_path is not None
        try:
            stored = self.services.store.put_file(self._temp_path)
        finally:
            self._discard()
        db = self.services.db
        try:
            with db.session() as session:
                result = self._record(session, stored.key, stored.sha256, stored.size_bytes)
        except IntegrityError:
            # a concurrent upload of the same model created the row first: record against it
            with db.session() as session:
                result = self._record(session, stored.key, stored.sha256, stored.size_bytes)
        if result.job_created:
            enqueue_job(self.services, result.job_id)
        return result

    def _record(self, session: Session, key: str, sha256: str, size: int) -> UploadResult:
        model = session.execute(select(Model).where(Model.name == self.name)).scalar_one_or_none()
        if model is None:
            model = Model(name=self.name)
            session.add(model)
            session.flush()
        existing = session.execute(
            select(ModelVersion).where(ModelVersion.model_id == model.id, ModelVersion.sha256 == sha256)
        ).scalar_one_or_none()
        if existing is not None:
            job = (
                session.execute(
                    select(Job)
                    .where(Job.model_version_id == existing.id, Job.kind == JobKind.INSPECT)
                    .order_by(Job.id.desc())
                )
                .scalars()
                .first()
            )
            if job is not None and job.state not in (JobState.FAILED, JobState.CANCELLED):
                return UploadResult(existing.id, job.id, created=False, job_created=False)
            version = existing  # never inspected, or the last inspection failed: inspect again
        else:
            number = (
                session.execute(
                    select(func.max(ModelVersion.number)).where(ModelVersion.model_id == model.id)
                ).scalar_one()
                or 0
            ) + 1
            version = ModelVersion(
                model=model,
                number=number,
                label=self.metadata.label,
                sha256=sha256,
                artifact_key=key,
                size_bytes=size,
                filename=self.filename,
                git_commit=self.metadata.git_commit,
                branch=self.metadata.branch,
                ci_url=self.metadata.ci_url,
            )
            session.add(version)
        job = Job(
            kind=JobKind.INSPECT,
            model_version=version,
            profile=self.profile,
            state=JobState.QUEUED,
            max_attempts=self.services.settings.max_attempts,
        )
        session.add(job)
        session.flush()
        return UploadResult(version.id, job.id, created=existing is None, job_created=True)

    def _spool_upload(self) -> Path:
        store = self.services.store
        folder = store.root / "tmp" if isinstance(store, FileArtifactStore) else None
        limit = self.services.settings.max_upload_mb * 1024 * 1024
        path = spool_upload(self.stream, limit=limit, suffix=".upload", folder=folder, what="model")
        with open(path, "rb") as head:
            is_zip = head.read(4) == b"PK\x03\x04"
        if not is_zip:
            return path
        try:
            return inline_zipped_model(path, limit=limit, folder=folder)
        finally:
            path.unlink()

    def _discard(self) -> None:
        if self._temp_path is not None and self._temp_path.exists():
            self._temp_path.unlink()
        self._temp_path = None


def check_onnx_file(path: Path) -> None:
    """Raise ApiError(400) unless ``path`` holds a model that passes ``onnx.checker`` (full check)."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends for bytes that are not ONNX
        raise ApiError(
            400, f"not an ONNX model: the file cannot be parsed as an ONNX protobuf ({exc})", field="file"
        ) from None
    if not model.HasField("graph") or model.ir_version == 0:
        raise ApiError(400, "not an ONNX model: it has no graph or no IR version", field="file")
    if any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer):
        raise ApiError(
            400,
            "the model keeps its weights in external data files; upload a .zip of the .onnx file and its "
            "external data files, or one self-contained .onnx file",
            field="file",
        )
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # ValidationError, InferenceError, and C++ errors with other types
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ApiError(400, f"invalid ONNX model: {message}", field="file") from None


PROTOBUF_LIMIT = 2**31 - 1  # a self-contained .onnx must fit one protobuf message


def inline_zipped_model(archive: Path, *, limit: int, folder: Path | None) -> Path:
    """The one ``.onnx`` in a zip, with its external data files read into it: a self-contained file.

    External data locations must name files inside the model's own folder in the zip; anything
    else (absolute paths, ``..``, a missing file) is a 400 naming the tensor.
    """
    with tempfile.TemporaryDirectory(prefix="upload-zip-", dir=folder) as unpack:
        root = Path(unpack)
        files = extract_zip(archive, root, limit=limit)
        models = [path for path in files if path.suffix == ".onnx"]
        if len(models) != 1:
            raise ApiError(
                400, f"the zip must hold exactly one .onnx file, it holds {len(models)}", field="file"
            )
        model_path = models[0]
        try:
            model = onnx.load(str(model_path), load_external_data=False)
        except Exception as exc:  # protobuf decode errors
            raise ApiError(
                400, f"not an ONNX model: {model_path.name} cannot be parsed ({exc})", field="file"
            ) from None
        base = model_path.parent.resolve()
        for tensor in model.graph.initializer:
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
            if "\x00" in location:  # Path.resolve raises ValueError on a NUL byte
                raise ApiError(
                    400,
                    f"tensor {tensor.name!r}: external data {location!r} contains a NUL byte",
                    field="file",
                )
            target = (base / location).resolve()
            if not location or os.path.isabs(location) or not target.is_relative_to(base):
                raise ApiError(
                    400, f"tensor {tensor.name!r}: external data {location!r} is outside the model's folder",
                    field="file",
                )  # fmt: skip
            if not target.is_file():
                raise ApiError(
                    400,
                    f"tensor {tensor.name!r}: external data file {location!r} is not in the zip",
                    field="file",
                )
        try:
            onnx.load_external_data_for_model(model, str(base))
        except Exception as exc:  # truncated or short external data files
            raise ApiError(400, f"cannot read the external data: {exc}", field="file") from None
        if model.ByteSize() > PROTOBUF_LIMIT:
            raise ApiError(
                413,
                "the model with its weights is larger than 2 GiB, the limit of one ONNX protobuf",
                field="file",
            )
        fd, name = tempfile.mkstemp(prefix="upload-", suffix=".onnx", dir=folder)
        with os.fdopen(fd, "wb") as out:
            out.write(model.SerializeToString())
        return Path(name)


def enqueue_job(services: FarmServices, job_id: int) -> None:
    """Send the task of ``job_id`` to its profile's queue; a broker failure fails the job visibly."""
    with services.db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        queue, task_name = job.queue, task_for_kind(job.kind)
        job.enqueued_at = utcnow()  # the reconciler re-sends a queued job whose message was lost
    try:
        services.celery.send_task(task_name, args=[job_id], queue=queue)
    except Exception as exc:  # the broker is down: the job must not sit in "queued" forever
        log.exception("could not enqueue job %s", job_id)
        with services.db.session() as session:
            job = session.get(Job, job_id)
            assert job is not None
            job.state = JobState.FAILED
            job.error = f"could not enqueue on {queue}: {exc}"
        raise ApiError(503, f"the broker is unavailable; job {job_id} could not be queued") from exc


def task_for_kind(kind: JobKind) -> str:
    """The Celery task name that runs jobs of ``kind``."""
    from farm.worker.reconcile import task_for_job_kind

    return task_for_job_kind(kind)
