"""A worker's JOB: per-task options (raw logits, truncation side, truncation off) on the stub and on a
tiny real model, against CrossEncoder.predict; a task that cannot be scored fails alone."""

from __future__ import annotations

import random

import numpy as np
import pytest

from devkit.models import sample_text
from shared.protocol import ErrorKind, ScoreOptions, Task
from shared.settings import Settings
from worker.jobs import score_job
from worker.scorer import CrossEncoderScorer
from worker.stub import StubScorer, stub_score


def test_tasks_come_back_concatenated_in_task_order():
    stub = StubScorer(Settings(backend="stub"))
    tasks = [Task("red apple", ["a red apple", "a car"]), Task("blue car", ["a blue car"], ScoreOptions(raw=True)),
             Task("green", ["green tea", "tea"], ScoreOptions(truncation_side="left"))]
    scores, failures = score_job(stub, tasks)
    expected = [stub_score(t.query, s) for t in tasks for s in t.sentences]
    assert failures == [] and scores.tolist() == expected


@pytest.fixture(scope="module")
def scorer(conditioned_model):
    return CrossEncoderScorer(Settings(model=str(conditioned_model), num_threads=1))


@pytest.fixture(scope="module")
def predictor(conditioned_model):
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(conditioned_model), device="cpu")


def pairs(seed: int, n: int, words: tuple[int, int] = (3, 40)) -> tuple[str, list[str]]:
    rng = random.Random(seed)
    return sample_text(rng, 6), [sample_text(rng, rng.randint(*words)) for _ in range(n)]


@pytest.mark.model
def test_raw_scores_are_predicts_logits_beside_sigmoid_scores(scorer, predictor, one_thread):
    import torch

    q1, s1 = pairs(1, 7)
    q2, s2 = pairs(2, 5)
    scores, failures = score_job(scorer, [Task(q1, s1, ScoreOptions(raw=True)), Task(q2, s2)])
    logits = predictor.predict([(q1, s) for s in s1], activation_fn=torch.nn.Identity(), show_progress_bar=False)
    sigmoid = predictor.predict([(q2, s) for s in s2], show_progress_bar=False)
    assert failures == []
    np.testing.assert_allclose(scores[:7], logits, rtol=0, atol=1e-5)
    np.testing.assert_allclose(scores[7:], sigmoid, rtol=0, atol=1e-5)
    assert (scores[:7] < 0).any() or (scores[:7] > 1).any()  # really logits, not probabilities


@pytest.mark.model
def test_truncation_side_left_keeps_the_end_of_a_long_text(scorer, predictor, one_thread):
    query, sentences = pairs(3, 4, words=(600, 700))  # each over the 512-token window
    scores, _ = score_job(scorer, [Task(query, sentences, ScoreOptions(truncation_side="left"))])
    right, _ = score_job(scorer, [Task(query, sentences)])
    predictor.tokenizer.truncation_side = "left"
    try:
        expected = predictor.predict([(query, s) for s in sentences], show_progress_bar=False)
    finally:
        predictor.tokenizer.truncation_side = "right"
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-5)
    assert not np.allclose(scores, right, atol=1e-4)  # the other end really was kept
    assert scorer.runtime.tokenizer.truncation_side == "right"  # and the default is back


@pytest.mark.model
def test_truncation_off_fails_a_too_long_task_alone(scorer, one_thread):
    q_short, short = pairs(4, 3)
    q_long, long = pairs(5, 2, words=(600, 700))
    tasks = [Task(q_short, short, ScoreOptions(truncate=False)), Task(q_long, long, ScoreOptions(truncate=False)),
             Task(q_long, long)]
    scores, failures = score_job(scorer, tasks)
    assert [(i, kind) for i, kind, _ in failures] == [(1, ErrorKind.TOO_LONG)]
    assert "512" in failures[0][2]
    assert np.isfinite(scores[:3]).all() and np.isnan(scores[3:5]).all() and np.isfinite(scores[5:]).all()
