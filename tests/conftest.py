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


@pytest.fixture
def lab(tmp_path):
    """The broker loop in a thread of the test, for peers on raw sockets (tests/inproc_broker.py)."""
    from tests.inproc_broker import InprocBroker

    lab = InprocBroker(tmp_path)
    yield lab
    lab.stop()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny random DeBERTa-v2 cross-encoder, built locally (no hub)."""
    from devkit.models import build_model

    return build_model(tmp_path_factory.mktemp("models") / "tiny", "tiny")


@pytest.fixture(scope="session")
def conditioned_model(tiny_model, tmp_path_factory):
    """`tiny` with weights at std 0.2 and a recalibrated head: well conditioned, so that fp32 noise is
    ~1e-7 as on a trained model (tests/test_scorer.py's module doc says why the plain tiny model is not)."""
    import torch
    from transformers import AutoTokenizer, DebertaV2ForSequenceClassification

    from devkit.models import calibrate

    path = tmp_path_factory.mktemp("models") / "tiny-conditioned"
    model = DebertaV2ForSequenceClassification.from_pretrained(str(tiny_model)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and not name.startswith("classifier"):
                p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    calibrate(model, tokenizer, seed=0)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture
def one_thread():
    """Scorers and references on 1 thread (fp32 sums depend on the thread count); restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield 1
    torch.set_num_threads(before)
