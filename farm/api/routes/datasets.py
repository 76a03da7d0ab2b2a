"""Datasets: upload an .npz (checked, never unpickled) and read its description."""

from __future__ import annotations

from typing import Any

from flask import request

from farm.api.datasets import UploadDatasetCommand, dataset_to_dict
from farm.api.errors import ApiError
from farm.api.registry import api
from farm.api.schemas import DatasetOut, DatasetUploadForm
from farm.app import current_services
from farm.db import Dataset, Model


@api.operation("POST", "/datasets", summary="Upload a dataset", tag="datasets", form=DatasetUploadForm,
               files={"file": "An .npz: one array per model input (first axis = samples), optional 'labels'."},
               response=DatasetOut, status=201, extra_responses={200: DatasetOut})  # fmt: skip
def upload_dataset(form: DatasetUploadForm) -> Any:
    """Validation, calibration or labelled data for submissions.

    Read with ``allow_pickle=False``; empty arrays and NaN/Inf are refused; when ``model`` is given,
    the arrays must match its inputs (names, rank, fixed dimensions, dtype).
    """
    services = current_services()
    command = UploadDatasetCommand(
        services, name=form.name, stream=request.files["file"].stream, model=form.model, version=form.version
    )
    result = command.run()
    return _dataset_body(result.dataset_id) | {"created": result.created}, 201 if result.created else 200


@api.operation(
    "GET", "/datasets/<int:dataset_id>", summary="One dataset", tag="datasets", response=DatasetOut
)
def get_dataset(dataset_id: int) -> Any:
    """A dataset's arrays (shape and dtype each) and whether it has labels."""
    return _dataset_body(dataset_id)


def _dataset_body(dataset_id: int) -> dict[str, Any]:
    with current_services().db.session() as session:
        dataset = session.get(Dataset, dataset_id)
        if dataset is None:
            raise ApiError(404, f"no dataset {dataset_id}")
        model = session.get(Model, dataset.model_id) if dataset.model_id else None
        return dataset_to_dict(dataset, model.name if model else None)
