"""``FarmClient``: every API call the CLI makes, with errors that say what went wrong."""

from __future__ import annotations

import hashlib
import io
import os
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import requests

RETRY_STATUSES = {502, 503, 504}
GET_RETRIES = 4
CHUNK_BYTES = 1 << 20


class FarmClientError(Exception):
    """The farm could not be reached or answered something unusable (an infrastructure error)."""


class FarmTimeoutError(FarmClientError):
    """Waiting for a submission took longer than the timeout."""


class FarmApiError(FarmClientError):
    """The API answered with an error: status, stable code, message and details."""

    def __init__(
        self, status: int, code: str, message: str, details: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = dict(details or {})


class FarmClient:
    """A client for one farm (``server``, e.g. ``http://127.0.0.1:8080``) with an optional bearer token."""

    def __init__(
        self,
        server: str,
        token: str | None = None,
        *,
        timeout: float = 60.0,
        session: requests.Session | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        self.base = self.server + "/api/v1"
        self.timeout = timeout
        self.session = session or requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.session.headers.setdefault("User-Agent", "farm-client/1")

    # plumbing

    def request(
        self, method: str, path: str, *, expect_json: bool = True, idempotent: bool = False, **kwargs: Any
    ) -> Any:
        """Call ``method path`` (relative to /api/v1); the decoded JSON, or raise FarmApiError / FarmClientError.

        GETs, and requests the caller marks ``idempotent`` (sending them twice has the effect of
        sending them once, like a model upload: same bytes, same version), are retried with backoff
        when the connection fails or the server answers 502/503/504; other requests are sent once.
        File objects in ``files`` are rewound before each retry."""
        url = path if path.startswith("http") else self.base + path
        kwargs.setdefault("timeout", self.timeout)
        attempts = GET_RETRIES if method == "GET" or idempotent else 1
        for attempt in range(attempts):
            if attempt:
                _rewind_files(kwargs.get("files"))
            try:
                response = self.session.request(method, url, **kwargs)
            except requests.RequestException as exc:
                if attempt + 1 < attempts:
                    time.sleep(0.5 * 2**attempt)
                    continue
                raise FarmClientError(f"cannot reach the farm at {self.server}: {exc}") from exc
            if response.status_code in RETRY_STATUSES and attempt + 1 < attempts:
                time.sleep(0.5 * 2**attempt)
                continue
            break
        if response.status_code >= 400:
            raise _api_error(response)
        if not expect_json:
            return response
        try:
            return response.json()
        except ValueError as exc:
            raise FarmClientError(f"{method} {url}: the answer is not JSON ({response.status_code})") from exc

    def get(self, path: str, **params: Any) -> Any:
        """GET with query parameters (``None`` values left out)."""
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def paginate(self, path: str, **params: Any) -> Iterator[dict[str, Any]]:
        """Every item of a cursor-paginated listing."""
        cursor = None
        while True:
            page = self.get(path, cursor=cursor, **params)
            yield from page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    # resources

    def health(self) -> dict[str, Any]:
        """The farm's health report (also when degraded)."""
        try:
            return self.get("/health")
        except FarmApiError as exc:
            if exc.status == 503:
                return {"ok": False, "status": "degraded", **exc.details}
            raise

    def profiles(self) -> list[dict[str, Any]]:
        """Every hardware profile with whether a worker serves it."""
        return list(self.get("/profiles")["items"])

    def upload_model(
        self,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        label: str | None = None,
        git_commit: str | None = None,
        branch: str | None = None,
        ci_url: str | None = None,
    ) -> dict[str, Any]:
        """Upload an .onnx (zipped together with its external-data files when it has any); the answer."""
        path = Path(path)
        fields = {"name": name, "label": label, "git_commit": git_commit, "branch": branch, "ci_url": ci_url}
        data = {key: value for key, value in fields.items() if value}
        external = external_data_files(path) if path.suffix == ".onnx" else []
        if external:
            payload = io.BytesIO()
            with zipfile.ZipFile(payload, "w", zipfile.ZIP_DEFLATED) as archive:
                archive.write(path, path.name)
                for extra in external:
                    archive.write(path.parent / extra, extra)
            zipped = {"file": (path.stem + ".zip", payload.getvalue(), "application/zip")}
            return self.request("POST", "/models", files=zipped, data=data, idempotent=True)
        with open(path, "rb") as stream:
            plain = {"file": (path.name, stream, "application/octet-stream")}
            return self.request("POST", "/models", files=plain, data=data, idempotent=True)

    def upload_dataset(
        self, path: str | os.PathLike[str], *, name: str | None = None, model: str | None = None,
        version: str | int | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Upload an .npz dataset, checked against ``model``'s inputs when given."""
        path = Path(path)
        data = {"name": name or path.stem, "model": model, "version": str(version) if version else None}
        with open(path, "rb") as stream:
            return self.request(
                "POST",
                "/datasets",
                files={"file": (path.name, stream)},
                data={k: v for k, v in data.items() if v},
            )

    def submit(
        self,
        model: str,
        *,
        profiles: Sequence[str],
        precisions: Sequence[str] = ("fp32",),
        batch_sizes: Sequence[int] = (1,),
        version: str | int = "latest",
        dataset_id: int | None = None,
        calibration_dataset_id: int | None = None,
        options: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Create a submission; with ``idempotency_key`` a retry returns the same one."""
        body: dict[str, Any] = {
            "model": model,
            "version": version,
            "profiles": list(profiles),
            "precisions": list(precisions),
            "batch_sizes": list(batch_sizes),
            "options": dict(options or {}),
        }
        if dataset_id is not None:
            body["dataset_id"] = dataset_id
        if calibration_dataset_id is not None:
            body["calibration_dataset_id"] = calibration_dataset_id
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self.request(
            "POST", "/submissions", json=body, headers=headers, idempotent=idempotency_key is not None
        )

    def submission(self, submission_id: int) -> dict[str, Any]:
        """A submission with its jobs."""
        return self.get(f"/submissions/{submission_id}")

    def results(self, submission_id: int) -> dict[str, Any]:
        """A submission's results table and outcome."""
        return self.get(f"/submissions/{submission_id}/results")

    def job(self, job_id: int) -> dict[str, Any]:
        """One job."""
        return self.get(f"/jobs/{job_id}")

    def jobs(self, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every job matching ``filters`` (state, profile, precision, kind, model, submission_id)."""
        return self.paginate("/jobs", **filters)

    def cancel_job(self, job_id: int) -> dict[str, Any]:
        """Cancel a job."""
        return self.request("POST", f"/jobs/{job_id}/cancel")

    def cancel_submission(self, submission_id: int) -> dict[str, Any]:
        """Cancel every unfinished job of a submission."""
        return self.request("POST", f"/submissions/{submission_id}/cancel")

    def engine(self, engine_id: int) -> dict[str, Any]:
        """An engine's metadata."""
        return self.get(f"/engines/{engine_id}")

    def compare_jobs(self, a: int, b: int) -> dict[str, Any]:
        """Two engines (build jobs) side by side."""
        return self.get("/compare", a=a, b=b)

    def compare_versions(self, model: str, a: str, b: str) -> dict[str, Any]:
        """Two versions of a model side by side."""
        return self.get(f"/models/{model}/compare", a=a, b=b)

    def wait_for_submission(
        self,
        submission_id: int,
        *,
        timeout: float | None = None,
        poll_seconds: float = 1.0,
        max_poll_seconds: float = 5.0,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until every job is final; the results. FarmTimeoutError after ``timeout`` seconds.

        Polls every ``poll_seconds`` at first, slowing by 10 % per poll up to ``max_poll_seconds``, so
        an hour-long wait does not hammer the farm.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            submission = self.submission(submission_id)
            if on_update is not None:
                on_update(submission)  # each job carries its current step: one request per poll
            if submission["state"] == "finished":
                return self.results(submission_id)
            if deadline is not None and time.monotonic() > deadline:
                raise FarmTimeoutError(f"submission {submission_id} did not finish within {timeout:g} s")
            time.sleep(poll_seconds)
            poll_seconds = min(poll_seconds * 1.1, max_poll_seconds)

    def download_engine(
        self, engine_id: int, destination: str | os.PathLike[str], *, expected_sha256: str | None = None
    ) -> Path:
        """Download an engine to ``destination``, resuming a partial ``.part`` file; verify its sha256."""
        destination = Path(destination)
        destination.parent.mkdir(parents=True, exist_ok=True)
        partial = destination.with_name(destination.name + ".part")
        expected = expected_sha256 or self.engine(engine_id)["sha256"]
        if destination.is_file() and _sha256(destination) == expected:
            return destination
        offset = partial.stat().st_size if partial.is_file() else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        url = f"{self.base}/engines/{engine_id}/download"
        try:
            response = self.session.get(url, headers=headers, stream=True, timeout=self.timeout)
        except requests.RequestException as exc:
            raise FarmClientError(f"cannot download engine {engine_id}: {exc}") from exc
        with response:
            if response.status_code == 416:  # the partial file is already complete (or bogus)
                offset = 0
                partial.unlink(missing_ok=True)
                return self.download_engine(engine_id, destination, expected_sha256=expected)
            if response.status_code >= 400:
                raise _api_error(response)
            mode = "ab" if response.status_code == 206 else "wb"
            with open(partial, mode) as sink:
                for chunk in response.iter_content(CHUNK_BYTES):
                    sink.write(chunk)
        got = _sha256(partial)
        if got != expected:
            partial.unlink(missing_ok=True)
            raise FarmClientError(f"engine {engine_id}: sha256 {got} does not match the farm's {expected}")
        os.replace(partial, destination)
        return destination


FINAL = {"succeeded", "failed", "cancelled"}


def external_data_files(path: Path) -> list[str]:
    """The external-data files (relative paths) an .onnx file refers to."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not parseable here: let the server say what is wrong with it
        return []
    files = []
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location" and entry.value not in files:
                    files.append(entry.value)
    return files


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _rewind_files(files: Any) -> None:
    """Seek every file object of a ``files=`` argument back to its start (for a retried upload)."""
    if not isinstance(files, Mapping):
        return
    for spec in files.values():
        stream = spec[1] if isinstance(spec, tuple) and len(spec) > 1 else spec
        if hasattr(stream, "seek"):
            stream.seek(0)


def _api_error(response: requests.Response) -> FarmApiError:
    try:
        body = response.json()
        return FarmApiError(response.status_code, body["error"], body["message"], body.get("details"))
    except (ValueError, KeyError, TypeError):
        text = response.text.strip().splitlines()[0][:200] if response.text.strip() else response.reason
        return FarmApiError(response.status_code, "http_error", text or "")
