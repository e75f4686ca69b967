"""/docs (Swagger UI) and /redoc (ReDoc) that work without internet: their files come from the gateway.

FastAPI's default pages load Swagger UI and ReDoc from a CDN, so a browser without internet access (the
service lives on internal networks) shows a blank page. The pinned fastapi-offline package ships those
files (Swagger UI 5, ReDoc 2, a favicon); the gateway serves them under ASSETS and builds the pages
with FastAPI's own get_swagger_ui_html / get_redoc_html pointed at them, as FastAPI documents for
self-hosting the docs' assets.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS, REDOC = "/docs", "/redoc"
ASSETS = "/docs/assets"


def mount(app: FastAPI) -> None:
    """Serve the docs pages and their files from `app`, which is made without FastAPI's own pages
    (docs_url=None, redoc_url=None)."""
    app.mount(ASSETS, StaticFiles(directory=str(files("fastapi_offline") / "static")), name="docs-assets")

    def urls(request: Request) -> tuple[str, str]:
        """The schema's URL and the assets' folder, behind whatever root path the app is mounted at."""
        root = request.scope.get("root_path", "")
        return root + app.openapi_url, root + ASSETS

    @app.get(DOCS, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        schema, assets = urls(request)
        return get_swagger_ui_html(openapi_url=schema, title=f"{app.title} - Swagger UI",
                                   swagger_js_url=f"{assets}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{assets}/swagger-ui.css",
                                   swagger_favicon_url=f"{assets}/favicon.png", oauth2_redirect_url=None)

    @app.get(REDOC, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        schema, assets = urls(request)
        return get_redoc_html(openapi_url=schema, title=f"{app.title} - ReDoc",
                              redoc_js_url=f"{assets}/redoc.standalone.js", redoc_favicon_url=f"{assets}/favicon.png",
                              with_google_fonts=False)
