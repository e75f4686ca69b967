"""/docs and /redoc work without internet: every file the pages load comes from the gateway itself;
and the API's schema shows real examples."""

from __future__ import annotations

import re

import pytest

URL = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url:\s*["']([^"']+)["']|spec-url=["']([^"']+)["']""")
TYPES = {".js": ("text/javascript", "application/javascript"), ".css": ("text/css",), ".png": ("image/png",),
         ".json": ("application/json",)}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    from tests.service import Service

    svc = Service(tmp_path_factory.mktemp("docs"))
    svc.start_gateway()  # no worker: the docs need none
    try:
        yield svc
    finally:
        svc.stop()


@pytest.mark.parametrize("page, ui", [("/docs", "SwaggerUIBundle"), ("/redoc", "Redoc")])
def test_docs_pages_load_only_files_the_gateway_serves(gateway, page, ui):
    r = gateway.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "http://" not in r.text and "https://" not in r.text and "//cdn" not in r.text, r.text
    urls = [next(g for g in m.groups() if g) for m in URL.finditer(r.text)]
    assert "/openapi.json" in urls and any(u.endswith(".js") for u in urls), urls
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        got = gateway.get(url)
        assert got.status_code == 200, url
        suffix = url[url.rindex("."):]
        assert got.headers["content-type"].split(";")[0] in TYPES[suffix], (url, got.headers["content-type"])
        assert len(got.content) > 1000, url
    scripts = "".join(gateway.get(u).text for u in urls if u.endswith(".js"))
    assert ui in scripts


def test_the_schema_shows_real_examples(gateway):
    spec = gateway.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    request = schemas["RerankRequest"]["examples"][0]
    response = schemas["RerankResponse"]["examples"][0]
    assert len(response["results"]) == len(request["ids"]) == len(request["sentences"])
    assert {r["id"] for r in response["results"]} == set(request["ids"])
    scores = [r["score"] for r in response["results"]]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
    assert schemas["RerankResult"]["properties"]["score"]["examples"] != [0]
    assert spec["paths"]["/rerank"]["post"]["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/RerankResponse"}
