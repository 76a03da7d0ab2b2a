"""Every dashboard page on PostgreSQL, against results the real pipeline produced there."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from dashboard_support import build_sample_farm
from sqlalchemy import select

from farm.db import Engine

pytestmark = pytest.mark.services


def test_every_page_on_postgresql(empty_postgres_url: str, tmp_path: Path) -> None:
    url = "postgresql+psycopg://" + empty_postgres_url.split("://", 1)[1]
    farm = build_sample_farm(tmp_path, database_url=url, precisions=("fp32", "int8"), full=False)
    try:
        v1, v2 = farm.jobs["mlp v1"], farm.jobs["mlp v2"]
        with farm.services.db.session() as session:
            engine_id = session.execute(select(Engine.id).where(Engine.job_id == v2[1])).scalar_one()
        client = farm.client
        pages = [
            "/", "/?profile=cpu", "/models/mlp", "/models/mlp?precision=int8&acc=snr_db",
            "/history?model=mlp&profile=cpu&precision=int8&batch=4&metric=median_ms",
            "/history?model=mlp&profile=cpu&precision=fp32&batch=4&metric=rel_l2",
            f"/compare?a={v1[0]}&b={v2[0]}", "/compare?model=mlp&va=1&vb=2", f"/engines/{engine_id}",
            f"/jobs/{v2[1]}", f"/jobs/{v2[1]}/live",
        ]  # fmt: skip
        for path in pages:
            response = client.get(path)
            assert response.status_code == 200, (path, response.get_data(as_text=True)[:300])
        model_page = client.get("/models/mlp").get_data(as_text=True)
        assert len(re.findall(r'<td class="cell[^"]*" data-profile="cpu"', model_page)) == 4  # 2 versions × 2
        history = client.get("/history?model=mlp&profile=cpu&precision=int8&batch=4").get_data(as_text=True)
        option = json.loads(re.search(r'id="history-chart-option">(.*?)</script>', history, re.S).group(1))  # type: ignore[union-attr]
        assert [point["url"] for point in option["series"][2]["data"]] == [f"/jobs/{v1[1]}", f"/jobs/{v2[1]}"]
        download = client.get(f"/engines/{engine_id}/download")
        assert download.status_code == 200 and len(download.get_data()) > 0
    finally:
        farm.services.db.dispose()
