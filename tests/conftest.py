from __future__ import annotations

import pytest

from tests.service import Service


@pytest.fixture
def service_factory(tmp_path):
    """Make Services (gateway + broker + workers as real processes); all are stopped at the end."""
    made: list[Service] = []

    def make(**settings: str) -> Service:
        svc = Service(tmp_path, **settings)
        made.append(svc)
        return svc

    yield make
    for svc in made:
        svc.stop()


@pytest.fixture(scope="module")
def stub_service(tmp_path_factory):
    """One gateway with two stub workers, shared by the read-only contract tests of a module."""
    svc = Service(tmp_path_factory.mktemp("svc"), RERANKER_MAX_SENTENCES="50", RERANKER_MAX_CHARS="500",
                  RERANKER_MAX_BODY_BYTES="20000")
    try:
        yield svc.start(workers=2)
    finally:
        svc.stop()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny random DeBERTa-v2 cross-encoder, built locally (no hub)."""
    from devkit.models import build_model

    return build_model(tmp_path_factory.mktemp("models") / "tiny", "tiny")
