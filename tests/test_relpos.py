"""worker.relpos: DeBERTa-v2's relative-position projections are reused, and the outputs do not change."""

from __future__ import annotations

import random

import pytest
import torch

from devkit.models import sample_text
from worker.relpos import ProjectionMemo, memoize_relative_positions

pytestmark = pytest.mark.model


def load(path):
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(path), device="cpu")


def test_memoized_model_gives_bit_identical_logits_and_reuses_projections(tiny_model):
    plain, memoized = load(tiny_model), load(tiny_model)
    memos = memoize_relative_positions(memoized[0].auto_model)
    layers = memoized[0].auto_model.config.num_hidden_layers
    assert len(memos) == 2 * layers and all(isinstance(m, ProjectionMemo) for m in memos)
    passes = 0
    with torch.inference_mode():
        for n, words in [(1, 5), (3, 12), (7, 40), (2, 150)]:  # batch shapes differ; 150 words hit max_length
            rng = random.Random(n)
            pairs = [(sample_text(rng, 6), sample_text(rng, words)) for _ in range(n)]
            features = plain.preprocess(pairs)
            assert torch.equal(plain(features)["scores"], memoized(features)["scores"])
            passes += 1
    # Each projection was computed on the first pass and reused on every later one.
    assert [m.hits for m in memos] == [passes - 1] * len(memos)


def test_models_without_relative_attention_are_left_alone():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    assert memoize_relative_positions(model) == []
    assert isinstance(model[0], torch.nn.Linear)
