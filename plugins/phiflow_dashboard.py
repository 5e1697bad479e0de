"""Airflow plugin: the phiflow dashboard inside the Airflow UI.

A FastAPI app mounted by the api-server under /phiflow (Airflow 3 `fastapi_apps`) and a nav entry
(`external_views` with a `url_route`, so the UI shows it in an iframe under /plugin/phiflow).
Airflow does not protect plugin apps: every route here depends on Airflow's own auth (the JWT of
the UI's `_token` cookie or an `Authorization: Bearer` header, checked by the configured auth
manager), so an anonymous request gets 401 like the REST API does.
"""

from __future__ import annotations

from typing import Any, ClassVar

from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
from airflow.api_fastapi.core_api.security import requires_access_view
from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI
from fastapi.responses import HTMLResponse, JSONResponse

from phiflow import settings
from phiflow.dashboard import build_from_lake, render
from phiflow.storage import Lake

URL_PREFIX = "/phiflow"

app = FastAPI(title="phiflow dashboard", dependencies=[Depends(requires_access_view(AccessView.WEBSITE))])


def _data():
    return build_from_lake(Lake())


@app.get("/", response_class=HTMLResponse)
def dashboard() -> HTMLResponse:
    """The page: funnels, language/topic mix, contamination, mixture, training curves."""
    return HTMLResponse(render(_data(), title=settings.default_recipe().stem))


@app.get("/data.json")
def dashboard_data() -> JSONResponse:
    """The same data as JSON (scripts, alerts)."""
    return JSONResponse(_data().to_dict())


class PhiflowPlugin(AirflowPlugin):
    name = "phiflow"
    fastapi_apps: ClassVar[list[dict[str, Any]]] = [{"app": app, "url_prefix": URL_PREFIX, "name": "phiflow dashboard"}]
    external_views: ClassVar[list[dict[str, Any]]] = [{
        "name": "phiflow",
        "href": f"{URL_PREFIX}/",
        "destination": "nav",
        "url_route": "phiflow",
        "nav_top_level": True,
    }]
