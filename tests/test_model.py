"""A real CrossEncoder worker (torch backend) on a tiny model built locally, end to end."""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pytest

from devkit.models import sample_text
from devkit.procs import clean_env

pytestmark = pytest.mark.model

# Two workers importing torch and loading a model at once took 29 s on a 2-core machine with a third
# process busy; a worker that dies instead fails the wait at once, with the logs (Service.wait_ready).
LOAD_TIMEOUT = 300


def pairs_for(seed: int, n: int):
    rng = random.Random(seed)
    query = sample_text(rng, 8)
    # Mixed lengths, one far past the model's 512-token maximum: truncated, not refused.
    sentences = [sample_text(rng, rng.randint(1, 60)) for _ in range(n - 1)] + [sample_text(rng, 900)]
    return query, sentences


def test_service_scores_equal_predict(service_factory, tiny_model):
    import torch
    from sentence_transformers import CrossEncoder

    svc = service_factory(RERANKER_MAX_BATCH_PAIRS="16").start(
        workers=2, ready_timeout=LOAD_TIMEOUT, RERANKER_BACKEND="torch", RERANKER_MODEL=str(tiny_model),
        NUM_THREADS="1")
    reference = CrossEncoder(str(tiny_model), device="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers: fp32 sums depend on the thread count
    try:
        # 5 pairs: one job, the same batch as predict: equal to 1e-6 (the bound).
        # 40 pairs: split over both workers in jobs of <= 16 pairs, so batches are padded
        # differently from predict's: equal to 1e-5, the bound for any batching or split.
        for seed, n, atol in ((1, 5, 1e-6), (2, 40, 1e-5)):
            query, sentences = pairs_for(seed, n)
            ids = [1000 + i for i in range(n)]
            r = svc.rerank(query, sentences, ids)
            assert r.status_code == 200, r.text
            expected = reference.predict([(query, s) for s in sentences], show_progress_bar=False)
            got = {x["id"]: x["score"] for x in r.json()["results"]}
            np.testing.assert_allclose([got[i] for i in ids], expected, rtol=0, atol=atol)
            order = [x["id"] for x in r.json()["results"]]
            assert order == [ids[i] for i in np.argsort(-expected, kind="stable")]
    finally:
        torch.set_num_threads(threads)
    pool = svc.ready()["pool"]
    assert all(w["jobs"] > 0 for w in pool), pool


@pytest.mark.parametrize("program", ["worker", "gateway"])
def test_bad_setting_exits_with_one_line(tmp_path, program):
    proc = subprocess.run([sys.executable, "-m", program], cwd=tmp_path, env=clean_env(NUM_THREADS="many"),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "configuration error: NUM_THREADS='many' is invalid: expected an integer >= 1"]
