"""Uploads: size limit, zips with external data (and hostile zips), datasets checked and never unpickled."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from api_support import client_with, upload_dataset, upload_model
from flask import Flask
from flask.testing import FlaskClient
from onnx.external_data_helper import convert_model_to_external_data


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return client_with(app, "submit")


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def test_oversized_upload_is_413_with_the_limit(client: FlaskClient, app: Flask) -> None:
    limit = app.extensions["farm"].settings.max_upload_mb * 1024 * 1024
    response = upload_model(client, b"\x08" * (limit + 10))
    assert response.status_code == 413
    assert response.json["error"] == "payload_too_large"
    assert str(limit) in response.json["message"] and "FARM_MAX_UPLOAD_MB" in response.json["message"]


def external_data_zip(small_cnn, tmp_path: Path, location: str = "weights.bin") -> bytes:  # type: ignore[no-untyped-def]
    model = onnx.load_from_string(small_cnn.data)
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location=location, size_threshold=0)
    folder = tmp_path / "export"
    folder.mkdir()
    onnx.save_model(model, str(folder / "model.onnx"))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in folder.rglob("*"):
            archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def test_zip_with_external_data_is_stored_self_contained(
    client: FlaskClient,
    app: Flask,
    small_cnn,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    response = upload_model(
        client, external_data_zip(small_cnn, tmp_path), name="cnn-ext", filename="cnn.zip"
    )
    assert response.status_code == 201, response.json
    store = app.extensions["farm"].store
    stored = onnx.load_from_string(store.read_bytes(store_key(app, response.json["model_version"]["sha256"])))
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in stored.graph.initializer)
    original = onnx.load_from_string(small_cnn.data)
    for got, want in zip(stored.graph.initializer, original.graph.initializer, strict=True):
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(got), onnx.numpy_helper.to_array(want))


def store_key(app: Flask, sha256: str) -> str:
    from farm.storage import key_for_sha256

    return key_for_sha256(sha256)


def test_zip_path_escape_is_refused(client: FlaskClient, small_cnn, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model.onnx", small_cnn.data)
        archive.writestr("../../etc/evil.bin", b"x" * 16)
    response = upload_model(client, buffer.getvalue(), filename="evil.zip")
    assert response.status_code == 400 and "unsafe path" in response.json["message"]
    assert not (tmp_path / "etc").exists()


def test_external_data_outside_the_model_folder_is_refused(
    client: FlaskClient, small_cnn, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    with zipfile.ZipFile(io.BytesIO(external_data_zip(small_cnn, tmp_path))) as original:
        weights = original.read("weights.bin")
        model = onnx.load_from_string(original.read("model.onnx"))
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../weights.bin"  # exists in the zip, but outside the model's folder
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("sub/model.onnx", model.SerializeToString())
        archive.writestr("weights.bin", weights)
    response = upload_model(client, buffer.getvalue(), filename="escape.zip")
    assert response.status_code == 400
    assert "outside the model's folder" in response.json["message"], response.json


def test_zip_bomb_is_refused(client: FlaskClient) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model.onnx", b"\0" * (900 * 1024))  # compresses ~1000:1
    response = upload_model(client, buffer.getvalue(), filename="bomb.zip")
    assert response.status_code == 400 and "zip bomb" in response.json["message"]
    huge = io.BytesIO()
    with zipfile.ZipFile(huge, "w", zipfile.ZIP_DEFLATED) as archive:
        # two bits of entropy per byte: compresses about 4:1, so the zip fits the limit but its contents do not
        for index, member in enumerate(("model.onnx", "weights.bin")):
            values = np.random.default_rng(index).integers(0, 4, 700 * 1024, dtype=np.uint8)
            archive.writestr(member, values.tobytes())
    response = upload_model(client, huge.getvalue(), filename="big.zip")
    assert response.status_code == 413 and "unpacks to" in response.json["message"]


def test_zip_needs_exactly_one_model(client: FlaskClient, small_cnn) -> None:  # type: ignore[no-untyped-def]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.onnx", small_cnn.data)
        archive.writestr("b.onnx", small_cnn.data)
    response = upload_model(client, buffer.getvalue(), filename="two.zip")
    assert response.status_code == 400 and "exactly one .onnx" in response.json["message"]


def test_dataset_is_checked_against_the_model_inputs(client: FlaskClient, small_cnn) -> None:  # type: ignore[no-untyped-def]
    assert upload_model(client, small_cnn.data, name="cnn").status_code == 201
    rng = np.random.default_rng(0)
    good = npz_bytes(input=rng.standard_normal((4, 3, 16, 16)).astype(np.float32), labels=np.arange(4))
    response = upload_dataset(client, good, model="cnn")
    assert response.status_code == 201, response.json
    assert response.json["arrays"]["input"] == {"shape": [4, 3, 16, 16], "dtype": "float32"}
    assert response.json["has_labels"] and response.json["model"] == "cnn"
    again = upload_dataset(client, good, model="cnn")
    assert again.status_code == 200 and again.json["id"] == response.json["id"]

    wrong_shape = npz_bytes(input=rng.standard_normal((4, 3, 8, 8)).astype(np.float32))
    response = upload_dataset(client, wrong_shape, model="cnn")
    assert response.status_code == 400
    assert "'input'" in response.json["message"] and "axis 2 must be 16" in response.json["message"]
    assert response.json["details"]["field"] == "input"

    wrong_rank = npz_bytes(input=rng.standard_normal((4, 3, 16)).astype(np.float32))
    assert "rank 4" in upload_dataset(client, wrong_rank, model="cnn").json["message"]
    missing = npz_bytes(image=rng.standard_normal((4, 3, 16, 16)).astype(np.float32))
    assert "no array for model input 'input'" in upload_dataset(client, missing, model="cnn").json["message"]
    ints = npz_bytes(input=np.ones((4, 3, 16, 16), dtype=np.int64))
    assert "dtype int64" in upload_dataset(client, ints, model="cnn").json["message"]


def test_pickled_npz_is_refused_and_never_unpickled(client: FlaskClient, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (marker.touch, ())

    buffer = io.BytesIO()
    np.savez(buffer, input=np.array([Payload()], dtype=object))
    response = upload_dataset(client, buffer.getvalue())
    assert response.status_code == 400 and "pickled" in response.json["message"]
    assert not marker.exists()


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"input": np.array([1.0, np.nan], dtype=np.float32)}, "NaN or infinite"),
        ({"input": np.array([np.inf], dtype=np.float64)}, "NaN or infinite"),
        ({"input": np.zeros((0, 3), dtype=np.float32)}, "is empty"),
        ({"input": np.array(["a", "b"])}, "only numbers"),
    ],
)
def test_bad_arrays_are_refused_with_a_clear_message(client: FlaskClient, arrays, message) -> None:  # type: ignore[no-untyped-def]
    response = upload_dataset(client, npz_bytes(**arrays))
    assert response.status_code == 400 and message in response.json["message"], response.json


def test_not_an_npz_is_400(client: FlaskClient) -> None:
    response = upload_dataset(client, b"definitely not a zip")
    assert response.status_code == 400 and ".npz" in response.json["message"]


def test_dataset_for_an_unknown_model_is_404(client: FlaskClient) -> None:
    response = upload_dataset(client, npz_bytes(input=np.ones((2, 2), dtype=np.float32)), model="nope")
    assert response.status_code == 404 and "nope" in response.json["message"]


def test_control_characters_in_the_file_name_are_dropped(client: FlaskClient, small_cnn) -> None:  # type: ignore[no-untyped-def]
    response = upload_model(client, small_cnn.data, name="cnn", filename="a\x00b\x1b.onnx")
    assert response.status_code == 201 and response.json["model_version"]["filename"] == "ab.onnx"


def test_an_array_header_claiming_more_than_its_data_is_refused(client: FlaskClient) -> None:
    from numpy.lib import format as npy

    header = io.BytesIO()
    npy.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 1000)})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("input.npy", npy.MAGIC_PREFIX + bytes([1, 0]) + header.getvalue()[8:] + b"\0" * 64)
    response = upload_dataset(client, buffer.getvalue())
    assert response.status_code == 400 and "declares shape" in response.json["message"], response.json
