"""The Python client of the farm's REST API; ``farm submit`` and friends are built on it.

from farm.client import FarmClient
client = FarmClient("http://farm:8080", token="farm_...")
version = client.upload_model("model.onnx", name="resnet50", label="v1.3")
submission = client.submit("resnet50", profiles=["cpu"], precisions=["fp32", "int8"], version=version["id"])
results = client.wait_for_submission(submission["id"], timeout=3600)
for row in results["rows"]:
    client.download_engine(row["engine"]["id"], f"engines/{row['job_id']}.engine")
"""

from farm.client.api import FarmApiError, FarmClient, FarmClientError, FarmTimeoutError

__all__ = ["FarmApiError", "FarmClient", "FarmClientError", "FarmTimeoutError"]
